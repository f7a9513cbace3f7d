"""psd itself killed: `kill -9` under HTTP load, restarted each time; SIGTERM drains."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.oracle import assert_exact, random_requests, run_clients
from tests.processfixture import PsdProcess
from tests.psdfixture import HttpClient
from tests.redisfixture import RedisServer, free_port, started_store


class PsdCrashTests(TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        self.server = RedisServer(self)
        yield self.server.start()
        self.store = yield started_store(self, self.server)
        workdir = self.mktemp()
        os.makedirs(workdir)
        self.psd = PsdProcess(self, workdir, free_port(), "--redis", self.server.url)
        self.psd.start()
        self.client = HttpClient(f"http://127.0.0.1:{self.psd.port}")
        self.stats = Counter()

    def check_oracle(self, requests, name: str):
        return assert_exact(self, self.store, [p for _, ps in requests for p in ps], name,
                            f"{len(requests)} requests, answers {dict(self.stats)}")

    @defer.inlineCallbacks
    def test_kill_9_every_second_under_load(self):
        """Clients retry with their idempotency keys until acknowledged: exact sums after 6 kills."""
        requests = random_requests(random.Random(6), 1200, 20)
        load = run_clients(self.client, requests, 8, self.stats)
        for _ in range(6):
            yield task.deferLater(reactor, 1.0, lambda: None)
            self.psd.kill(signal.SIGKILL)
            self.psd.start(healthy=False)
        yield load
        self.assertGreater(self.stats["connection error"], 0)
        yield self.check_oracle(requests, "psd kill -9 x6")

    @defer.inlineCallbacks
    def test_sigterm_answers_what_it_accepted(self):
        """SIGTERM under load: every request psd answered 200 is in Redis; the rest are retried."""
        requests = random_requests(random.Random(7), 600, 20)
        load = run_clients(self.client, requests, 8, self.stats)
        yield task.deferLater(reactor, 1.0, lambda: None)
        self.psd.kill(signal.SIGTERM)
        self.psd.start(healthy=False)
        yield load
        yield self.check_oracle(requests, "psd SIGTERM")
