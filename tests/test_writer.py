"""The writer's batching, acknowledgement and failure rules, on a Clock.

The store here is a recorder whose replies the test gives by hand: what is
under test is when the writer sends, what it merges, and whom it answers.
The script itself is tested against a real Redis in test_store.
"""

from __future__ import annotations

import msgpack
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from psd.errors import Overloaded, RejectedByStore, StoreUnavailable
from psd.keys import Layout
from psd.model import Part, Point, UnitResult, WriteUnit
from psd.writer import Writer
from tests.writeargs import increments

TS = 1458061005


class RecordingStore:
    def __init__(self):
        self.calls = []

    def write(self, keys, args):
        d = defer.Deferred()
        self.calls.append((keys, msgpack.unpackb(args[0]), d))
        return d


def unit(uid=1, value=1, key=None, ts=TS) -> WriteUnit:
    return WriteUnit((Part(key, (Point(uid, 0, "points", value, ts),)),))


class WriterTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = RecordingStore()
        self.writer = Writer(self.clock, self.store, Layout(), window=0.005, max_batch_points=10,
                             max_queue_points=25, max_in_flight=2)

    def test_units_in_one_window_share_one_call(self):
        d1, d2 = self.writer.submit(unit(1, 2)), self.writer.submit(unit(1, 3))
        self.assertEqual(self.store.calls, [])
        self.clock.advance(0.005)
        self.assertEqual(len(self.store.calls), 1)
        keys, args, reply = self.store.calls[0]
        self.assertEqual(keys, [])
        self.assertEqual(increments(args)[("hz:1:0:points:2016", "201603")], 5)
        self.assertNoResult(d1)
        reply.callback([0])
        self.assertEqual(self.successResultOf(d1), UnitResult(1, 0))
        self.assertEqual(self.successResultOf(d2), UnitResult(1, 0))
        self.assertEqual(self.writer.pending(), 0)

    def test_a_free_slot_sends_at_the_end_of_the_reactor_turn(self):
        self.writer.submit(unit(1))
        self.writer.submit(unit(2))
        self.clock.advance(0)
        self.assertEqual(len(self.store.calls), 1)

    def test_units_wait_for_a_free_slot(self):
        """With both call slots busy, units gather until a call returns, and go then."""
        for uid in (1, 2):
            self.writer.submit(unit(uid))
            self.clock.advance(0)
        self.assertEqual(len(self.store.calls), 2)
        waiting = [self.writer.submit(unit(uid)) for uid in (3, 4)]
        self.clock.advance(0.001)
        self.assertEqual(len(self.store.calls), 2)
        self.store.calls[0][2].callback([0])
        self.assertEqual(len(self.store.calls), 3)
        self.assertEqual(len(increments(self.store.calls[2][1])), 2 * 5)  # both units, atid 0
        self.store.calls[2][2].callback([0])
        self.assertEqual([self.successResultOf(d) for d in waiting], [UnitResult(1, 0)] * 2)

    def test_full_batch_is_sent_at_once(self):
        for _ in range(10):
            self.writer.submit(unit())
        self.assertEqual(len(self.store.calls), 1)

    def test_failure_fails_exactly_the_units_of_that_call(self):
        first = [self.writer.submit(unit(1)) for _ in range(10)]
        second = self.writer.submit(unit(2))
        self.clock.advance(0.005)
        self.assertEqual(len(self.store.calls), 2)
        self.store.calls[0][2].errback(StoreUnavailable("down"))
        for d in first:
            self.failureResultOf(d, StoreUnavailable)
        self.assertNoResult(second)
        self.store.calls[1][2].callback([0])
        self.assertEqual(self.successResultOf(second), UnitResult(1, 0))

    def test_a_bug_of_ours_fails_its_units_as_itself_not_as_an_outage(self):
        """An internal error is a 500 over HTTP and a dead letter for NSQ, not a 503 and a requeue."""
        d = self.writer.submit(unit(1))
        self.clock.advance(0.005)
        self.store.calls[0][2].errback(ZeroDivisionError("a bug"))
        self.failureResultOf(d, ZeroDivisionError)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.writer.pending(), 0)

    def test_queue_bound(self):
        accepted = [self.writer.submit(unit()) for _ in range(25)]
        self.failureResultOf(self.writer.submit(unit()), Overloaded)
        self.clock.advance(0.005)
        self.assertEqual(len(self.store.calls), 2)  # the third batch waits for a free call slot
        self.store.calls[0][2].callback([0])
        self.assertEqual(len(self.store.calls), 3)
        self.assertNoResult(self.writer.submit(unit()))
        self.assertEqual([self.successResultOf(d) for d in accepted[:10]], [UnitResult(1, 0)] * 10)

    def test_seen_keys_are_dropped_and_the_rest_resent(self):
        d1, d2, d3 = self.writer.submit(unit(1, 5, key="h:a")), self.writer.submit(unit(2, 7, key="h:b")), \
            self.writer.submit(unit(3, 1))
        self.clock.advance(0.005)
        keys, args, reply = self.store.calls[0]
        self.assertEqual(keys[:2], ["hz:id:h:a", "hz:id:h:b"])
        reply.callback([1, 2])
        keys, args, reply = self.store.calls[1]
        self.assertEqual(keys, ["hz:id:h:a"])
        self.assertNotIn("hz:2:0:points:", args[1])
        reply.callback([0])
        self.assertEqual([self.successResultOf(d) for d in (d1, d2, d3)], [(1, 0), (0, 1), (1, 0)])

    def test_same_key_twice_in_one_batch(self):
        d1, d2 = self.writer.submit(unit(1, 5, key="h:a")), self.writer.submit(unit(1, 5, key="h:a"))
        self.clock.advance(0.005)
        keys, args, reply = self.store.calls[0]
        self.assertEqual(keys, ["hz:id:h:a"])
        self.assertEqual(increments(args)[("hz:1:0:points:2016", "201603")], 5)
        reply.callback([0])
        self.assertEqual([self.successResultOf(d) for d in (d1, d2)], [(1, 0), (0, 1)])

    def test_refused_batch_is_retried_unit_by_unit(self):
        good, bad = self.writer.submit(unit(1)), self.writer.submit(unit(2))
        self.clock.advance(0.005)
        self.store.calls[0][2].errback(RejectedByStore("overflow"))
        self.store.calls[1][2].callback([0])
        self.store.calls[2][2].errback(RejectedByStore("overflow"))
        self.assertEqual(self.successResultOf(good), UnitResult(1, 0))
        self.failureResultOf(bad, RejectedByStore)
        self.assertEqual(self.writer.pending(), 0)

    def test_when_idle(self):
        self.successResultOf(self.writer.whenIdle())
        d = self.writer.submit(unit())
        idle = self.writer.whenIdle()
        self.clock.advance(0.005)
        self.assertNoResult(idle)
        self.store.calls[0][2].callback([0])
        self.successResultOf(d)
        self.successResultOf(idle)


class DownAfterFirstCall:
    """The first call hangs until the test fails it; every later one fails at once."""

    def __init__(self):
        self.first = None

    def write(self, keys, args):
        if self.first is None:
            self.first = defer.Deferred()
            return self.first
        return defer.fail(StoreUnavailable("down"))


class SynchronousFailureTests(SynchronousTestCase):
    def test_a_long_queue_failing_at_once_does_not_recurse(self):
        store = DownAfterFirstCall()
        writer = Writer(Clock(), store, Layout(), max_batch_points=1, max_queue_points=10**6, max_in_flight=1)
        units = [writer.submit(unit()) for _ in range(5000)]  # one call in flight, 4,999 batches waiting
        store.first.errback(StoreUnavailable("down"))
        for d in units:
            self.failureResultOf(d, StoreUnavailable)
        self.assertEqual(writer.pending(), 0)
