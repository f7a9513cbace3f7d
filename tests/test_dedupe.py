"""Idempotency keys: scoped so only a true retry matches, and duplicates counted once.

End to end on a real redis-server (psd assembled by tap.makeService), plus the
writer's re-merge rules on a Clock with a store whose replies the test gives.
"""

from __future__ import annotations

import json

import msgpack
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from psd.errors import IdempotencyConflict
from psd.keys import Layout
from psd.model import Count, Part, Point, UnitResult, WriteUnit, content_digest, group_parts
from psd.writer import Writer
from tests.test_api import APITestCase

TS = 1458061005
POINT = {"uid": 1, "metric": "points", "value": 10, "ts": TS}
COUNT = {"name": "logins", "value": 3, "ts": TS}
EVER = f"from=0&to={2**33 - 1}"


class ScopedIdsTests(APITestCase):
    @defer.inlineCallbacks
    def sums(self, uid: int) -> dict:
        _, body, _ = yield self.psd.get(f"/v1/sum?uids={uid}&metrics=points,steps&{EVER}")
        return body["results"][str(uid)]

    @defer.inlineCallbacks
    def test_another_users_point_with_the_same_id_is_written(self):
        """Issue 16 finding 2: uid 2's point was dropped as a duplicate of uid 1's."""
        for uid in (1, 2):
            status, body, _ = yield self.psd.post("/v1/points", {**POINT, "uid": uid, "id": "workout-1"})
            self.assertEqual((status, body), (200, {"written": 1, "duplicates": 0}))
        self.assertEqual((yield self.sums(2)), {"points": 10, "steps": 0})
        retry = yield self.psd.post("/v1/points", {**POINT, "uid": 2, "id": "workout-1"})
        self.assertEqual(retry[:2], (200, {"written": 0, "duplicates": 1}))
        self.assertEqual((yield self.sums(2)), {"points": 10, "steps": 0})

    @defer.inlineCallbacks
    def test_another_metrics_point_with_the_same_id_is_written(self):
        """A workout's steps and points may share its id."""
        status, body, _ = yield self.psd.post("/v1/points", [{**POINT, "id": "w"}, {**POINT, "metric": "steps", "id": "w"}])
        self.assertEqual((status, body), (200, {"written": 2, "duplicates": 0}))
        self.assertEqual((yield self.sums(1)), {"points": 10, "steps": 10})

    @defer.inlineCallbacks
    def test_a_count_with_a_points_id_is_written(self):
        """Issue 18: a count with id z after a point with id z was lost."""
        yield self.psd.post("/v1/points", {**POINT, "id": "z"})
        status, body, _ = yield self.psd.post("/v1/counts", {**COUNT, "id": "z"})
        self.assertEqual((status, body), (200, {"written": 1, "duplicates": 0}))
        status, body, _ = yield self.psd.post("/v1/counts", {**COUNT, "name": "signups", "id": "z"})
        self.assertEqual((status, body), (200, {"written": 1, "duplicates": 0}))
        _, body, _ = yield self.psd.get(f"/v1/count?names=logins,signups&{EVER}")
        self.assertEqual(body["results"], {"logins": 3, "signups": 3})

    def test_record_names_carry_the_uid_and_the_kind(self):
        keys = [part.dedupe_key for part in group_parts([("a:b", Point(7, 0, "steps", 1, TS)),
                                                         ("a:b", Count("logins", 1, TS))])]
        self.assertEqual(keys, ["u:7:steps:a:b", "c:logins:a:b"])
        self.assertEqual(Layout().seen_key(keys[0]), "hz:id:u:7:steps:a:b")


