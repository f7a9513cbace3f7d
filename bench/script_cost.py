"""Calibrate the write script's cost model: Redis time per call against the model's estimate.

The writer splits a request so that no call of ``lua/write.lua`` should take
more than ``[writer] max_script_ms`` of Redis time, by the model in
``psd.coalesce.Batch.cost_us`` (time per HINCRBY, per hash touched, per
idempotency key).  This runs shapes that stress each term on a fresh
redis-server (keys created, the worst case) and prints, per shape, Redis' own
time per call (``INFO commandstats`` usec of EVALSHA, medians over rounds) next
to the model's.  The constants in psd/coalesce.py were set so that the model
is at or above Redis' time for every shape (Redis/model <= 1): ~2.7 us per
increment into a minute hash of 60 fields, ~3 us per increment that creates a
one-field hash, ~3.2 us per idempotency key on this machine.  Last, the
request of issue 16 finding 7 (10,000 points each in its own series) as one
call and as split by max_script_ms.

    PYTHONPATH=. .venv/bin/python bench/script_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from resp import RedisProbe, scratch_redis  # noqa: E402
from run import free_port  # noqa: E402

from psd.coalesce import Batch  # noqa: E402
from psd.keys import Layout  # noqa: E402
from psd.model import Part, Point, WriteUnit, group_parts  # noqa: E402
from psd.split import split_unit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TS = 1458061005


def shapes() -> dict:
    """name -> a WriteUnit; each fits one call."""
    return {
        # every point its own series: 10 hashes (5 levels x its atid and 0), one field each
        "distinct series x400": WriteUnit((Part(None, tuple(Point(uid, 3, "points", 1, TS) for uid in range(400))),)),
        # one series, consecutive seconds: fields of few hashes
        "one series, 4000 s": WriteUnit((Part(None, tuple(Point(1, 3, "points", 1, TS + i) for i in range(4000))),)),
        # one series, a point an hour: a new minute, hour and often day hash per point
        "one series, hourly x400": WriteUnit((Part(None, tuple(Point(1, 3, "points", 1, TS + 3600 * i) for i in range(400))),)),
        # ids: one EXISTS and one SET per key on top of the increments
        "1000 ids, one minute": WriteUnit(group_parts([(str(i), Point(1, 0, "points", 1, TS + i % 60)) for i in range(1000)])),
    }


def measure(probe: RedisProbe, sha: str, unit: WriteUnit, rounds: int) -> tuple[float, Batch]:
    """Median Redis time (us) of one call applying ``unit`` to an empty database."""
    times = []
    for _ in range(rounds):
        probe.call("FLUSHALL")
        batch = Batch(Layout(), 86400)
        batch.add(unit)
        keys, args = batch.script_args()
        probe.call("CONFIG", "RESETSTAT")
        reply = probe.call("EVALSHA", sha, len(keys), *keys, *args)
        if reply != [0]:
            raise SystemExit(f"the script answered {reply}")
        times.append(probe.command_calls()["evalsha"][1])
    return statistics.median(times), batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    port = free_port()
    with scratch_redis(port) as probe:
        sha = probe.call("SCRIPT", "LOAD", (ROOT / "lua" / "write.lua").read_text())
        print(f"{'shape':26} {'increments':>10} {'hashes':>7} {'keys':>5} {'Redis us':>9} {'model us':>9}"
              f" {'Redis/model':>12}")
        for name, unit in shapes().items():
            used, batch = measure(probe, sha, unit, args.rounds)
            increments, hashes, keys = batch.cost_terms()
            print(f"{name:26} {increments:>10} {hashes:>7} {keys:>5} {used:>9.0f} {batch.cost_us():>9.0f}"
                  f" {used / batch.cost_us():>12.2f}")
        big = WriteUnit((Part(None, tuple(Point(uid, 3, "points", 1, TS) for uid in range(10000))),))
        whole, _ = measure(probe, sha, big, 1)
        print(f"10,000 points in their own series (issue 16 finding 7): one call {whole / 1000:.0f} ms")
        for budget_ms in (20.0, 5.0):
            probe.call("FLUSHALL")
            calls = []
            for piece in split_unit(big, Layout(), budget_ms * 1000):
                batch = Batch(Layout(), 86400)
                batch.add(piece)
                keys, argv = batch.script_args()
                probe.call("CONFIG", "RESETSTAT")
                probe.call("EVALSHA", sha, len(keys), *keys, *argv)
                calls.append(probe.command_calls()["evalsha"][1])
            print(f"  split by max_script_ms = {budget_ms:g}: {len(calls)} calls, longest {max(calls) / 1000:.1f} ms, "
                  f"median {statistics.median(calls) / 1000:.1f} ms, total {sum(calls) / 1000:.0f} ms; "
                  f"over the budget: {sum(c > budget_ms * 1000 for c in calls)}")


if __name__ == "__main__":
    main()
