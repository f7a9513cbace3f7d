"""Strict JSON and point validation: what is refused, and with which message."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from psd.errors import InvalidInput
from psd.model import Count, Part, Point, group_parts
from psd.validation import as_batch, decode_json, integer_text, parse_count, parse_point

METRICS = frozenset({"points", "steps"})
GOOD = {"uid": 1, "atid": 3, "metric": "points", "value": 10, "ts": 1458061005}


class DecodeTests(SynchronousTestCase):
    def assertRefused(self, body: bytes, fragment: str):
        e = self.assertRaises(InvalidInput, decode_json, body)
        self.assertIn(fragment, e.message)

    def test_plain_json(self):
        self.assertEqual(decode_json(b'[{"a": 1}]'), [{"a": 1}])

    def test_refused(self):
        self.assertRefused(b"not json", "not valid JSON")
        self.assertRefused(b'{"uid": NaN}', "NaN")
        self.assertRefused(b'{"uid": Infinity}', "Infinity")
        self.assertRefused(b'{"uid": -Infinity}', "Infinity")
        self.assertRefused(b'{"uid": 1, "uid": 2}', "duplicate key 'uid'")
        self.assertRefused(b'"\\ud800"', "lone surrogate")
        self.assertRefused(b'{"\\udfff": 1}', "lone surrogate")
        self.assertRefused(b"\xff\xfe", "not UTF-8")
        self.assertRefused(b"1" * 5000, "not valid JSON")
        self.assertRefused(b"[" * 100000, "not valid JSON")


class PointTests(SynchronousTestCase):
    def assertRefused(self, changes: dict, fragment: str, drop=()):
        obj = {**GOOD, **changes}
        for key in drop:
            del obj[key]
        e = self.assertRaises(InvalidInput, parse_point, obj, METRICS, 4)
        self.assertIn(fragment, e.message)
        self.assertEqual(e.index, 4)

    def test_good(self):
        self.assertEqual(parse_point(GOOD, METRICS), (None, Point(1, 3, "points", 10, 1458061005)))
        self.assertEqual(parse_point({**GOOD, "id": "a-1"}, METRICS)[0], "a-1")
        no_atid = dict(GOOD)
        del no_atid["atid"]
        self.assertEqual(parse_point(no_atid, METRICS)[1].atid, 0)

    def test_limits(self):
        self.assertEqual(parse_point({**GOOD, "value": 2**53}, METRICS)[1].value, 2**53)
        self.assertEqual(parse_point({**GOOD, "value": -(2**53)}, METRICS)[1].value, -(2**53))
        self.assertEqual(parse_point({**GOOD, "ts": 2**33 - 1}, METRICS)[1].ts, 2**33 - 1)
        self.assertRefused({"value": 2**53 + 1}, "value must be between")
        self.assertRefused({"ts": 2**33}, "ts must be between")
        self.assertRefused({"ts": -1}, "ts must be between")
        self.assertRefused({"uid": -1}, "uid must be between")
        self.assertRefused({"uid": 2**63}, "uid must be between")

    def test_types(self):
        self.assertRefused({"uid": True}, "uid must be an integer")
        self.assertRefused({"value": False}, "value must be an integer")
        self.assertRefused({"value": 1.0}, "value must be an integer")
        self.assertRefused({"ts": "1458061005"}, "ts must be an integer")
        self.assertRefused({"metric": "bogus"}, "metric must be one of points, steps")
        self.assertRefused({"metric": ["points"]}, "metric must be one of")
        self.assertRefused({"vlaue": 3}, "unknown field 'vlaue'")
        self.assertRefused({}, "value is required", drop=("value",))
        self.assertRefused({"id": ""}, "id must be a non-empty string")
        self.assertRefused({"id": "x" * 129}, "at most 128 bytes")
        self.assertRefused({"id": "a{b}"}, "braces")
        self.assertRaises(InvalidInput, parse_point, [GOOD], METRICS)

    def test_set_total(self):
        obj = {k: v for k, v in GOOD.items() if k != "value"}
        self.assertEqual(parse_point({**obj, "aid": 7, "total": 50}, METRICS)[1], Point(1, 3, "points", 0, 1458061005, 7, 50))
        self.assertRefused({"aid": 7, "total": 5}, "either value or total")
        e = self.assertRaises(InvalidInput, parse_point, {**obj, "total": 5}, METRICS)
        self.assertIn("aid is required", e.message)
        e = self.assertRaises(InvalidInput, parse_point, {**obj, "aid": 1, "total": -1}, METRICS)
        self.assertIn("total must be between 0", e.message)

    def test_batches(self):
        self.assertEqual(as_batch(GOOD, 3), [GOOD])
        self.assertEqual(as_batch([GOOD, GOOD], 3), [GOOD, GOOD])
        self.assertIn("at most 3", self.assertRaises(InvalidInput, as_batch, [GOOD] * 4, 3).message)
        self.assertIn("no points", self.assertRaises(InvalidInput, as_batch, [], 3).message)

    def test_integer_text(self):
        self.assertEqual(integer_text("42", "uid", 0, 100), 42)
        for bad in ("", "4 2", "0x10", "1e3", "-", "१२"):
            self.assertRaises(InvalidInput, integer_text, bad, "uid", 0, 100)

    def test_a_missing_parameter_is_named_as_missing(self):
        """One wording for a missing parameter, whether it is a number or a list."""
        self.assertEqual(self.assertRaises(InvalidInput, integer_text, None, "from", 0, 100).message,
                         "from is required")


class CountTests(SynchronousTestCase):
    def test_count(self):
        self.assertEqual(parse_count({"name": "signups", "value": 3, "ts": 5}), (None, Count("signups", 3, 5)))
        for name in ("a", "x" * 65, "bad name", "a:b", 3):
            self.assertRaises(InvalidInput, parse_count, {"name": name, "value": 3, "ts": 5})


class GroupPartsTests(SynchronousTestCase):
    def test_ids_become_parts(self):
        a, b, c = Point(1, 0, "points", 1, 0), Point(2, 0, "points", 1, 0), Count("logins", 1, 0)
        self.assertEqual(group_parts([("x", a), (None, b), (None, c)]),
                         (Part("u:1:points:x", (a,), ()), Part(None, (b,), (c,))))
        self.assertEqual(group_parts([("x", a), (None, b)], unit_key="h:k"), (Part("h:k", (a, b), ()),))
