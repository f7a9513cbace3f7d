"""The consumer service over in-memory connections: RDY, backoff, dead letters, stop, discovery.

Connections go through the real ClientService and HostnameEndpoint on a
MemoryReactorClock; each "nsqd" is a StringTransport fed nsqd's replies.
"""

import json

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from psd.errors import RejectedByStore, StoreUnavailable
from psd.model import UnitResult
from psd.nsq.consumer import NSQConsumer
from tests import nsqframes

METRICS = frozenset({"points", "steps"})
POINT = b'{"uid":1,"atid":3,"metric":"points","value":10,"ts":1458061005}'


class FakeWriter:
    def __init__(self):
        self.submitted = []

    def submit(self, unit):
        d = defer.Deferred()
        self.submitted.append((unit, d))
        return d


class HalfRandom:
    def random(self):
        return 0.5


class FakeResponse:
    def __init__(self, code, body):
        self.code = code
        self._body = body

    def content(self):
        return defer.succeed(self._body)


class FakeHTTP:
    def __init__(self):
        self.answers = {}
        self.requests = []

    def get(self, url, headers):
        self.requests.append(url)
        code, body = self.answers[url.split("/lookup")[0]]
        return defer.succeed(FakeResponse(code, json.dumps(body).encode()))


class Peer(nsqframes.WireEnd):
    """One fake nsqd connection made by the consumer."""

    transport_type = StringTransport

    def __init__(self, wrapping_factory):
        self.transport = self.transport_type()
        wrapper = wrapping_factory.buildProtocol(None)
        wrapper.makeConnection(self.transport)
        self.transport.protocol = wrapper
        self.protocol = wrapper._wrappedProtocol

    def drop(self) -> None:
        self.protocol.transport.protocol.connectionLost(Failure(ConnectionDone()))

    def handshake(self, **reply):
        self.receive(nsqframes.identify_reply(**reply))
        self.receive(nsqframes.OK)

    def message(self, message_id: bytes, body: bytes = POINT, attempts: int = 1):
        self.receive(nsqframes.message(message_id, body, attempts))


class ConsumerTestCase(SynchronousTestCase):
    addresses = ("127.0.0.1:4150", "127.0.0.1:4250")
    options: dict = {}

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.writer = FakeWriter()
        self.consumer = NSQConsumer(self.reactor, self.writer, METRICS, nsqd_tcp_addresses=self.addresses,
                                    random=HalfRandom(), **{"max_in_flight": 10, **self.options})
        self.consumer.startService()
        self.reactor.advance(0)

    def connect(self, index: int, **reply) -> Peer:
        peer = Peer(self.reactor.tcpClients[index][2])
        peer.handshake(**reply)
        peer.sent()
        return peer

    def rdys(self, *peers):
        return [p.protocol.rdy for p in peers]


class ReadyTests(ConsumerTestCase):
    def test_handshake_identifies_and_subscribes(self):
        peer = Peer(self.reactor.tcpClients[0][2])
        sent = peer.sent()
        self.assertTrue(sent.startswith(b"  V2IDENTIFY\n"))
        settings = json.loads(sent[17:])
        self.assertTrue(settings["feature_negotiation"])
        self.assertTrue(settings["user_agent"].startswith("psd/"))
        self.assertEqual((settings["heartbeat_interval"], settings["msg_timeout"]), (30000, 60000))
        peer.receive(nsqframes.identify_reply())
        self.assertEqual(peer.sent(), b"SUB psd psd\n")
        peer.receive(nsqframes.OK)
        self.assertEqual(peer.sent(), b"RDY 10\n")

    def test_max_in_flight_is_shared_and_redistributed(self):
        first = self.connect(0)
        self.assertEqual(self.rdys(first), [10])
        second = self.connect(1)
        self.assertEqual(self.rdys(first, second), [5, 5])
        self.assertEqual(first.sent(), b"RDY 5\n")
        second.drop()
        self.assertEqual(self.rdys(first), [10])

    def test_never_above_max_rdy_count(self):
        first = self.connect(0, max_rdy_count=3)
        self.assertEqual(self.rdys(first), [3])

    def test_status(self):
        first = self.connect(0)
        first.message(b"0000000000000001")
        self.assertEqual(self.consumer.status(), [
            {"address": "127.0.0.1:4150", "state": "subscribed", "in_flight": 1, "rdy": 10},
            {"address": "127.0.0.1:4250", "state": "disconnected", "in_flight": 0, "rdy": 0},
        ])

    def test_reconnects_after_a_drop(self):
        first = self.connect(0)
        first.drop()
        clients = len(self.reactor.tcpClients)
        self.reactor.advance(0.5)
        self.assertEqual(len(self.reactor.tcpClients), clients)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), clients + 1)


class RotationTests(ConsumerTestCase):
    options = {"max_in_flight": 1}

    def test_more_connections_than_max_in_flight_take_turns(self):
        first, second = self.connect(0), self.connect(1)
        self.assertEqual(self.rdys(first, second), [1, 0])
        self.reactor.advance(5)
        self.assertEqual(self.rdys(first, second), [0, 1])
        self.reactor.advance(5)
        self.assertEqual(self.rdys(first, second), [1, 0])


