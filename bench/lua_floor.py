"""What Redis itself costs per uniform point: psd's write script against the least a script can do.

Workload (a) of bench/run.py (uniform random points: 10k users, 60 days, 5
activity types) does not coalesce, so every point is 10 HINCRBY whatever psd
does.  This measures, on one redis-server pinned to core 1, Redis' own CPU
time per point (from /proc) for the same script arguments (batches of 1,000
points built by psd.coalesce.Batch) run by

- ``lua/write.lua``, psd's write script, and
- a floor: a script that only runs HINCRBY for each field of those arguments
  (no idempotency keys, no undo, no checks),

alternating, with the Redis ceiling of issue 5 (redis-benchmark -P 16
HINCRBY / 10) measured on the same server.  If even the floor cannot reach a
target ratio, no client of this layout can through Lua.  Each run ends by
checking that Redis holds the sum of the points.

    PYTHONPATH=. .venv/bin/python bench/lua_floor.py [--rounds 5] [--batches 40]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from resp import scratch_redis  # noqa: E402
from run import BASE_TS, DAYS, LOAD_CORE, PSD_CORE, free_port, pinned  # noqa: E402

from psd.coalesce import Batch  # noqa: E402
from psd.keys import Layout  # noqa: E402
from psd.model import Part, Point, WriteUnit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLOOR_SCRIPT = """
local args = cmsgpack.unpack(ARGV[1])
local prefixes, hashes = args[2], args[3]
local h = 1
while h <= #hashes do
  local key, last = prefixes[hashes[h]] .. hashes[h + 1], h + 1 + 2 * hashes[h + 2]
  for f = h + 3, last, 2 do redis.call('HINCRBY', key, hashes[f], hashes[f + 1]) end
  h = last + 2
end
return {0}
"""


def uniform_batches(count: int, rng: random.Random) -> tuple[list[bytes], int]:
    """(script arguments of ``count`` batches, the sum of their values)."""
    batches, total = [], 0
    for _ in range(count):
        points = tuple(Point(rng.randint(1, 10000), rng.randint(1, 5), "points", rng.randint(1, 100),
                             BASE_TS + rng.randrange(DAYS * 86400)) for _ in range(1000))
        batch = Batch(Layout(), 86400)
        batch.add(WriteUnit((Part(None, points),)))
        _, [argv] = batch.script_args()
        batches.append(argv)
        total += sum(point.value for point in points)
    return batches, total


def redis_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40, help="batches of 1,000 points per run")
    parser.add_argument("--benchmark-requests", type=int, default=2_000_000, help="redis-benchmark -n")
    args = parser.parse_args()
    os.sched_setaffinity(0, {int(PSD_CORE)})
    port = free_port()
    with scratch_redis(port, tuple(pinned(LOAD_CORE, []))) as probe:
        pid = int(re.search(r"process_id:(\d+)", probe.call("INFO", "server")).group(1))
        scripts = {"lua/write.lua": probe.call("SCRIPT", "LOAD", (ROOT / "lua" / "write.lua").read_text()),
                   "floor (HINCRBY only)": probe.call("SCRIPT", "LOAD", FLOOR_SCRIPT)}
        batches, total = uniform_batches(args.batches, random.Random(5))
        points = 1000 * len(batches)
        per_point: dict[str, list[float]] = {name: [] for name in scripts}
        ceilings = []
        for _ in range(args.rounds):
            output = subprocess.run(pinned(LOAD_CORE, [  # as bench/run.py: beside Redis
                "redis-benchmark", "-p", str(port), "-P", "16", "-c", "8", "-r", "1000000", "-q",
                "-n", str(args.benchmark_requests), "--dbnum", "1", "hincrby", "k:__rand_int__", "f:__rand_int__", "1"]),
                capture_output=True, text=True, check=True).stdout
            ceilings.append(float(re.findall(r"([\d.]+) requests per second", output)[-1]) / 10)
            for name, sha in scripts.items():
                probe.call("FLUSHALL")
                time.sleep(0.2)
                before = redis_cpu(pid)
                for argv in batches:
                    probe.call("EVALSHA", sha, 0, argv)
                per_point[name].append((redis_cpu(pid) - before) * 1e6 / points)
                written = probe.sum_fields(f"hz:*:0:points:{time.gmtime(BASE_TS).tm_year}")
                if written != total:
                    raise SystemExit(f"{name}: Redis holds {written}, the batches carry {total}")
        ceiling = statistics.median(ceilings)
        print(f"Redis ceiling (HINCRBY/10): {ceiling:,.0f} points/s (median of {args.rounds})")
        print(f"{'script':24} {'Redis CPU us/point':>20} {'points/s if Redis-bound':>25} {'x ceiling':>10}")
        for name, values in per_point.items():
            cost = statistics.median(values)
            print(f"{name:24} {cost:>20.1f} {1e6 / cost:>25,.0f} {1e6 / cost / ceiling:>10.2f}")


if __name__ == "__main__":
    main()
