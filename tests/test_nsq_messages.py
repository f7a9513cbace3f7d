"""Message bodies of every accepted shape -> WriteUnits; anything else -> InvalidInput."""

import json

from twisted.trial.unittest import SynchronousTestCase

from psd.errors import InvalidInput
from psd.model import Count, Part, Point, WriteUnit
from psd.nsq.messages import parse_message

METRICS = frozenset({"points", "steps", "distance"})
KEY = "nsq:127.0.0.1:4150:0a1b2c3d4e5f6789"


def parse(obj, **kwargs):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return parse_message(body, METRICS, KEY, **kwargs)


class ShapeTests(SynchronousTestCase):
    def test_point_object(self):
        unit = parse({"uid": 1, "atid": 3, "metric": "points", "value": 10, "ts": 1458061005})
        self.assertEqual(unit, WriteUnit(parts=(Part(KEY, (Point(1, 3, "points", 10, 1458061005),)),)))

    def test_array_with_and_without_ids(self):
        """Items with ids are keyed by them; the rest by the message."""
        unit = parse([
            {"uid": 1, "metric": "steps", "value": 5, "ts": 10, "id": "a"},
            {"uid": 2, "metric": "steps", "value": 6, "ts": 11},
        ])
        self.assertEqual(unit.parts, (Part("u:1:steps:a", (Point(1, 0, "steps", 5, 10),)),
                                      Part(KEY, (Point(2, 0, "steps", 6, 11),))))

    def test_go_metric_job_with_aid_is_a_total_at_ts2(self):
        unit = parse({"command": "metric", "metric": {"thing": "points", "uid": 1, "atid": 3, "aid": 7,
                                                       "value": 10, "ts1": 1458061000, "ts2": 1458061005}})
        self.assertEqual(unit.parts[0].points, (Point(1, 3, "points", 0, 1458061005, aid=7, total=10),))

    def test_go_metric_job_without_aid_adds(self):
        unit = parse({"command": "metric", "metric": {"thing": "steps", "uid": 1, "value": 4, "ts1": 9}})
        self.assertEqual(unit.parts[0].points, (Point(1, 0, "steps", 4, 9),))

    def test_go_count_job(self):
        unit = parse({"command": "count", "count": {"thing": "signups", "value": 2, "ts": 1458061005}})
        self.assertEqual(unit.parts, (Part(KEY, (), (Count("signups", 2, 1458061005),)),))

    def test_enqueue_rb_shape_is_one_point_per_metric(self):
        unit = parse({"command": "metric", "metric": {"steps": 11, "points": 3, "activity_type_id": 3,
                                                       "timestamp": 1458061005, "user_id": 1}})
        self.assertEqual(unit.parts, (Part(KEY, (Point(1, 3, "points", 3, 1458061005),
                                                 Point(1, 3, "steps", 11, 1458061005))),))


class RejectionTests(SynchronousTestCase):
    def assertInvalid(self, obj, fragment, **kwargs):
        error = self.assertRaises(InvalidInput, parse, obj, **kwargs)
        self.assertIn(fragment, error.message)

    def test_not_json(self):
        self.assertInvalid(b"{nope", "not valid JSON")
        self.assertInvalid(b"\xff", "UTF-8")

    def test_bad_points(self):
        self.assertInvalid({"uid": 1, "metric": "sleep", "value": 1, "ts": 1}, "metric must be one of")
        self.assertInvalid([], "no points")
        self.assertInvalid([{"uid": 1, "metric": "steps", "value": 1, "ts": 1}] * 3, "at most 2", limit=2)

    def test_bad_envelopes(self):
        self.assertInvalid({"command": "delete", "metric": {}}, "unknown command")
        self.assertInvalid({"command": "metric", "metric": {}, "extra": 1}, "unknown field 'extra'")
        self.assertInvalid({"command": "metric", "metric": [1]}, "must be a JSON object")
        self.assertInvalid({"command": "count", "count": {"thing": "a.b", "name": "a.b", "value": 1, "ts": 1}},
                           "not both")

    def test_bad_go_jobs(self):
        job = {"thing": "points", "uid": 1, "value": 1, "ts1": 5, "ts2": 4}
        self.assertInvalid({"command": "metric", "metric": job}, "ts1 must not be after ts2")
        self.assertInvalid({"command": "metric", "metric": {**job, "ts1": 1, "mode": "x"}}, "unknown field 'mode'")
        self.assertInvalid({"command": "metric", "metric": {"thing": "points", "uid": 1, "value": 1}}, "ts1")

    def test_bad_enqueue_jobs(self):
        self.assertInvalid({"command": "metric", "metric": {"user_id": 1, "timestamp": 1}}, "names none of")
        self.assertInvalid({"command": "metric", "metric": {"user_id": 1, "timestamp": 1, "sleep": 2}},
                           "unknown field 'sleep'")
        self.assertInvalid({"command": "metric", "metric": {"user_id": 1, "timestamp": 1, "steps": 1.5}},
                           "value must be an integer")
