"""The HTTP limits, driven byte by byte on a StringTransport and a Clock."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from psd import web
from psd.web import GuardedSite, RequestGuard, loopback_hosts


class Echo(Resource):
    isLeaf = True

    def render_POST(self, request):
        return b"got %d" % len(request.content.read())

    render_GET = render_POST


class LimitTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.site = GuardedSite(Echo(), self.reactor, max_body_bytes=1000, request_timeout=5, max_connections=2)

    def connect(self):
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_body_within_the_cap(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 1000)
        self.assertIn(b"got 1000", transport.value())

    def test_declared_length_over_the_cap_is_refused_before_the_body(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n")
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        self.assertEqual(json.loads(response.split(b"\r\n\r\n", 1)[1]), {"error": "request body too large"})
        self.assertTrue(transport.disconnecting)
        channel.dataReceived(b"a" * 100000)
        self.assertNotIn(b"got", transport.value())

    def test_chunked_body_over_the_cap(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            channel.dataReceived(b"190\r\n" + b"a" * 400 + b"\r\n")
        channel.dataReceived(b"0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"got", transport.value())

    def test_slow_request_hits_the_deadline(self):
        channel, transport = self.connect()
        channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\n")
        for _ in range(4):
            self.reactor.advance(1)
            channel.dataReceived(b"X-Slow: 1\r\n")  # every byte resets the idle timeout, not this deadline
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(1.01)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))

    def test_connection_that_never_speaks_is_closed(self):
        channel, transport = self.connect()
        self.reactor.advance(5)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_keep_alive_requests_each_get_the_full_deadline(self):
        channel, transport = self.connect()
        for _ in range(3):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            self.reactor.advance(4)
        self.assertEqual(transport.value().count(b"got 0"), 3)
        self.assertFalse(transport.disconnecting)

    def test_connection_cap(self):
        first, _ = self.connect(), self.connect()
        self.assertIsNone(self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555)))
        first[0].connectionLost(None)
        self.assertIsNotNone(self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555)))


class AddressCacheTests(SynchronousTestCase):
    def test_the_local_address_is_asked_once_per_connection(self):
        """twisted.web asks on every request; the channel asks its transport once."""
        site = GuardedSite(Echo(), MemoryReactorClock(), max_body_bytes=1000, request_timeout=5, max_connections=2)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport()
        asked = []
        transport.getHost = lambda: asked.append(1) or IPv4Address("TCP", "127.0.0.1", 1155)
        channel.makeConnection(transport)
        for _ in range(3):
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"got 0"), 3)
        self.assertEqual(len(asked), 1)
        self.assertFalse(channel.isSecure())


class PathTests(SynchronousTestCase):
    def test_a_path_that_is_not_utf8_is_a_json_400(self):
        site = GuardedSite(RequestGuard(Echo()), MemoryReactorClock(), max_body_bytes=10,
                           request_timeout=5, max_connections=9)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /v1/%ff HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 400 "), head)
        self.assertIn(b"Content-Type: application/json", head)
        self.assertIn(b"the path must be UTF-8", body)


class Status(Resource):
    """Answers with the status code given as the path: /422."""

    isLeaf = True

    def render_GET(self, request):
        request.setResponseCode(int(request.path[1:]))
        return b"{}"


class HalfClosingTransport(StringTransport):
    """A TCP transport's half-close (StringTransport has none)."""

    write_closed = aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        super().abortConnection()


