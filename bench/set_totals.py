"""What a set-total write costs Redis: commands and microseconds per write, one write per call.

Runs 1,000 activities x 5 updates (in time order, then the same shuffled, on a
fresh database each) through ``lua/write.lua`` as the writer builds its calls,
and prints Redis' own figures from ``INFO commandstats`` (the commands a script
runs are counted too).  The psd it measures is the one on PYTHONPATH, so the
same file measures an older checkout:

    PYTHONPATH=. .venv/bin/python bench/set_totals.py
    PYTHONPATH=/path/to/older/checkout .venv/bin/python bench/set_totals.py
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from resp import scratch_redis  # noqa: E402
from run import free_port  # noqa: E402

from psd.coalesce import Batch  # noqa: E402
from psd.keys import Layout  # noqa: E402
from psd.model import Part, Point, WriteUnit  # noqa: E402
from psd.store import LUA_DIR  # noqa: E402

TS = 1458061005


def updates(shuffled: bool) -> list[Point]:
    rng = random.Random(18)
    points = [Point(aid % 100, 3, "steps", 0, TS + 600 * step + aid, aid=aid, total=1000 * step + aid)
              for aid in range(1000) for step in range(1, 6)]
    if shuffled:
        rng.shuffle(points)
    return points


def main() -> None:
    print(f"script: {LUA_DIR / 'write.lua'}")
    with scratch_redis(free_port()) as probe:
        sha = probe.call("SCRIPT", "LOAD", (LUA_DIR / "write.lua").read_text())
        for shuffled in (False, True):
            probe.call("FLUSHALL")
            probe.call("CONFIG", "RESETSTAT")
            points = updates(shuffled)
            for point in points:
                batch = Batch(Layout(), 86400)
                batch.add(WriteUnit((Part(None, (point,)),)))
                keys, args = batch.script_args()
                probe.call("EVALSHA", sha, len(keys), *keys, *args)
            stats = probe.command_calls()
            calls, usec = stats.pop("evalsha")
            stats.pop("flushall", None), stats.pop("config|resetstat", None)
            inner = sum(c for c, _ in stats.values())
            print(f"{'shuffled' if shuffled else 'in order':9} {len(points)} writes: {usec / calls:6.1f} us of Redis"
                  f" and {inner / calls:4.1f} commands per write ("
                  + ", ".join(f"{name} {c / calls:.1f}" for name, (c, _) in sorted(stats.items())) + ")")


if __name__ == "__main__":
    main()
