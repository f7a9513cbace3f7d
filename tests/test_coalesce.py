"""Coalescing: what one write-script call carries for a batch of units (no I/O)."""

from __future__ import annotations

import random

import msgpack
from twisted.trial.unittest import SynchronousTestCase

from psd.buckets import point_fields
from psd.coalesce import Batch
from psd.keys import Layout
from psd.model import Count, Part, Point, WriteUnit
from tests.writeargs import increments

TS = 1458061005  # 2016-03-15 16:56:45 UTC


def call(*units: WriteUnit) -> tuple[list, list]:
    batch = Batch(Layout(), dedupe_ttl=60)
    for unit in units:
        batch.add(unit)
    keys, [argv] = batch.script_args()
    return keys, msgpack.unpackb(argv)


class CoalesceTests(SynchronousTestCase):
    def test_a_workout_collapses_to_few_increments(self):
        """20 points inside one minute: 1 field per coarse level and 20 seconds, for atid 7 and 0."""
        workout = WriteUnit((Part(None, tuple(Point(1, 7, "steps", 10, TS - 45 + i) for i in range(20))),))
        keys, args = call(workout)
        found = increments(args)
        self.assertEqual(len(found), 2 * (4 + 20))
        self.assertEqual(found[("hz:1:7:steps:2016", "201603")], 200)
        self.assertEqual(found[("hz:1:0:steps:20160315", "2016031516")], 200)
        self.assertEqual(found[("hz:1:0:steps:201603151656", "20160315165600")], 10)
        self.assertEqual(args[4], ["hza:1", "7"])

    def test_same_second_merges_and_zero_sums_vanish(self):
        keys, args = call(WriteUnit((Part(None, (Point(1, 0, "points", 5, TS), Point(1, 0, "points", -5, TS),
                                                 Point(2, 0, "points", 3, TS), Point(2, 0, "points", 4, TS))),)))
        found = increments(args)
        self.assertEqual({k: v for k, v in found.items() if k[0].startswith("hz:1:")}, {})
        self.assertEqual(found[("hz:2:0:points:201603151656", "20160315165645")], 7)
        self.assertEqual(len(found), 5)  # atid 0 is written once

    def test_counts_and_dedupe_keys(self):
        keys, args = call(WriteUnit((Part("h:a", (), (Count("signups", 2, TS), Count("signups", 3, TS))),)),
                          WriteUnit((Part("h:b", (Point(1, 0, "points", 1, TS),)),)))
        self.assertEqual(keys[:2], ["hz:id:h:a", "hz:id:h:b"])
        self.assertEqual(args[0], 60)
        self.assertEqual(increments(args)[("c:signups:201603151656", "20160315165645")], 5)

    def test_sums_beyond_doubles_travel_as_text(self):
        keys, args = call(WriteUnit((Part(None, (Point(1, 0, "points", 2**53, TS), Point(1, 0, "points", 2**53, TS))),)))
        self.assertEqual(increments(args)[("hz:1:0:points:2016", "201603")], str(2**54))

    def test_set_total_names_its_history_and_series(self):
        keys, args = call(WriteUnit((Part(None, (Point(1, 2, "steps", 0, TS, aid=9, total=40),)),)))
        ttl, prefixes, hashes, totals, members, cap, history_ttl = args
        [[total_key, aid, total, head, tail, atid, second, history_key, ts]] = totals
        self.assertEqual((total_key, aid, total, atid, second, history_key, ts),
                         ("hzt:1:steps", "9", 40, "2", "20160315165645", "hzh:1:steps:9", TS))
        self.assertEqual(head + atid + tail, Layout().hash_prefix(1, 2, "steps"))
        self.assertEqual((hashes, cap, history_ttl), ([], 1000, 30 * 86400))

    def test_random_batches_equal_the_brute_force_fan_out(self):
        """Whatever merges, each (hash, field) gets the sum of the points under it, and nothing else."""
        rng = random.Random(11)
        for _ in range(200):
            points = [Point(rng.randint(1, 3), rng.choice([0, 1, 2]), rng.choice(["steps", "points"]),
                            rng.choice([-2**53, -7, -1, 1, 3, 2**53]), TS + rng.choice([0, 1, 59, 60, 3600, 86400 * 20, 86400 * 400]))
                      for _ in range(rng.randint(1, 40))]
            counts = [Count("signups", rng.randint(-3, 3), TS + rng.randrange(100)) for _ in range(rng.randint(0, 3))]
            expected: dict = {}
            for point in points:
                for atid in {point.atid, 0}:
                    for bucket, field in point_fields(point.ts):
                        key = (f"hz:{point.uid}:{atid}:{point.metric}:{bucket}", field)
                        expected[key] = expected.get(key, 0) + point.value
            for count in counts:
                for bucket, field in point_fields(count.ts):
                    key = (f"c:signups:{bucket}", field)
                    expected[key] = expected.get(key, 0) + count.value
            found = {key: int(delta) for key, delta in increments(call(WriteUnit((Part(None, tuple(points), tuple(counts)),)))[1]).items()}
            self.assertEqual(found, {key: delta for key, delta in expected.items() if delta})
