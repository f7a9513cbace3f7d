"""``--workers 2``: two psd processes answer on one port, and stop together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from psd.tap import Options
from twisted.web.resource import Resource
from twisted.web.server import Site

from psd.workers import http_service, reuseport_sockets, tcp_address
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


class WorkersEndpointTests(SynchronousTestCase):
    def test_tcp_endpoints_are_read(self):
        self.assertEqual(tcp_address("tcp:8080"), (socket.AF_INET, "0.0.0.0", 8080, 50))
        self.assertEqual(tcp_address(r"tcp6:port=80:interface=\:\:1:backlog=1024"), (socket.AF_INET6, "::1", 80, 1024))

    def test_other_endpoints_are_refused_at_startup(self):
        e = self.assertRaises(usage.UsageError, Options().parseOptions,
                              ["--workers", "2", "--redis", "redis://127.0.0.1:1/0", "--http", "unix:/tmp/psd.sock"])
        self.assertIn("--workers needs a tcp: or tcp6: endpoint", str(e))
        self.assertRaises(ValueError, tcp_address, "tcp:80:interface=127.0.0.1:extra")

    def test_sockets_share_one_port(self):
        sockets = reuseport_sockets("tcp:0:interface=127.0.0.1", 3)
        self.addCleanup(lambda: [sock.close() for sock in sockets])
        self.assertEqual(len({sock.getsockname() for sock in sockets}), 1)


def established_per_process(pids: list[int], port: int) -> list[int]:
    """How many established connections to ``port`` each process holds (from /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":
            inodes.add(fields[9])
    counts = []
    for pid in pids:
        held = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                held += os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes
            except OSError:
                pass
        counts.append(held)
    return counts


class PortInUseTests(SynchronousTestCase):
    """A port in use stops psd at startup with one line naming the address and the setting."""

    def test_one_process_and_workers(self):
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        endpoint = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        for workers in (1, 2):
            service = http_service(reactor, endpoint, Site(Resource()), workers, None, [])
            e = self.assertRaises(SystemExit, lambda: (service.privilegedStartService(), service.startService()))
            self.assertEqual(str(e), f"psd: cannot listen on {endpoint} ([http] listen or --http): "
                                     f"Address already in use")


class TwoWorkersTests(TestCase):
    @defer.inlineCallbacks
    def test_two_processes_answer_on_one_port(self):
        server = RedisServer(self)
        yield server.start()
        port = free_port()
        log_path = self.mktemp()
        log = open(log_path, "wb")
        self.addCleanup(log.close)
        psd = subprocess.Popen(
            [sys.executable, "-m", "twisted", "--log-format=text", "psd", "--redis", server.url,
             "--http", f"tcp:{port}:interface=127.0.0.1", "--workers", "2"],
            env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=log, stderr=subprocess.STDOUT)
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
        for _ in range(800):
            if writers() >= 2:
                break
            response = yield treq.post(url, data=b'{"uid": 1, "metric": "points", "value": 1, "ts": %d}' % TS,
                                       headers={"Content-Type": "application/json"}, persistent=False)
            yield response.content()
            if response.code == 503:  # the worker accepts on its socket before its store is connected
                continue
            self.assertEqual(response.code, 200)
            sent += 1
        self.assertEqual(writers(), 2)
        self.assertEqual(server.call("HGET", "hz:1:0:points:2016", "201603"), b"$%d\r\n%d\r\n" % (len(str(sent)), sent))

        # a burst of connections is spread over both processes (one shared socket gave one of them ~90%)
        burst = [socket.create_connection(("127.0.0.1", port)) for _ in range(32)]
        self.addCleanup(lambda: [sock.close() for sock in burst])
        for sock in burst:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port)
        for sock in burst:
            self.assertIn(b"200", sock.recv(100))
        counts = established_per_process([psd.pid, *workers], port)
        self.assertEqual(sum(counts), 32, counts)
        self.assertGreaterEqual(min(counts), 4, counts)

        psd.send_signal(signal.SIGTERM)
        for _ in range(400):
            if psd.poll() is not None and not Path(f"/proc/{workers[0]}").exists():
                break
            yield deferLater(reactor, 0.025, lambda: None)
        self.assertIsNotNone(psd.returncode)
        self.assertFalse(Path(f"/proc/{workers[0]}").exists(), "the worker outlived the first process")
        lines = Path(log_path).read_text().splitlines()
        self.assertTrue(any("worker accepting on" in line for line in lines), lines[-20:])
        self.assertEqual([line for line in lines if line.lstrip().startswith("{")], [])  # one format: text
