"""Hostile HTTP clients against a real psd: slow connections, huge bodies, tokens, internal errors."""

from __future__ import annotations

import json
import socket

from treq.testing import StubTreq
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from psd.api import API
from tests.psdfixture import started_psd
from tests.redisfixture import RedisServer

POINT = {"uid": 1, "metric": "points", "value": 1, "ts": 1458061005}


class SlowClient(Protocol):
    """Sends one header byte now and then, never finishing its request."""

    def connectionMade(self):
        self.transport.write(b"POST /v1/points HTTP/1.1\r\nHost: x\r\n")
        self.factory.open.append(self)

    def connectionLost(self, reason):
        self.factory.open.remove(self)
        self.factory.closed += 1


class SlowFactory(ClientFactory):
    protocol = SlowClient

    def __init__(self):
        self.open, self.closed, self.failed = [], 0, 0

    def clientConnectionFailed(self, connector, reason):
        self.failed += 1


class LiveHardeningTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        self.server = RedisServer(self)
        yield self.server.start()
        self.token_file = self.mktemp()
        with open(self.token_file, "w") as f:
            f.write("s3cret\n")
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'[http]\nrequest_timeout = 3.0\nmax_connections_per_address = 4096\ntoken_file = "{self.token_file}"\nmax_body_bytes = 100000\n')
        # a listen backlog that takes a burst of 2,000 connects without dropping SYNs
        self.psd = yield started_psd(self, self.server, "--config", config, backlog=4096)
        self.auth = {"Authorization": "Bearer s3cret"}

    @defer.inlineCallbacks
    def test_two_thousand_slow_connections(self):
        """2,000 slowloris connections: normal requests are still answered, and the slow ones are cut off."""
        port = int(self.psd.base.rsplit(":", 1)[1])
        factory = SlowFactory()
        for _ in range(2000):
            reactor.connectTCP("127.0.0.1", port, factory)
        self.addCleanup(lambda: [c.transport.abortConnection() for c in list(factory.open)])
        for _ in range(400):  # a burst of SYNs overflows the listen backlog: some are retried by the kernel
            if len(factory.open) + factory.closed + factory.failed == 2000:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        drip = task.LoopingCall(lambda: [c.transport.write(b"X: y\r\n") for c in factory.open])
        drip.start(0.5)
        self.addCleanup(lambda: drip.running and drip.stop())
        for _ in range(5):
            status, body, _ = yield self.psd.post("/v1/points", POINT, headers=self.auth)
            self.assertEqual(status, 200)
            yield task.deferLater(reactor, 0.2, lambda: None)
        for _ in range(400):  # each connection's deadline runs from its own start
            if factory.closed == 2000:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        print(f"\n[slowloris] {factory.closed} of 2000 slow connections closed by psd after the 3 s deadline")
        self.assertEqual((factory.closed, factory.failed), (2000, 0))
        status, _, _ = yield self.psd.get("/health")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_body_caps(self):
        status, body, _ = yield self.psd.post("/v1/points", raw=b"[" + b" " * 200000 + b"]", headers=self.auth)
        self.assertEqual((status, body), (413, {"error": "request body too large"}))
        port = int(self.psd.base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"POST /v1/points HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n")
            s.settimeout(5)
            answer = yield task.deferLater(reactor, 0.2, s.recv, 4096)
        self.assertTrue(answer.startswith(b"HTTP/1.1 413 "), answer)

    @defer.inlineCallbacks
    def test_write_token(self):
        status, body, response = yield self.psd.post("/v1/points", POINT)
        self.assertEqual((status, body), (401, {"error": "a valid bearer token is required"}))
        status, body, _ = yield self.psd.post("/v1/points", POINT, headers={"Authorization": "Bearer nope"})
        self.assertEqual(status, 401)
        status, body, _ = yield self.psd.post("/v1/points", POINT, headers=self.auth)
        self.assertEqual(status, 200)
        status, body, _ = yield self.psd.post("/v1/sum", {"uids": [1], "metrics": ["points"], "from": 0, "to": 2**33 - 1})
        self.assertEqual((status, body["results"]), (200, {"1": {"points": 1}}))


class BrokenReader:
    def sums(self, requests):
        raise ZeroDivisionError("a bug deep inside")

    def user_sums(self, users, metrics, start, end, offsets=None):
        raise ZeroDivisionError("a bug deep inside")


class InternalErrorTests(SynchronousTestCase):
    def test_no_traceback_in_the_answer(self):
        api = API(writer=None, reader=BrokenReader(), store=None, metrics=frozenset({"points"}))
        client = StubTreq(api.resource())
        response = self.successResultOf(client.get("http://psd/v1/sum?uids=1&metrics=points&from=1&to=2"))
        self.assertEqual(response.code, 500)
        content = self.successResultOf(response.content())
        self.assertEqual(json.loads(content), {"error": "internal error"})
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
