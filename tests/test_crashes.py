"""psd itself killed: `kill -9` under HTTP load, restarted each time; SIGTERM drains."""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
from collections import Counter

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from psd.store import RedisAddress, RedisStore
from tests.oracle import assert_exact, random_requests, run_clients
from tests.processfixture import PsdProcess
from tests.psdfixture import HttpClient
from tests.redisfixture import RedisServer, free_port, started_store
from tests.waiting import poll_until


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


def servers_on(data_dir: str) -> list[int]:
    """Pids of the servers running in ``data_dir`` (their working directory: servers rewrite their titles)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == data_dir and "server" in os.readlink(f"/proc/{entry}/exe"):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


class EmbeddedStoreCrashTests(TestCase):
    """psd on its embedded store, killed with -9 under load: its server dies with it."""

    timeout = 240

    @defer.inlineCallbacks
    def test_kill_9_leaves_one_server_and_every_acknowledged_point(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        data_dir = tempfile.mkdtemp(prefix="psd-crash-")  # short: unix socket paths hold 107 bytes
        self.addCleanup(shutil.rmtree, data_dir, True)
        self.addCleanup(lambda: [os.kill(pid, signal.SIGKILL) for pid in servers_on(data_dir)])
        psd = PsdProcess(self, workdir, free_port(), "--data-dir", data_dir)
        psd.start()
        stats = Counter()
        requests = random_requests(random.Random(19), 1500, 20)
        load = run_clients(HttpClient(f"http://127.0.0.1:{psd.port}"), requests, 4, stats)
        for _ in range(3):
            yield task.deferLater(reactor, 1.0, lambda: None)
            psd.kill(signal.SIGKILL)
            yield poll_until(lambda: not servers_on(data_dir), "the embedded server to follow psd")
            psd.start(healthy=False)
        yield load
        self.assertGreater(stats["connection error"], 0, stats)
        self.assertEqual(len(servers_on(data_dir)), 1)
        store = RedisStore(RedisAddress("unix://" + os.path.join(data_dir, "redis.sock")), reply_timeout=5)
        store.start()
        self.addCleanup(store.stop)
        yield poll_until(store.connected, "a connection to the embedded store")
        yield assert_exact(self, store, [p for _, ps in requests for p in ps], "embedded store, psd kill -9 x3",
                           f"answers {dict(stats)}")
