"""Issue 16 finding 7: no write-script call over ``[writer] max_script_ms`` by the cost model.

The 10,000-points-each-in-its-own-series request (one call of ~1 s before)
is cut into calls that each fit; the answer stays exact; a failed piece fails
the request, says how many items are known applied, and (for keyed parts,
as an NSQ message's) a retry applies only what had not been.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from psd.coalesce import US_PER_HASH, US_PER_INCREMENT, US_PER_KEY, Batch
from psd.errors import InvalidInput, RejectedByStore, StoreUnavailable
from psd.keys import Layout
from psd.model import Count, Part, Point, UnitResult, WriteUnit
from psd.split import split_unit
from psd.writer import Writer
from tests.redisfixture import StoreTestCase
from tests.test_api import APITestCase
from tests.test_writer import RecordingStore
from tests.writeargs import hashes

TS = 1458061005
BUDGET_US = 20000
NSQ_KEY = "nsq:127.0.0.1:4150:0a1b2c3d4e5f6789"


def distinct_series(count: int = 10000, key=None) -> WriteUnit:
    return WriteUnit((Part(key, tuple(Point(uid, 3, "points", 1, TS) for uid in range(count))),))


def items(unit: WriteUnit) -> list:
    return [item for part in unit.parts for item in part.points + part.counts]


def call_cost_us(keys: list, args: list) -> float:
    """The model's cost of a recorded call, from what it actually carries (not from the Batch's bounds)."""
    found = hashes(args)
    increments = sum(len(fields) // 2 for _, fields in found)
    return US_PER_INCREMENT * increments + US_PER_HASH * len(found) + US_PER_KEY * len(keys)


class SplitUnitTests(SynchronousTestCase):
    def test_pieces_fit_the_budget_and_keep_every_item_in_order(self):
        unit = distinct_series()
        pieces = split_unit(unit, Layout(), BUDGET_US)
        self.assertGreater(len(pieces), 10)
        for piece in pieces:
            batch = Batch(Layout(), 60)
            batch.add(piece)
            self.assertLessEqual(batch.cost_us(), BUDGET_US)
        self.assertEqual([i for piece in pieces for i in items(piece)], items(unit))
        self.assertEqual(split_unit(unit, Layout(), BUDGET_US), pieces)  # a redelivery is cut the same way

    def test_a_unit_that_fits_comes_back_whole(self):
        unit = WriteUnit((Part(None, tuple(Point(1, 3, "points", 1, TS + i) for i in range(3000))),))
        self.assertEqual(split_unit(unit, Layout(), BUDGET_US), [unit])

    def test_a_cut_keyed_part_gets_a_key_per_piece(self):
        unit = WriteUnit((Part("u:1:points:a", (Point(1, 0, "points", 1, TS),)),
                          Part(NSQ_KEY, tuple(Point(uid, 3, "points", 1, TS) for uid in range(2000)),
                               (Count("logins", 1, TS),))))
        pieces = split_unit(unit, Layout(), BUDGET_US)
        keys = [part.dedupe_key for piece in pieces for part in piece.parts]
        self.assertEqual(keys[0], "u:1:points:a")  # whole in one piece: its own key
        self.assertEqual(keys[1:], [f"{NSQ_KEY}#{n}" for n in range(len(pieces))])
        self.assertEqual(pieces[-1].parts[-1].counts, (Count("logins", 1, TS),))


class WriterSplitTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = RecordingStore()
        self.writer = Writer(self.clock, self.store, Layout(), max_script_ms=BUDGET_US / 1000, max_in_flight=1)

    def answer_calls(self, until_failure=None):
        """Acknowledge every call as it is sent; fail call number ``until_failure`` (from 0)."""
        answered = 0
        while answered < len(self.store.calls):
            keys, args, reply = self.store.calls[answered]
            self.assertLessEqual(call_cost_us(keys, args), BUDGET_US)
            if answered == until_failure:
                reply.errback(StoreUnavailable("Redis: connection lost"))
            else:
                reply.callback([0])
            answered += 1
            self.clock.advance(0.005)
        return answered

    def test_every_call_fits_and_the_answer_is_exact(self):
        d = self.writer.submit(distinct_series())
        self.clock.advance(0.005)
        calls = self.answer_calls()
        self.assertGreater(calls, 10)
        self.assertEqual(self.successResultOf(d), UnitResult(10000, 0))
        self.assertEqual(sum(len(hashes(args)) for _, args, _ in self.store.calls), 10000 * 10)
        self.assertEqual(self.writer.pending(), 0)

    def test_a_later_failed_call_fails_the_write_and_says_what_was_applied(self):
        d = self.writer.submit(distinct_series())
        other = self.writer.submit(WriteUnit((Part(None, (Point(1, 0, "points", 1, TS),)),)))
        self.clock.advance(0.005)
        self.answer_calls(until_failure=2)
        error = self.failureResultOf(d, StoreUnavailable).value
        first_two = sum(len(hashes(args)) // 10 for _, args, _ in self.store.calls[:2])
        self.assertIn(f"{first_two} of its 10000 items are known applied", str(error))
        self.assertIn("Redis: connection lost", str(error))
        self.assertEqual(len(self.store.calls), 3)  # the pieces queued behind the failure were not sent
        self.failureResultOf(other, StoreUnavailable)
        self.assertEqual(self.writer.pending(), 0)

    def test_an_atomic_unit_over_the_budget_is_refused_unsent(self):
        unit = distinct_series()._replace(atomic=True)
        error = self.failureResultOf(self.writer.submit(unit), InvalidInput).value
        self.assertIn("max_script_ms = 20 ms", error.message)
        self.assertIn("Idempotency-Key", error.message)
        self.clock.advance(1)
        self.assertEqual((self.store.calls, self.writer.pending()), ([], 0))

    def test_small_units_are_merged_under_the_budget(self):
        """The budget also bounds what the coalescer merges, not only what one unit brings."""
        self.writer = Writer(self.clock, self.store, Layout(), max_script_ms=1, max_in_flight=1)
        ds = [self.writer.submit(WriteUnit((Part(None, (Point(uid, 3, "points", 1, TS),)),))) for uid in range(100)]
        self.clock.advance(0.005)
        self.answer_calls()  # each within the budget
        self.assertEqual([self.successResultOf(d) for d in ds], [UnitResult(1, 0)] * 100)
        self.assertGreater(len(self.store.calls), 3)


class SplitOnRedisTests(StoreTestCase):
    def total(self) -> int:
        """Sum of every year field of atid 3 on the server."""
        script = ("local t = 0 for _, k in ipairs(redis.call('KEYS', 'hz:*:3:points:2016')) do "
                  "local v = redis.pcall('HGET', k, '201603') "
                  "if type(v) == 'string' then t = t + tonumber(v) end end return t")
        return int(self.server.call("EVAL", script, "0")[1:-2])

    @defer.inlineCallbacks
    def test_a_refused_piece_then_a_retry_applies_each_point_once(self):
        """An NSQ-keyed message: the pieces applied are duplicates on redelivery, the refused one is applied."""
        unit = distinct_series(key=NSQ_KEY)
        self.server.call("SET", "hz:9999:3:points:2016", "not a hash")  # the last point's piece is refused
        error = yield self.assertFailure(self.writer.submit(unit), RejectedByStore)
        pieces = split_unit(unit, self.layout, self.writer._budget_us)
        applied = 10000 - pieces[-1].size()
        self.assertIn(f"{applied} of its 10000 items are known applied", str(error))
        self.assertEqual(self.total(), applied)
        self.server.call("DEL", "hz:9999:3:points:2016")
        result = yield self.writer.submit(unit)
        self.assertEqual(result, UnitResult(10000 - applied, applied))
        self.assertEqual(self.total(), 10000)
        self.assertEqual(self.server.call("DBSIZE"), b":%d\r\n" % (10000 * 10 + 10000 + len(pieces)))  # + atid sets, keys


class SplitOverHTTPTests(APITestCase):
    @defer.inlineCallbacks
    def test_the_big_request_is_exact_and_split(self):
        body = [{"uid": uid, "atid": 3, "metric": "points", "value": 1, "ts": TS} for uid in range(10000)]
        calls = self.psd.writer.calls
        status, answer, _ = yield self.psd.post("/v1/points", body)
        self.assertEqual((status, answer), (200, {"written": 10000, "duplicates": 0}))
        self.assertGreater(self.psd.writer.calls - calls, 10)
        _, sums, _ = yield self.psd.post("/v1/sum", {"uids": [0, 4999, 9999], "metrics": ["points"], "atid": 3,
                                                     "from": 0, "to": 2**33 - 1})
        self.assertEqual(sums["results"], {str(uid): {"points": 1} for uid in (0, 4999, 9999)})
        self.assertEqual(self.server.call("DBSIZE"), b":%d\r\n" % (10000 * 10 + 10000))  # + each user's atids set

    @defer.inlineCallbacks
    def test_with_an_idempotency_key_it_is_a_400_naming_the_limit(self):
        body = [{"uid": uid, "atid": 3, "metric": "points", "value": 1, "ts": TS} for uid in range(10000)]
        status, answer, _ = yield self.psd.post("/v1/points", body, headers={"Idempotency-Key": "big"})
        self.assertEqual(status, 400)
        self.assertIn("max_script_ms = 20 ms", answer["error"])
        self.assertEqual(self.server.call("DBSIZE"), b":0\r\n")
