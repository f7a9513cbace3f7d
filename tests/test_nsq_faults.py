"""psd killed or stopped while NSQ messages flow: 0 lost, 0 doubled, against the oracle.

psd runs as the real `twistd psd` process on real nsqd and redis-server.
NSQ delivers at least once; the write script's message-id keys make the
effect exactly once.
"""

from __future__ import annotations

import json
import os
import signal

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.nsqfixture import NSQD
from tests.oracle import assert_exact
from tests.processfixture import PsdProcess
from tests.redisfixture import RedisServer, free_port, started_store

TS = 1458061005


def messages(count: int) -> list[dict]:
    return [{"uid": i % 97, "atid": i % 3, "metric": "points", "value": i % 7 + 1, "ts": TS + (i * 37) % 86400}
            for i in range(count)]


class NSQFaultTestCase(TestCase):
    timeout = 600
    extra_config = ""

    @defer.inlineCallbacks
    def setUp(self):
        self.redis = RedisServer(self, appendonly=True)
        yield self.redis.start()
        self.store = yield started_store(self, self.redis)
        self.nsqd = NSQD(self)
        yield self.nsqd.start()
        yield self.nsqd.create_channel("psd", "psd")
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config = os.path.join(workdir, "psd.toml")
        with open(config, "w") as f:
            f.write(f'[nsq]\nnsqd_tcp_addresses = ["{self.nsqd.tcp_address}"]\nmsg_timeout = 3.0\n'
                    "heartbeat_interval = 1.0\nbackoff_max = 1.0\nmax_in_flight = 500\nstop_timeout = 20.0\n"
                    + self.extra_config)
        self.psd = PsdProcess(self, workdir, free_port(), "--config", config, "--redis", self.redis.url)

    @defer.inlineCallbacks
    def publish(self, points: list[dict], batch: int = 5000):
        for first in range(0, len(points), batch):
            yield self.nsqd.mpub("psd", [json.dumps(p).encode() for p in points[first:first + batch]])

    @defer.inlineCallbacks
    def check_oracle(self, points: list[dict], name: str, **extra):
        stats = yield self.nsqd.wait_drained("psd", "psd", timeout=300)
        yield assert_exact(self, self.store, points, name, f"{len(points)} messages, {extra}, nsqd requeued "
                           f"{stats['requeue_count']}, timed out {stats['timeout_count']}")
        return stats

    def processed(self):
        return self.nsqd.channel_stats("psd", "psd")


#: The soak variant: PSD_SOAK_MESSAGES=1000000 make test (or trial tests.test_nsq_faults.KillTests)
KILL_TEST_MESSAGES = int(os.environ.get("PSD_SOAK_MESSAGES", "100000"))


class KillTests(NSQFaultTestCase):
    timeout = max(600, KILL_TEST_MESSAGES // 200)

    @defer.inlineCallbacks
    def test_kill_9_every_few_seconds_while_100k_messages_flow(self):
        points = messages(KILL_TEST_MESSAGES)
        self.psd.start()
        publishing = self.publish(points)
        kills, peak_rss = 0, 0
        while True:
            yield task.deferLater(reactor, 2.0, lambda: None)
            peak_rss = max(peak_rss, self.psd.rss())
            stats = yield self.processed()
            if publishing.called and not (stats["depth"] or stats["in_flight_count"]):
                break
            self.psd.kill(signal.SIGKILL)
            kills += 1
            self.psd.start(healthy=False)
        yield publishing
        self.assertGreaterEqual(kills, 3)
        stats = yield self.check_oracle(points, "psd kill -9 under NSQ", kills=kills,
                                        peak_rss_mb=round(peak_rss / 2**20, 1))
        self.assertGreater(stats["timeout_count"] + stats["requeue_count"], 0)


class GracefulStopTests(NSQFaultTestCase):
    @defer.inlineCallbacks
    def test_sigterm_under_load_drains(self):
        points = messages(40_000)
        self.psd.start()
        yield self.publish(points)
        for _ in range(600):  # until psd has taken a few thousand: stopped under load, whatever its speed
            before = yield self.processed()
            if before["depth"] < len(points) - 4000:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertGreater(before["depth"], 0)
        self.psd.kill(signal.SIGTERM)
        after = yield self.processed()
        self.psd.start()
        stats = yield self.check_oracle(points, "psd SIGTERM under NSQ")
        self.assertEqual((after["in_flight_count"], stats["timeout_count"]), (0, 0))


class SlowWriteTests(NSQFaultTestCase):
    extra_config = "[redis]\nreply_timeout = 20.0\n"

    @defer.inlineCallbacks
    def test_writes_slower_than_msg_timeout_count_once(self):
        """Redis stalls longer than msg_timeout: nsqd redelivers what psd is still writing; counted once."""
        points = messages(20_000)
        self.psd.start()
        yield self.publish(points)
        yield task.deferLater(reactor, 0.5, lambda: None)
        self.redis.kill(signal.SIGSTOP)
        yield task.deferLater(reactor, 7.0, lambda: None)
        self.redis.kill(signal.SIGCONT)
        stats = yield self.check_oracle(points, "writes slower than msg_timeout")
        self.assertGreater(stats["timeout_count"], 0)


class LateSetTotalTests(NSQFaultTestCase):
    """An older total redelivered after a newer one went through: the sums are those in time order."""

    def second_field(self, hash_key: str, field: str) -> bytes:
        return self.redis.call("HGET", hash_key, field)

    @defer.inlineCallbacks
    def test_an_older_total_redelivered_after_a_newer_one(self):
        older = {"command": "metric", "metric": {"thing": "steps", "uid": 1, "atid": 3, "aid": 55,
                                                 "value": 4000, "ts1": TS, "ts2": TS}}
        newer = {**older, "metric": {**older["metric"], "value": 4500, "ts2": TS + 120}}
        self.psd.start()
        # Redis down (killed, not stopped: a stopped Redis would still run the calls psd gave up on):
        # the older total's deliveries fail and are requeued, each later than the one before
        self.redis.kill(signal.SIGKILL)
        yield self.publish([older])
        while (yield self.processed()).get("requeue_count", 0) < 4:  # its next try is >= 8 s away
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield self.redis.start()
        yield self.publish([newer])
        at_older, at_newer = ("hz:1:3:steps:201603151656", "20160315165645"), ("hz:1:3:steps:201603151658",
                                                                                 "20160315165845")
        while self.second_field(*at_newer) == b"$-1\r\n":
            yield task.deferLater(reactor, 0.05, lambda: None)
        # the newer total went first: it alone was applied, from 0
        self.assertEqual((self.second_field(*at_older), self.second_field(*at_newer)), (b"$-1\r\n", b"$4\r\n4500\r\n"))
        yield self.nsqd.wait_drained("psd", "psd", timeout=60)
        self.assertEqual((self.second_field(*at_older), self.second_field(*at_newer)), (b"$4\r\n4000\r\n", b"$3\r\n500\r\n"))
        self.assertEqual(self.redis.call("HGET", "hz:1:0:steps:2016", "201603"), b"$4\r\n4500\r\n")