class DuplicatesCountedOnceTests(APITestCase):
    """Issue 18: written + duplicates always equals the items sent."""

    @defer.inlineCallbacks
    def assertAnswers(self, path: str, body, written: int, duplicates: int):
        status, answer, _ = yield self.psd.post(path, body)
        self.assertEqual((status, answer), (200, {"written": written, "duplicates": duplicates}))

    @defer.inlineCallbacks
    def assertRepeatsCountedOnce(self, path: str, item: dict):
        x = {**item, "id": "x"}
        yield self.assertAnswers(path, x, 1, 0)
        yield self.assertAnswers(path, [x, {**x, "ts": TS + 1}], 0, 2)
        yield self.assertAnswers(path, [x, x, x], 0, 3)
        yield self.assertAnswers(path, [x, {**x, "id": "y"}, x, {**x, "id": "y"}], 1, 3)

    @defer.inlineCallbacks
    def test_points_repeating_an_applied_id(self):
        yield self.assertRepeatsCountedOnce("/v1/points", POINT)
        _, body, _ = yield self.psd.get(f"/v1/sum?uids=1&metrics=points&{EVER}")
        self.assertEqual(body["results"], {"1": {"points": 20}})

    @defer.inlineCallbacks
    def test_counts_repeating_an_applied_id(self):
        yield self.assertRepeatsCountedOnce("/v1/counts", COUNT)
        _, body, _ = yield self.psd.get(f"/v1/count?names=logins&{EVER}")
        self.assertEqual(body["results"], {"logins": 6})

    @defer.inlineCallbacks
    def test_an_id_twice_in_one_request_applies_the_first(self):
        """As a retry would: the first item with an id is written, the later ones are duplicates."""
        yield self.assertAnswers("/v1/points", [{**POINT, "value": 5, "id": "x"}, {**POINT, "value": 7, "id": "x"}], 1, 1)
        _, body, _ = yield self.psd.get(f"/v1/sum?uids=1&metrics=points&{EVER}")
        self.assertEqual(body["results"], {"1": {"points": 5}})


class IdempotencyKeyContentTests(APITestCase):
    @defer.inlineCallbacks
    def post(self, body=None, raw=None, key="req-1"):
        status, answer, _ = yield self.psd.post("/v1/points", body, raw=raw, headers={"Idempotency-Key": key})
        return status, answer

    @defer.inlineCallbacks
    def test_same_key_same_content_is_a_duplicate_however_spelled(self):
        self.assertEqual((yield self.post([POINT])), (200, {"written": 1, "duplicates": 0}))
        respelled = json.dumps([dict(reversed(POINT.items()))], indent=2).encode()
        self.assertEqual((yield self.post(raw=respelled)), (200, {"written": 0, "duplicates": 1}))

    @defer.inlineCallbacks
    def test_same_key_other_content_is_422_and_writes_nothing(self):
        yield self.post([POINT])
        for other in ([{**POINT, "value": 11}], [POINT, POINT], [{**POINT, "uid": 2}]):
            status, answer = yield self.post(other)
            self.assertEqual(status, 422)
            self.assertIn("Idempotency-Key 'req-1' was used for a request with other content", answer["error"])
        _, body, _ = yield self.psd.get(f"/v1/sum?uids=1,2&metrics=points&{EVER}")
        self.assertEqual(body["results"], {"1": {"points": 10}, "2": {"points": 0}})
        self.assertEqual((yield self.post([POINT], key="req-2")), (200, {"written": 1, "duplicates": 0}))

    @defer.inlineCallbacks
    def test_concurrent_requests_with_one_key(self):
        """In one script call or several: the same content is a duplicate, other content a 422."""
        bodies = [[POINT], [POINT], [{**POINT, "value": 1}]]
        answers = yield defer.gatherResults([self.post(body) for body in bodies])
        # whichever arrived first is applied; the others are its duplicates or, with other content, 422
        [applied] = [i for i, (status, answer) in enumerate(answers) if answer == {"written": 1, "duplicates": 0}]
        for body, (status, answer) in zip(bodies, answers):
            if answer != {"written": 1, "duplicates": 0}:
                self.assertEqual(status, 200 if body == bodies[applied] else 422, answers)
        self.assertEqual(sorted(status for status, _ in answers), [200, 200, 422] if applied < 2 else [200, 422, 422])

    @defer.inlineCallbacks
    def test_a_key_recorded_before_digests_is_a_duplicate(self):
        """Records written by an older psd hold 1: they still make a retry a duplicate."""
        self.server.call("SET", "hz:id:h:req-1", "1")
        self.assertEqual((yield self.post([POINT])), (200, {"written": 0, "duplicates": 1}))

    @defer.inlineCallbacks
    def test_the_record_holds_the_digest(self):
        yield self.post([POINT])
        expected = content_digest([(None, Point(1, 0, "points", 10, TS))])
        self.assertEqual(self.server.call("GET", "hz:id:h:req-1"), b"$%d\r\n%s\r\n" % (len(expected), expected.encode()))


