"""The consumer against real nsqd, nsqlookupd and redis-server.

The oracle: Redis' year buckets must equal the sums of the valid messages
published, exactly (nothing lost, nothing doubled), and every malformed one
must sit in the dead-letter topic.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from psd.keys import Layout
from psd.nsq.consumer import NSQConsumer
from psd.writer import Writer
from tests.nsqfixture import NSQD, NSQLookupd
from tests.redisfixture import RedisServer, started_store

METRICS = frozenset({"points", "steps", "distance", "calories"})
TS = 1458061005  # 2016-03-15 16:56:45 UTC: every point lands in year 2016, month 201603
MALFORMED = [b"{not json", b'{"uid": 1, "metric": "sleep", "value": 1, "ts": 1}', b"[]",
             b'{"command": "delete", "metric": {}}', b"\xff\xfe"]


class Workload:
    """Messages of every accepted shape (some malformed) and the sums they must give."""

    def __init__(self):
        self.points = Counter()  # (uid, metric) -> sum
        self.counts = Counter()  # name -> sum
        self.malformed = 0

    def message(self, i: int) -> bytes:
        uid, value, metric = i % 50, i % 7 + 1, sorted(METRICS)[i % 4]
        shape = i % 6
        if i % 97 == 0:
            self.malformed += 1
            return MALFORMED[i % len(MALFORMED)]
        if shape == 0:
            self.points[uid, metric] += value
            return json.dumps({"uid": uid, "atid": 3, "metric": metric, "value": value, "ts": TS + i % 3600}).encode()
        if shape == 1:
            self.points[uid, metric] += 3 * value
            return json.dumps([{"uid": uid, "metric": metric, "value": value, "ts": TS + k} for k in range(3)]).encode()
        if shape == 2:
            self.points[uid, metric] += value
            return json.dumps({"command": "metric", "metric": {"thing": metric, "uid": uid, "atid": 2,
                                                               "value": value, "ts1": TS, "ts2": TS + 5}}).encode()
        if shape == 3:
            # a set-total on an activity of its own: its first total is all added
            self.points[uid, metric] += 10 * value
            return json.dumps({"command": "metric", "metric": {"thing": metric, "uid": uid, "atid": 2, "aid": i,
                                                               "value": 10 * value, "ts1": TS, "ts2": TS + 9}}).encode()
        if shape == 4:
            self.counts["signups"] += value
            return json.dumps({"command": "count", "count": {"thing": "signups", "value": value, "ts": TS}}).encode()
        self.points[uid, "steps"] += value
        self.points[uid, "points"] += 2
        return json.dumps({"command": "metric", "metric": {"steps": value, "points": 2, "activity_type_id": 4,
                                                           "timestamp": TS, "user_id": uid}}).encode()


class IntegrationTestCase(TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.redis = RedisServer(self)
        yield self.redis.start()
        self.store = yield started_store(self, self.redis, reply_timeout=2.0)
        self.writer = Writer(reactor, self.store, Layout(), window=0.002)
        self.workload = Workload()

    def consumer(self, **options) -> NSQConsumer:
        settings = dict(max_in_flight=500, heartbeat_interval=1.0, msg_timeout=5.0, lookupd_poll_interval=0.5,
                        backoff_initial=0.1, backoff_max=1.0, requeue_delay_max=1.0, reconnect_initial=0.1,
                        reconnect_max=0.5, stop_timeout=5.0)
        settings.update(options)
        consumer = NSQConsumer(reactor, self.writer, METRICS, **settings)
        consumer.startService()
        self.addCleanup(lambda: consumer.running and consumer.stopService())
        return consumer

    @defer.inlineCallbacks
    def nsqd(self, node_id=1, lookupd=None):
        nsqd = NSQD(self, node_id, lookupd)
        yield nsqd.start()
        yield nsqd.create_channel("psd", "psd")
        yield nsqd.create_channel("psd_dead", "check")
        return nsqd

    @defer.inlineCallbacks
    def publish(self, nsqd: NSQD, start: int, count: int, batch: int = 2000):
        for first in range(start, start + count, batch):
            yield nsqd.mpub("psd", [self.workload.message(i) for i in range(first, min(first + batch, start + count))])

    def hget(self, key: str, field: str) -> int:
        reply = self.redis.call("HGET", key, field)
        return int(reply.split(b"\r\n")[1]) if reply.startswith(b"$") and reply != b"$-1\r\n" else 0

    @defer.inlineCallbacks
    def assert_sums(self, *nsqds: NSQD, redelivered: bool = False):
        """Sums exact; dead letters exact too unless messages were redelivered
        (a dead letter published just before its FIN was lost is published again)."""
        for nsqd in nsqds:
            yield nsqd.wait_drained("psd", "psd")
        yield self.writer.whenIdle()
        observed = {key: self.hget(f"hz:{key[0]}:0:{key[1]}:2016", "201603") for key in self.workload.points}
        self.assertEqual(observed, dict(self.workload.points))
        self.assertEqual(self.hget("c:signups:2016", "201603"), self.workload.counts["signups"])
        dead = 0
        for nsqd in nsqds:
            stats = yield nsqd.channel_stats("psd_dead", "check")
            dead += stats["depth"]
        if redelivered:
            self.assertGreaterEqual(dead, self.workload.malformed)
        else:
            self.assertEqual(dead, self.workload.malformed)

    @defer.inlineCallbacks
    def wait_until(self, condition, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("condition not reached")
            yield task.deferLater(reactor, 0.05, lambda: None)


class MixedShapesTests(IntegrationTestCase):
    @defer.inlineCallbacks
    def test_twenty_thousand_mixed_messages(self):
        nsqd = yield self.nsqd()
        yield self.publish(nsqd, 0, 20000)
        consumer = self.consumer(nsqd_tcp_addresses=[nsqd.tcp_address])
        yield self.assert_sums(nsqd)
        self.assertGreater(self.workload.malformed, 100)
        [status] = consumer.status()
        self.assertEqual((status["state"], status["in_flight"], status["rdy"]), ("subscribed", 0, 500))
        yield consumer.stopService()
        self.assertEqual(consumer.status(), [])


class FailureTests(IntegrationTestCase):
    @defer.inlineCallbacks
    def test_nsqd_stopped_mid_stream_and_restarted(self):
        """nsqd persists its queue and in-flight messages on a clean stop; the
        consumer reconnects, and redeliveries of messages already written are
        deduplicated by (nsqd address, message ID)."""
        nsqd = yield self.nsqd()
        yield self.publish(nsqd, 0, 10000)
        consumer = self.consumer(nsqd_tcp_addresses=[nsqd.tcp_address], max_in_flight=100)
        yield self.wait_until(lambda: self.writer.calls > 5)
        nsqd.kill(signal.SIGTERM)
        yield self.wait_until(lambda: consumer.status()[0]["state"] == "disconnected")
        yield nsqd.start()
        yield self.wait_until(lambda: consumer.status()[0]["state"] == "subscribed")
        yield self.publish(nsqd, 10000, 2000)
        yield self.assert_sums(nsqd, redelivered=True)

    @defer.inlineCallbacks
    def test_redis_stopped_mid_stream_and_restarted(self):
        """Writes fail, messages are requeued with backoff, and all are applied
        exactly once when Redis is back (AOF keeps what was applied)."""
        self.redis.args[self.redis.args.index("--appendonly") + 1] = "yes"
        self.redis.args += ["--appendfsync", "always"]
        self.redis.stop()
        yield self.redis.start()
        nsqd = yield self.nsqd()
        yield self.publish(nsqd, 0, 10000)
        consumer = self.consumer(nsqd_tcp_addresses=[nsqd.tcp_address], max_in_flight=100)
        yield self.wait_until(lambda: self.writer.calls > 5)
        self.redis.kill(signal.SIGTERM)
        yield self.wait_until(consumer.in_backoff)
        yield task.deferLater(reactor, 2, lambda: None)
        yield self.redis.start()
        yield self.assert_sums(nsqd, redelivered=True)


class LookupdTests(IntegrationTestCase):
    @defer.inlineCallbacks
    def test_two_nsqd_behind_one_lookupd(self):
        lookupd = NSQLookupd(self)
        yield lookupd.start()
        first = yield self.nsqd(1, lookupd)
        second = yield self.nsqd(2, lookupd)
        consumer = self.consumer(lookupd_http_addresses=[lookupd.http_url])
        yield self.wait_until(lambda: [s["state"] for s in consumer.status()] == ["subscribed"] * 2)
        yield self.publish(first, 0, 5000)
        yield self.publish(second, 5000, 5000)
        yield self.assert_sums(first, second)
        self.assertEqual(sorted(s["address"] for s in consumer.status()),
                         sorted([first.tcp_address, second.tcp_address]))
