"""Coalescing: what one write-script call carries for a batch of units (no I/O)."""

from __future__ import annotations

import msgpack
from twisted.trial.unittest import SynchronousTestCase

from psd.coalesce import Batch
from psd.keys import Layout
from psd.model import Count, Part, Point, WriteUnit

TS = 1458061005  # 2016-03-15 16:56:45 UTC


def call(*units: WriteUnit) -> tuple[list, list]:
    batch = Batch(Layout(), dedupe_ttl=60)
    for unit in units:
        batch.add(unit)
    keys, [argv] = batch.script_args()
    return keys, msgpack.unpackb(argv)


def increments(keys: list, args: list) -> dict:
    ttl, nd, incr, totals, members = args
    return {(keys[nd + j], fields[i]): fields[i + 1]
            for j, fields in enumerate(incr) for i in range(0, len(fields), 2)}


class CoalesceTests(SynchronousTestCase):
    def test_a_workout_collapses_to_few_increments(self):
        """20 points inside one minute: 1 field per coarse level and 20 seconds, for atid 7 and 0."""
        workout = WriteUnit((Part(None, tuple(Point(1, 7, "steps", 10, TS - 45 + i) for i in range(20))),))
        keys, args = call(workout)
        found = increments(keys, args)
        self.assertEqual(len(found), 2 * (4 + 20))
        self.assertEqual(found[("hz:1:7:steps:2016", "201603")], 200)
        self.assertEqual(found[("hz:1:0:steps:20160315", "2016031516")], 200)
        self.assertEqual(found[("hz:1:0:steps:201603151656", "20160315165600")], 10)
        self.assertEqual(args[4], [keys.index("hza:1") + 1 - args[1], "7"])

    def test_same_second_merges_and_zero_sums_vanish(self):
        keys, args = call(WriteUnit((Part(None, (Point(1, 0, "points", 5, TS), Point(1, 0, "points", -5, TS),
                                                 Point(2, 0, "points", 3, TS), Point(2, 0, "points", 4, TS))),)))
        found = increments(keys, args)
        self.assertEqual({k: v for k, v in found.items() if k[0].startswith("hz:1:")}, {})
        self.assertEqual(found[("hz:2:0:points:201603151656", "20160315165645")], 7)
        self.assertEqual(len(found), 5)  # atid 0 is written once

    def test_counts_and_dedupe_keys(self):
        keys, args = call(WriteUnit((Part("h:a", (), (Count("signups", 2, TS), Count("signups", 3, TS))),)),
                          WriteUnit((Part("h:b", (Point(1, 0, "points", 1, TS),)),)))
        self.assertEqual(keys[:2], ["hz:id:h:a", "hz:id:h:b"])
        self.assertEqual(args[:2], [60, 2])
        self.assertEqual(increments(keys, args)[("c:signups:201603151656", "20160315165645")], 5)

    def test_sums_beyond_doubles_travel_as_text(self):
        keys, args = call(WriteUnit((Part(None, (Point(1, 0, "points", 2**53, TS), Point(1, 0, "points", 2**53, TS))),)))
        self.assertEqual(increments(keys, args)[("hz:1:0:points:2016", "201603")], str(2**54))

    def test_set_total_names_its_targets(self):
        keys, args = call(WriteUnit((Part(None, (Point(1, 2, "steps", 0, TS, aid=9, total=40),)),)))
        ttl, nd, incr, totals, members = args
        [[total_key, aid, total, targets]] = totals
        self.assertEqual((keys[nd + total_key - 1], aid, total), ("hzt:1:steps", "9", 40))
        named = {(keys[nd + targets[i] - 1], targets[i + 1]) for i in range(0, len(targets), 2)}
        self.assertEqual(len(named), 10)
        self.assertIn(("hz:1:2:steps:201603151656", "20160315165645"), named)
        self.assertIn(("hz:1:0:steps:2016", "201603"), named)
