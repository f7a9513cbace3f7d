"""Redis going away and coming back is said once each, with the address and the reason."""

from __future__ import annotations

import signal

from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from psd.store import RedisAddress, RedisStore
from psd.tap import StoreService
from tests.redisfixture import RedisServer, free_port
from tests.waiting import poll_until


class StoreServiceLogTests(TestCase):
    def setUp(self):
        self.events = []
        observer = self.events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self, level_name: str) -> list[str]:
        from twisted.logger import formatEvent
        return [formatEvent(e) for e in self.events
                if e.get("log_namespace", "").startswith("psd.tap.StoreService") and e["log_level"].name == level_name]

    @defer.inlineCallbacks
    def test_down_and_back_once_each(self):
        server = RedisServer(self)
        yield server.start()
        service = StoreService(reactor, RedisStore(RedisAddress(server.url), reply_timeout=1), watch_every=0.1)
        service.startService()
        self.addCleanup(service.stopService)
        yield poll_until(lambda: any("scripts loaded" in line for line in self.lines("info")), "the store")
        server.kill(signal.SIGKILL)
        yield poll_until(lambda: self.lines("warn"), "a warning")
        [warning] = self.lines("warn")
        self.assertIn(f"Redis at {server.url} is unreachable: ", warning)
        self.assertIn("refused", warning)
        yield server.start()
        yield poll_until(lambda: any("reachable again" in line for line in self.lines("info")), "the info line")
        self.assertEqual(len(self.lines("warn")), 1)

    @defer.inlineCallbacks
    def test_unreachable_at_start_is_one_warning(self):
        url = f"redis://127.0.0.1:{free_port()}/0"
        service = StoreService(reactor, RedisStore(RedisAddress(url), reply_timeout=1), warn_after=0.3)
        service.startService()
        self.addCleanup(service.stopService)
        yield poll_until(lambda: self.lines("warn"), "a warning")
        yield task.deferLater(reactor, 1.0, lambda: None)
        [warning] = self.lines("warn")
        self.assertIn(f"Redis at {url} is unreachable: ", warning)
        self.assertEqual([line for line in self.lines("debug") if "not ready" in line], [])