class ProcessingTests(ConsumerTestCase):
    addresses = ("127.0.0.1:4150",)

    def setUp(self):
        super().setUp()
        self.peer = self.connect(0)

    def test_fin_only_after_the_write_is_acknowledged(self):
        self.peer.message(b"0a1b2c3d4e5f6789")
        [(unit, d)] = self.writer.submitted
        self.assertEqual(unit.parts[0].dedupe_key, "nsq:127.0.0.1:4150:0a1b2c3d4e5f6789")
        self.assertEqual(self.peer.sent(), b"")
        d.callback(UnitResult(1, 0))
        self.assertEqual(self.peer.sent(), b"FIN 0a1b2c3d4e5f6789\n")

    def dead_letter(self):
        sent = self.peer.sent()
        self.assertTrue(sent.startswith(b"PUB psd_dead\n"), sent)
        return json.loads(sent[17:])

    def test_invalid_message_is_dead_lettered_then_finished(self):
        self.peer.message(b"0a1b2c3d4e5f6789", b'{"uid": "x"}')
        record = self.dead_letter()
        self.assertEqual(record["body"], '{"uid": "x"}')
        self.assertIn("uid must be an integer", record["reason"])
        self.assertEqual((record["id"], record["nsqd"], record["attempts"]), ("0a1b2c3d4e5f6789", "127.0.0.1:4150", 1))
        self.assertEqual(self.writer.submitted, [])
        self.peer.receive(nsqframes.OK)
        self.assertEqual(self.peer.sent(), b"FIN 0a1b2c3d4e5f6789\n")

    def test_binary_garbage_is_kept_as_base64(self):
        self.peer.message(b"0a1b2c3d4e5f6789", b"\xff\xfe")
        self.assertEqual(self.dead_letter()["body_base64"], "//4=")

    def test_failed_dead_letter_is_not_finished(self):
        self.peer.message(b"0a1b2c3d4e5f6789", b"nope")
        self.dead_letter()
        self.peer.receive(nsqframes.error(b"E_BAD_MESSAGE PUB failed"))
        self.assertEqual(self.peer.sent(), b"")
        self.assertEqual(self.peer.protocol.in_flight, {b"0a1b2c3d4e5f6789"})

    def test_too_many_attempts_are_dead_lettered(self):
        self.peer.message(b"0a1b2c3d4e5f6789", attempts=21)
        self.assertIn("more than max_attempts 20", self.dead_letter()["reason"])
        self.assertEqual(self.writer.submitted, [])

    def test_rejected_by_store_is_dead_lettered(self):
        self.peer.message(b"0a1b2c3d4e5f6789")
        self.writer.submitted[0][1].errback(RejectedByStore("increment would overflow"))
        self.assertIn("increment would overflow", self.dead_letter()["reason"])

    def test_an_internal_error_is_dead_lettered_not_retried(self):
        """A bug of ours would fail every redelivery alike: no requeue, no backoff of the other messages."""
        self.peer.message(b"0a1b2c3d4e5f6789", attempts=3)
        self.writer.submitted[0][1].errback(ZeroDivisionError())
        self.assertEqual(self.dead_letter()["reason"], "internal error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class BackoffTests(ConsumerTestCase):
    def test_store_outage_requeues_backs_off_and_probes(self):
        first, second = self.connect(0), self.connect(1)
        first.sent()
        first.message(b"0000000000000001")
        first.message(b"0000000000000002", attempts=2)
        self.writer.submitted[0][1].errback(StoreUnavailable("redis down"))
        self.assertEqual(first.sent(), b"RDY 0\nREQ 0000000000000001 1000\n")
        self.assertEqual(self.rdys(first, second), [0, 0])
        self.writer.submitted[1][1].errback(StoreUnavailable("redis down"))
        self.assertEqual(first.sent(), b"REQ 0000000000000002 2000\n")
        # level 1: 1 s plus up to 25% jitter (HalfRandom: 12.5%); later failures do not stack
        self.reactor.advance(1.1)
        self.assertEqual(self.rdys(first, second), [0, 0])
        self.reactor.advance(0.1)
        self.assertEqual(self.rdys(first, second), [1, 1])
        # the probe fails: level 2, twice as long
        first.message(b"0000000000000003")
        self.writer.submitted[2][1].errback(StoreUnavailable("still down"))
        self.assertEqual(self.rdys(first, second), [0, 0])
        self.reactor.advance(2.2)
        self.assertEqual(self.rdys(first, second), [0, 0])
        self.reactor.advance(0.1)
        self.assertEqual(self.rdys(first, second), [1, 1])
        # a connection that arrives while probing gets a probe too, not RDY 0 forever
        second.drop()
        self.reactor.advance(3)
        third = self.connect(len(self.reactor.tcpClients) - 1)
        self.assertEqual(self.rdys(first, third), [1, 1])
        # the probe succeeds: full RDY again
        third.message(b"0000000000000004")
        first.message(b"0000000000000005")
        self.writer.submitted[3][1].callback(UnitResult(1, 0))
        self.assertEqual(self.rdys(first, third), [5, 5])
        self.assertFalse(self.consumer.in_backoff())


class StopTests(ConsumerTestCase):
    addresses = ("127.0.0.1:4150",)
    options = {"stop_timeout": 10.0}

    def test_cls_then_finish_in_flight_then_close(self):
        peer = self.connect(0)
        peer.message(b"0000000000000001")
        stopped = self.consumer.stopService()
        self.assertEqual(peer.sent(), b"CLS\n")
        peer.receive(nsqframes.response(b"CLOSE_WAIT"))
        self.assertNoResult(stopped)
        self.assertFalse(peer.transport.disconnecting)
        self.writer.submitted[0][1].callback(UnitResult(1, 0))
        self.assertEqual(peer.sent(), b"FIN 0000000000000001\n")
        self.assertTrue(peer.transport.disconnecting)
        peer.drop()
        self.successResultOf(stopped)

    def test_writes_still_pending_at_the_deadline_are_requeued(self):
        peer = self.connect(0)
        peer.message(b"0000000000000001")
        stopped = self.consumer.stopService()
        peer.receive(nsqframes.response(b"CLOSE_WAIT"))
        peer.sent()
        self.reactor.advance(10)
        self.assertEqual(peer.sent(), b"REQ 0000000000000001 0\n")
        peer.drop()
        self.successResultOf(stopped)


class LookupdTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.http = FakeHTTP()
        self.consumer = NSQConsumer(self.reactor, FakeWriter(), METRICS, lookupd_http_addresses=(
            "http://127.0.0.1:4161", "127.0.0.1:4261"), http_client=self.http, random=HalfRandom())

    def producers(self, *ports):
        return {"channels": [], "producers": [{"broadcast_address": "127.0.0.1", "tcp_port": p, "http_port": p + 1}
                                              for p in ports]}

    def test_polls_every_lookupd_and_connects_to_new_producers(self):
        self.http.answers = {"http://127.0.0.1:4161": (200, self.producers(4150)),
                             "http://127.0.0.1:4261": (404, {"message": "TOPIC_NOT_FOUND"})}
        self.consumer.startService()
        self.reactor.advance(0)
        self.assertEqual(self.http.requests, ["http://127.0.0.1:4161/lookup?topic=psd",
                                              "http://127.0.0.1:4261/lookup?topic=psd"])
        self.assertEqual([(h, p) for h, p, *_ in self.reactor.tcpClients], [("127.0.0.1", 4150)])
        self.http.answers["http://127.0.0.1:4261"] = (200, self.producers(4150, 4250))
        self.reactor.advance(59.9)
        self.assertEqual(len(self.http.requests), 2)
        self.reactor.advance(0.2)
        self.assertEqual(len(self.http.requests), 4)
        self.assertEqual([(h, p) for h, p, *_ in self.reactor.tcpClients], [("127.0.0.1", 4150), ("127.0.0.1", 4250)])

    def test_no_nsqd_yet_polls_again_soon(self):
        """An nsqd that registers just after psd started is found within seconds, not at the next interval."""
        self.http.answers = {"http://127.0.0.1:4161": (404, {"message": "TOPIC_NOT_FOUND"}),
                             "http://127.0.0.1:4261": (200, self.producers())}
        self.consumer.startService()
        self.reactor.advance(0)
        for delay in (1, 2, 4):
            self.reactor.advance(delay - 0.01)
            self.assertEqual(self.reactor.tcpClients, [])
            polls = len(self.http.requests)
            self.reactor.advance(0.01)
            self.assertEqual(len(self.http.requests), polls + 2)
        self.http.answers["http://127.0.0.1:4161"] = (200, self.producers(4150))
        self.reactor.advance(8)
        self.assertEqual([(h, p) for h, p, *_ in self.reactor.tcpClients], [("127.0.0.1", 4150)])
        polls = len(self.http.requests)
        self.reactor.advance(59.9)  # an nsqd is known: back to the interval
        self.assertEqual(len(self.http.requests), polls)

    def test_producers_gone_and_down_are_forgotten(self):
        self.http.answers = {"http://127.0.0.1:4161": (200, self.producers(4150)),
                             "http://127.0.0.1:4261": (200, self.producers())}
        self.consumer.startService()
        self.reactor.advance(0)
        self.assertEqual([s["address"] for s in self.consumer.status()], ["127.0.0.1:4150"])
        self.http.answers["http://127.0.0.1:4161"] = (500, {})
        self.reactor.advance(61)
        self.assertEqual(len(self.consumer.status()), 1, "a lookupd that failed does not prune")
        self.http.answers["http://127.0.0.1:4161"] = (200, self.producers())
        self.reactor.advance(61)
        self.assertEqual(self.consumer.status(), [])
