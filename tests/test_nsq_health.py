"""/health follows the NSQ connections when NSQ is configured."""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from psd.tap import Options, makeService
from tests.nsqfixture import NSQD
from tests.psdfixture import HttpClient
from tests.redisfixture import RedisServer, free_port, started_store


class NSQHealthTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_health_is_503_until_an_nsqd_is_subscribed(self):
        redis = RedisServer(self)
        yield redis.start()
        yield started_store(self, redis)
        nsqd = NSQD(self)
        port = free_port()
        options = Options()
        options.parseOptions(["--redis", redis.url, "--http", f"tcp:{port}:interface=127.0.0.1",
                              "--nsqd", nsqd.tcp_address])
        service = makeService(options, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        client = HttpClient(f"http://127.0.0.1:{port}")
        status, body = None, None
        for _ in range(100):
            try:
                status, body, _ = yield client.get("/health")
                if body and body.get("redis") == "ok":
                    break
            except Exception:
                pass
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((status, body["status"]), (503, "unavailable"))
        self.assertEqual(body["nsq"], [{"address": nsqd.tcp_address, "state": "disconnected", "in_flight": 0, "rdy": 0}])

        yield nsqd.start()
        yield nsqd.create_channel("psd", "psd")
        for _ in range(200):
            status, body, _ = yield client.get("/health")
            if status == 200:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(status, 200)
        self.assertEqual(body["nsq"][0]["state"], "subscribed")
