"""``--workers 2``: two psd processes answer on one port, and stop together."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from psd.tap import Options
from tests.redisfixture import RedisServer, free_port
from tests.test_writer import TS

ROOT = Path(__file__).resolve().parent.parent


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class WorkersOptionTests(SynchronousTestCase):
    def test_at_least_one(self):
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--workers", "0"])
        self.assertIn("--workers must be at least 1", str(e))


class TwoWorkersTests(TestCase):
    @defer.inlineCallbacks
    def test_two_processes_answer_on_one_port(self):
        server = RedisServer(self)
        yield server.start()
        port = free_port()
        psd = subprocess.Popen(
            [sys.executable, "-m", "twisted", "psd", "--redis", server.url, "--http", f"tcp:{port}:interface=127.0.0.1",
             "--workers", "2"],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: psd.poll() is None and (psd.kill(), psd.wait()))
        url = f"http://127.0.0.1:{port}/v1/points"
        for _ in range(400):
            try:
                response = yield treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
                yield response.content()
                if response.code == 200 and children(psd.pid):
                    break
            except Exception:
                pass
            yield deferLater(reactor, 0.025, lambda: None)
        workers = children(psd.pid)
        self.assertEqual(len(workers), 1)
        self.addCleanup(lambda: [os.kill(pid, signal.SIGKILL) for pid in workers if Path(f"/proc/{pid}").exists()])

        def writers() -> int:
            listing = server.call("CLIENT", "LIST").decode()
            return listing.count("cmd=evalsha")

        sent = 0
        while writers() < 2 and sent < 400:
            response = yield treq.post(url, data=b'{"uid": 1, "metric": "points", "value": 1, "ts": %d}' % TS,
                                       persistent=False)
            self.assertEqual(response.code, 200)
            yield response.content()
            sent += 1
        self.assertEqual(writers(), 2)
        self.assertEqual(server.call("HGET", "hz:1:0:points:2016", "201603"), b"$%d\r\n%d\r\n" % (len(str(sent)), sent))

        psd.send_signal(signal.SIGTERM)
        for _ in range(400):
            if psd.poll() is not None and not Path(f"/proc/{workers[0]}").exists():
                break
            yield deferLater(reactor, 0.025, lambda: None)
        self.assertIsNotNone(psd.returncode)
        self.assertFalse(Path(f"/proc/{workers[0]}").exists(), "the worker outlived the first process")
