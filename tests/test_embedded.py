"""The embedded store: a real server process on a unix socket, supervised and stopped."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from psd.embedded import EmbeddedRedis
from psd.store import RedisAddress, RedisStore


class EmbeddedRedisTests(TestCase):
    @defer.inlineCallbacks
    def wait_for_ping(self, store: RedisStore):
        for _ in range(400):
            try:
                reply = yield store.ping()
                return reply
            except Exception:
                yield task.deferLater(reactor, 0.025, lambda: None)
        self.fail("embedded store never answered")

    @defer.inlineCallbacks
    def test_starts_restarts_and_stops(self):
        data_dir = tempfile.mkdtemp(prefix="psd-embedded-")  # short: unix socket paths hold 107 bytes
        self.addCleanup(shutil.rmtree, data_dir, True)
        embedded = EmbeddedRedis(reactor, data_dir, max_backoff=0.2)
        embedded.startService()
        self.addCleanup(embedded.stopService)
        store = RedisStore(RedisAddress(embedded.url), reply_timeout=2)
        store.start()
        self.addCleanup(store.stop)
        self.assertEqual((yield self.wait_for_ping(store)), "PONG")
        self.assertEqual(oct(os.stat(embedded.data_dir).st_mode & 0o777), "0o700")
        info = yield store.command("CONFIG", "GET", "port")
        self.assertEqual(info, ["port", "0"])  # no TCP listener at all
        yield store.command("HSET", "k", "f", "1")

        os.kill(embedded._process.pid, 9)  # it dies: psd starts it again, the data is in the AOF
        for _ in range(400):
            if embedded._process is not None and embedded._failures:
                break
            yield task.deferLater(reactor, 0.025, lambda: None)
        self.assertEqual((yield self.wait_for_ping(store)), "PONG")
        self.assertEqual((yield store.command("HGET", "k", "f")), "1")

        yield store.stop()
        yield embedded.stopService()
        self.assertIsNone(embedded._process)
        self.assertFalse(os.path.exists(embedded.socket_path))

    def test_too_long_a_data_dir_is_refused_clearly(self):
        embedded = EmbeddedRedis(reactor, "/tmp/" + "d" * 120)
        e = self.assertRaises(ValueError, embedded.startService)
        self.assertIn("too long for a unix socket path", str(e))
        self.assertFalse(embedded.running)