class SlowReader(StringTransport):
    """A transport that, like a TCP socket's, pauses its producer once unsent output passes ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.paused = False

    def write(self, data):
        super().write(data)
        if len(self.value()) > self.limit and not self.paused and self.producer is not None:
            self.paused = True
            self.producer.pauseProducing()

    def drain(self) -> bytes:
        """The client reads everything sent so far."""
        sent = self.value()
        self.clear()
        if self.paused:
            self.paused = False
            self.producer.resumeProducing()
        return sent


class ChannelTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.site = GuardedSite(Status(), self.reactor, max_body_bytes=1000, request_timeout=5, max_connections=50,
                                max_connections_per_address=3, first_byte_timeout=1)

    def connect(self, transport=None, host="127.0.0.1"):
        channel = self.site.buildProtocol(IPv4Address("TCP", host, 5555))
        transport = transport or StringTransport()
        channel.makeConnection(transport)
        return channel, transport

    def test_422_has_its_reason_phrase(self):
        channel, transport = self.connect()
        channel.dataReceived(b"GET /422 HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 422 Unprocessable Entity\r\n"), transport.value())

    def test_long_request_line_is_414_and_long_header_line_431(self):
        for head, expected in ((b"GET /" + b"a" * 17000, b"HTTP/1.1 414 URI Too Long\r\n"),
                               (b"GET / HTTP/1.1\r\nX: " + b"a" * 17000, b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                               (b"GET / HTTP/1.1\r\n" + (b"X: " + b"a" * 40 + b"\r\n") * 400,
                                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                               (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 700, b"HTTP/1.1 431 Request Header Fields Too Large\r\n")):
            channel, transport = self.connect()
            channel.dataReceived(head)
            answer = transport.value()
            self.assertTrue(answer.startswith(expected), answer[:80])
            self.assertRegex(json.loads(answer.partition(b"\r\n\r\n")[2])["error"], "longer than|more than")
            channel.connectionLost(None)

    def test_an_early_answer_is_followed_by_a_lingering_close(self):
        """The 408 of a slow body is sent, the write side closed, input drained: no reset that loses the 408."""
        channel, transport = self.connect(HalfClosingTransport())
        channel.dataReceived(b"POST /200 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        self.reactor.advance(5)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertEqual((transport.write_closed, transport.aborted), (True, False))
        channel.dataReceived(b"d" * 50)  # still read, and dropped
        self.reactor.advance(web.LINGER_SECONDS)
        self.assertTrue(transport.aborted)

    def test_a_connection_that_never_speaks_is_cut_sooner(self):
        channel, transport = self.connect()
        self.reactor.advance(0.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)
        talker, talker_transport = self.connect()
        talker.dataReceived(b"GET /200 HTTP/1.1\r\n")
        self.reactor.advance(4.9)  # once it spoke, the request deadline applies
        self.assertFalse(talker_transport.disconnecting)

    def test_per_address_cap_and_rate_limited_refusal_log(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        first = [self.connect() for _ in range(3)]
        for _ in range(100):
            self.assertIsNone(self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555)))
        self.assertIsNotNone(self.connect(host="10.0.0.2")[0])  # another address still gets in
        refusals = [e for e in events if e.get("log_namespace") == "psd.web" and "refused" in e["log_format"]]
        self.assertEqual(len(refusals), 1)
        self.reactor.advance(web.REFUSAL_LOG_INTERVAL)
        self.assertIsNone(self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555)))
        refusals = [e for e in events if e.get("log_namespace") == "psd.web" and "refused" in e["log_format"]]
        self.assertEqual([e["refused"] for e in refusals], [1, 100])
        first[0][0].connectionLost(None)
        self.assertIsNotNone(self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555)))

    def test_pipelined_requests_wait_while_the_client_does_not_read(self):
        channel, transport = self.connect(SlowReader(limit=2000))
        channel.dataReceived(b"GET /200 HTTP/1.1\r\nHost: x\r\n\r\n" * 5000)
        answered = transport.value().count(b"HTTP/1.1 200")
        self.assertLess(answered, 100)  # the output stopped growing at the transport's limit, not at 5,000 answers
        self.assertEqual(transport.producerState, "paused")  # and nothing more is read
        total = 0
        for _ in range(5000):
            if total == 5000:
                break
            total += transport.drain().count(b"HTTP/1.1 200")
        self.assertEqual(total, 5000)

    def test_a_client_that_never_reads_its_answers_is_cut_off(self):
        channel, transport = self.connect(SlowReader(limit=100))
        channel.dataReceived(b"GET /200 HTTP/1.1\r\nHost: x\r\n\r\n" * 10)
        self.reactor.advance(5)
        self.assertTrue(transport.disconnecting)


class HostTests(SynchronousTestCase):
    def answer(self, allowed, host_header: bytes) -> bytes:
        site = GuardedSite(RequestGuard(Echo(), allowed), MemoryReactorClock(), max_body_bytes=10,
                           request_timeout=5, max_connections=9)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET / HTTP/1.1\r\n" + host_header + b"\r\n")
        return transport.value()

    def test_loopback_listener_answers_only_its_own_names(self):
        allowed = loopback_hosts("127.0.0.1", 1155)
        for good in (b"localhost:1155", b"127.0.0.1:1155", b"[::1]:1155", b"LocalHost:1155"):
            self.assertIn(b"got 0", self.answer(allowed, b"Host: " + good + b"\r\n"), good)
        self.assertIn(b"got 0", self.answer(allowed, b""))  # HTTP/1.0 style, no Host: not a browser
        for bad in (b"evil.example:1155", b"localhost:80", b"127.0.0.1"):
            answer = self.answer(allowed, b"Host: " + bad + b"\r\n")
            self.assertTrue(answer.startswith(b"HTTP/1.1 421 Misdirected Request"), answer)
            self.assertNotIn(bad, answer)

    def test_which_listeners_check(self):
        self.assertIsNone(loopback_hosts("0.0.0.0", 1155))
        self.assertIsNone(loopback_hosts("127.0.0.1", 0))
        self.assertIn("localhost", loopback_hosts("::1", 80))
        self.assertIn(b"got 0", self.answer(None, b"Host: anything\r\n"))
