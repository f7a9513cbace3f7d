"""The HTTP limits, driven byte by byte on a StringTransport and a Clock."""

from __future__ import annotations

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from psd.web import GuardedSite, RequestGuard


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