class RecordingStore:
    def __init__(self):
        self.calls = []

    def write(self, keys, args):
        d = defer.Deferred()
        self.calls.append((keys, [msgpack.unpackb(arg, strict_map_key=False) for arg in args], d))
        return d


def keyed_unit(key: str, value: int = 1, digest=None, uid: int = 1) -> WriteUnit:
    return WriteUnit((Part(key, (Point(uid, 0, "points", value, TS),), (), digest),))


class WriterRemergeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = RecordingStore()
        self.writer = Writer(self.clock, self.store, Layout())

    def flush(self):
        self.clock.advance(0.005)
        return self.store.calls[-1]

    def test_a_seen_key_leaves_every_part_that_carries_it(self):
        """One re-send, and each part counted once: the bug re-sent the second copy and counted both twice."""
        x = Part("u:1:points:x", (Point(1, 0, "points", 1, TS),))
        d = self.writer.submit(WriteUnit((x, x._replace(points=(Point(1, 0, "points", 1, TS + 1),)), x)))
        keys, _, reply = self.flush()
        self.assertEqual(keys, ["hz:id:u:1:points:x"])
        reply.callback([1, 1])
        keys, args, reply = self.store.calls[-1]
        self.assertEqual((keys, args[0][2]), ([], []))
        reply.callback([0])
        self.assertEqual(self.successResultOf(d), UnitResult(0, 3))
        self.assertEqual(len(self.store.calls), 2)

    def test_a_conflict_fails_its_unit_only(self):
        ok = self.writer.submit(keyed_unit("h:a", digest="d1"))
        conflicting = self.writer.submit(keyed_unit("h:b", digest="d2", uid=2))
        keys, args, reply = self.flush()
        self.assertEqual(args[1], {1: "d1", 2: "d2"})
        reply.callback([1, -2])
        self.failureResultOf(conflicting, IdempotencyConflict)
        keys, args, reply = self.store.calls[-1]
        self.assertEqual(keys, ["hz:id:h:a"])
        reply.callback([0])
        self.assertEqual(self.successResultOf(ok), UnitResult(1, 0))
        self.assertEqual(self.writer.pending(), 0)

    def test_a_conflict_inside_one_batch(self):
        first, same, other = (self.writer.submit(keyed_unit("h:a", value, digest))
                              for value, digest in ((1, "d1"), (1, "d1"), (2, "d2")))
        keys, args, reply = self.flush()
        self.assertEqual((keys, len(args[0][2]) // 5), (["hz:id:h:a"], 5))  # one point's five hashes
        reply.callback([0])
        self.assertEqual([self.successResultOf(d) for d in (first, same)], [UnitResult(1, 0), UnitResult(0, 1)])
        self.failureResultOf(other, IdempotencyConflict)
        self.assertEqual(self.writer.pending(), 0)

    def test_a_conflict_inside_a_batch_that_redis_answers_seen(self):
        """The key was applied by an earlier call: the same content is a duplicate, other content still a 422.

        The bug: the re-merge without the seen key counted the other content as a duplicate too.
        """
        same, other = (self.writer.submit(keyed_unit("h:a", value, digest)) for value, digest in ((1, "d1"), (2, "d2")))
        keys, args, reply = self.flush()
        self.assertEqual(keys, ["hz:id:h:a"])
        reply.callback([1, 1])  # an earlier call applied h:a with this batch's first digest
        keys, args, reply = self.store.calls[-1]
        reply.callback([0])
        self.assertEqual(self.successResultOf(same), UnitResult(0, 1))
        self.failureResultOf(other, IdempotencyConflict)
        self.assertEqual(self.writer.pending(), 0)
