"""Limits of the write path: short script calls, clients that go away, overload.

The writer-level tests run on a Clock with the recording store of
test_writer; the overload test runs psd against a redis-server that is
paused (SIGSTOP), so that the queue fills for real.
"""

from __future__ import annotations

import json
import signal

from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from psd.errors import StoreUnavailable
from psd.keys import Layout
from psd.model import Part, Point, UnitResult, WriteUnit
from psd.writer import Writer
from tests.psdfixture import started_psd
from tests.redisfixture import RedisServer
from tests.test_writer import TS, RecordingStore, unit
from tests.writeargs import increments


def spread_unit(first_uid: int, points: int) -> WriteUnit:
    """Points of distinct users and hours: nothing coalesces, ~10 increments each."""
    return WriteUnit((Part(None, tuple(Point(first_uid + i, 1, "points", 1, TS + 3600 * i) for i in range(points))),))


class ScriptSizeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.store = RecordingStore()
        self.writer = Writer(self.clock, self.store, Layout(), max_batch_points=5000, max_script_increments=500,
                             max_in_flight=100)

    def increments(self, call) -> int:
        return len(increments(call[1]))

    def test_calls_are_split_at_the_increment_cap(self):
        for uid in range(0, 400, 10):
            self.writer.submit(spread_unit(uid * 100, 10))
        self.clock.advance(0.005)
        sizes = [self.increments(call) for call in self.store.calls]
        self.assertEqual(sum(sizes), 40 * 10 * 10)
        self.assertTrue(len(sizes) >= 8, sizes)
        self.assertTrue(max(sizes) <= 500, sizes)

    def test_coalescing_traffic_packs_more_points_per_call(self):
        """A workout collapses: the cap counts increments, not points."""
        for uid in range(50):
            self.writer.submit(WriteUnit((Part(None, tuple(Point(uid, 1, "steps", 1, TS + 7 * i) for i in range(20))),)))
        self.clock.advance(0.005)
        self.assertTrue(len(self.store.calls) <= 12, len(self.store.calls))
        self.assertTrue(max(self.increments(call) for call in self.store.calls) <= 500)

    def test_a_unit_above_the_cap_is_one_call(self):
        """Units stay atomic: a big one is sent alone, whole, and at once."""
        small = self.writer.submit(unit(1))
        big = self.writer.submit(spread_unit(1000, 100))
        self.assertEqual([self.increments(call) for call in self.store.calls], [5, 1000])
        for call in self.store.calls:
            call[2].callback([0])
        self.assertEqual((self.successResultOf(small), self.successResultOf(big)), (UnitResult(1, 0), UnitResult(100, 0)))


class GoneClientTests(SynchronousTestCase):
    def test_a_cancelled_unit_does_not_stop_the_others_being_answered(self):
        """Klein cancels a handler's Deferred when the client disconnects; the batch goes on."""
        clock, store = Clock(), RecordingStore()
        writer = Writer(clock, store, Layout())
        gone, staying = writer.submit(unit(1)), writer.submit(unit(2))
        gone.cancel()
        self.failureResultOf(gone, defer.CancelledError)
        clock.advance(0.005)
        store.calls[0][2].callback([0])
        self.assertEqual(self.successResultOf(staying), UnitResult(1, 0))
        self.assertEqual(writer.pending(), 0)


class StoreDownTests(SynchronousTestCase):
    def test_batches_waiting_behind_a_failed_call_fail_unsent(self):
        """They would go to the same dead connection: encoded and buffered for nothing."""
        clock, store = Clock(), RecordingStore()
        writer = Writer(clock, store, Layout(), max_batch_points=1, max_in_flight=1)
        units = [writer.submit(unit(uid)) for uid in range(3)]
        store.calls[0][2].errback(StoreUnavailable("Redis: TimeoutError"))
        for d in units:
            self.failureResultOf(d, StoreUnavailable)
        self.assertEqual((len(store.calls), writer.pending()), (1, 0))
        later = writer.submit(unit(9))
        clock.advance(0.005)
        self.assertEqual(len(store.calls), 2)
        store.calls[1][2].callback([0])
        self.assertEqual(self.successResultOf(later), UnitResult(1, 0))


class OverloadTests(TestCase):
    @defer.inlineCallbacks
    def test_503_with_retry_after_past_the_queue_bound_then_recovery(self):
        server = RedisServer(self)
        yield server.start()
        config = self.mktemp()
        with open(config, "w") as f:
            f.write("[writer]\nmax_queue_points = 30\nwindow_ms = 1.0\n")
        psd = yield started_psd(self, server, "--config", config)
        server.kill(signal.SIGSTOP)
        point = {"uid": 1, "atid": 0, "metric": "points", "value": 1, "ts": TS}
        accepted = [psd.post("/v1/points", [point] * 10) for _ in range(3)]
        while psd.writer.pending() < 30:
            yield deferLater(reactor, 0.01, lambda: None)
        status, body, response = yield psd.post("/v1/points", [point] * 10)
        self.assertEqual(status, 503)
        self.assertIn("overloaded", body["error"])
        self.assertEqual(response.headers.getRawHeaders("Retry-After"), ["1"])
        self.assertEqual(psd.writer.pending(), 30)
        server.kill(signal.SIGCONT)
        answers = yield defer.gatherResults(accepted)
        self.assertEqual([(status, body) for status, body, _ in answers], [(200, {"written": 10, "duplicates": 0})] * 3)
        status, _, _ = yield psd.post("/v1/points", [point] * 10)
        self.assertEqual(status, 200)
        self.assertEqual(server.call("HGET", "hz:1:0:points:2016", "201603"), b"$2\r\n40\r\n")

    @defer.inlineCallbacks
    def test_a_client_that_leaves_before_its_answer_is_no_internal_error(self):
        server = RedisServer(self)
        yield server.start()
        psd = yield started_psd(self, server)
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        server.kill(signal.SIGSTOP)
        body = json.dumps({"uid": 1, "metric": "points", "value": 1, "ts": TS}).encode()
        client = yield ClientCreator(reactor, Protocol).connectTCP("127.0.0.1", int(psd.base.rsplit(":", 1)[1]))
        client.transport.write(b"POST /v1/points HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                               % (int(psd.base.rsplit(":", 1)[1]), len(body), body))
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(psd.writer.pending(), 1)
        client.transport.loseConnection()
        yield deferLater(reactor, 0.1, lambda: None)
        server.kill(signal.SIGCONT)
        yield psd.writer.whenIdle()
        status, answer, response = yield psd.post("/v1/points", {"uid": 1, "metric": "points", "value": 1, "ts": TS})
        self.assertEqual((status, response.length), (200, 28))  # Content-Length: not chunked
        self.assertEqual([e for e in events if e.get("log_namespace") == "psd.api"], [])
        self.assertEqual(server.call("HGET", "hz:1:0:points:2016", "201603"), b"$1\r\n2\r\n")
