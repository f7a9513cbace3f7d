"""The original psd's parameters and answer shapes: pure, no Redis."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from psd import compat
from psd.errors import InvalidInput
from psd.model import Point

METRICS = frozenset({"points", "steps"})


class ParsingTests(SynchronousTestCase):
    def test_atid_all_is_zero(self):
        self.assertEqual((compat.atid("all"), compat.atid("3")), (0, 3))
        self.assertRaises(InvalidInput, compat.atid, "x")

    def test_ids_things_offsets(self):
        self.assertEqual(compat.ids("1,2,1", 10), [1, 2])
        self.assertEqual(compat.things("steps,points", METRICS), ["steps", "points"])
        self.assertEqual(compat.offsets("3600,-60", 2), [3600, -60])
        self.assertEqual(compat.offsets(None, 2), [0, 0])
        for bad in (lambda: compat.ids("", 10), lambda: compat.ids("1,,2", 10), lambda: compat.ids("1,2,3", 2),
                    lambda: compat.things("steps,sleep", METRICS), lambda: compat.offsets("1", 2),
                    lambda: compat.window("10", "9"), lambda: compat.window("-1", "9")):
            self.assertRaises(InvalidInput, bad)

    def test_count_names(self):
        self.assertEqual(compat.count_names("clicks", "a,b", 10), {"a": "clicks_a", "b": "clicks_b"})
        self.assertRaises(InvalidInput, compat.count_names, "clicks", "a:b", 10)
        self.assertRaises(InvalidInput, compat.count_names, "c", "", 10)

    def test_write_is_a_set_total(self):
        body = {"thing": "steps", "uid": 7, "atid": 2, "aid": 99, "value": 1200, "ts1": 100, "ts2": 160}
        self.assertEqual(compat.write_point(body, METRICS), Point(7, 2, "steps", 0, 160, aid=99, total=1200))
        for bad in ({**body, "ts1": 200}, {**body, "thing": "sleep"}, {**body, "mode": "x"}, {**body, "value": True},
                    {k: v for k, v in body.items() if k != "ts2"}, [body]):
            self.assertRaises(InvalidInput, compat.write_point, bad, METRICS)


class AtidTests(SynchronousTestCase):
    def test_one_type_needs_no_read(self):
        self.assertEqual(compat.atids_to_read({4}, 0), ([], 4))
        self.assertEqual(compat.contributing_atids([10], {}, 4), [4])

    def test_untyped_points_are_derived(self):
        to_read, derived = compat.atids_to_read({0, 2, 5}, 0)
        self.assertEqual((to_read, derived), ([2, 5], 0))
        self.assertEqual(compat.contributing_atids([10, 3], {2: [10, 0], 5: [0, 0]}, 0), [0, 2])
        self.assertEqual(compat.contributing_atids([10, 3], {2: [10, 0], 5: [0, 3]}, 0), [2, 5])
        self.assertEqual(compat.contributing_atids([11, 3], {2: [10, 0], 5: [0, 3]}, 0), [0, 2, 5])

    def test_filter_is_the_only_candidate(self):
        self.assertEqual(compat.atids_to_read({1, 2}, 2), ([], 2))

    def test_mumt_v2_drops_idle_users(self):
        sums = {1: {"points": 5, "steps": 1}, 2: {"points": 0, "steps": 9}, 3: {"points": 0, "steps": 0}}
        atids = {1: [2], 2: [3], 3: []}
        self.assertEqual(compat.mumt_answer(sums, atids, drop_idle=False)["data"]["3"], {"points": 0, "steps": 0, "_atids": []})
        self.assertEqual(compat.mumt_answer(sums, atids, drop_idle=True), {"data": {"1": {"points": 5, "steps": 1, "_atids": [2]}}})
