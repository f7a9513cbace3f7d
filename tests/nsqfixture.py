"""Real nsqd and nsqlookupd v1.3.0 for integration tests: free ports, temp dirs, always stopped.

The binaries come from ``make nsq`` (mk/nsq.mk), built here if missing.
Cleanup is registered before readiness is awaited, so a daemon that never
becomes ready is still killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from treq.client import HTTPClient
from twisted.internet import defer, reactor, ssl, task
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from tests.redisfixture import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".tools" / "bin"
# No persistent connections: trial wants a clean reactor after each test.
treq = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


def https_client(ca_file: str) -> HTTPClient:
    """An HTTPS client that trusts only the CA in ``ca_file``."""
    with open(ca_file, "rb") as f:
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(f.read()))
    return HTTPClient(Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False)))


def nsq_binary(name: str) -> str:
    path = BIN / name
    if not path.exists():
        subprocess.run(["make", "-s", "-C", str(ROOT), "nsq"], check=True)
    return str(path)


class _Daemon:
    """A process with an HTTP /ping; restartable on the same ports and data."""

    def __init__(self, testcase, name: str):
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir)
        self.binary = nsq_binary(name)
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.process = None
        self.http = treq
        testcase.addCleanup(self.stop)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    def args(self) -> list:
        raise NotImplementedError

    def start(self) -> defer.Deferred:
        log = open(os.path.join(self.dir, "daemon.log"), "ab")
        self.process = subprocess.Popen(self.args(), stdout=log, stderr=log, cwd=self.dir)
        log.close()
        return self.wait_ready()

    @defer.inlineCallbacks
    def wait_ready(self, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = yield self.http.get(f"{self.http_url}/ping", timeout=1)
                yield response.content()
                if response.code == 200:
                    return
            except Exception:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.binary} on {self.http_url} did not become ready; see {self.dir}")
            yield task.deferLater(reactor, 0.05, lambda: None)

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)

    def stop(self) -> None:
        self.kill()
        self.process = None

    @defer.inlineCallbacks
    def get_json(self, path: str):
        response = yield self.http.get(self.http_url + path, timeout=5)
        body = yield response.content()
        return response.code, json.loads(body) if body else None


class NSQLookupd(_Daemon):
    def __init__(self, testcase):
        super().__init__(testcase, "nsqlookupd")

    def args(self) -> list:
        return [self.binary, f"--tcp-address=127.0.0.1:{self.tcp_port}",
                f"--http-address=127.0.0.1:{self.http_port}", "--broadcast-address=127.0.0.1"]


class NSQD(_Daemon):
    """nsqd; given ``tls=(ca_file, cert_file, key_file)`` it requires TLS on TCP and HTTP
    (``--tls-required=true``) and the fixture talks to its HTTPS port, or only on TCP with
    ``tls_required="tcp-https"`` (then the fixture keeps to plain HTTP: nsqd asks HTTPS
    clients for a certificate too when it requires client certificates)."""

    def __init__(self, testcase, node_id: int = 1, lookupd: NSQLookupd = None, tls: tuple = None,
                 tls_required: str = "true", extra_args: tuple = ()):
        super().__init__(testcase, "nsqd")
        self.node_id = node_id
        self.lookupd = lookupd
        self.tls = tls
        self.tls_required = tls_required
        self.extra_args = tuple(extra_args)
        self.https_port = free_port()
        if tls is not None and tls_required == "true":
            self.https_port = free_port()
            self.http = https_client(tls[0])

    @property
    def http_url(self) -> str:
        if self.tls is None or self.tls_required != "true":
            return super().http_url
        return f"https://127.0.0.1:{self.https_port}"

    def args(self) -> list:
        args = [self.binary, f"--data-path={self.dir}", f"--tcp-address=127.0.0.1:{self.tcp_port}",
                f"--http-address=127.0.0.1:{self.http_port}", "--broadcast-address=127.0.0.1",
                f"--node-id={self.node_id}", "--msg-timeout=5s", "--mem-queue-size=100000"]
        if self.lookupd is not None:
            args.append(f"--lookupd-tcp-address=127.0.0.1:{self.lookupd.tcp_port}")
        if self.tls is not None:
            ca_file, cert_file, key_file = self.tls
            args += [f"--tls-cert={cert_file}", f"--tls-key={key_file}", f"--tls-root-ca-file={ca_file}",
                     f"--tls-required={self.tls_required}", f"--https-address=127.0.0.1:{self.https_port}"]
        return args + list(self.extra_args)

    @defer.inlineCallbacks
    def post(self, path: str, body: bytes = b""):
        response = yield self.http.post(self.http_url + path, data=body, timeout=30)
        content = yield response.content()
        if response.code != 200:
            raise RuntimeError(f"nsqd {path}: HTTP {response.code} {content!r}")
        return content

    def mpub(self, topic: str, bodies: list) -> defer.Deferred:
        """Publish many bodies at once (newline-separated, so no newline inside one)."""
        if any(b"\n" in body for body in bodies):
            raise ValueError("mpub bodies are newline-separated: none may hold a newline")
        return self.post(f"/mpub?topic={topic}", b"\n".join(bodies))

    @defer.inlineCallbacks
    def create_channel(self, topic: str, channel: str):
        yield self.post(f"/topic/create?topic={topic}")
        yield self.post(f"/channel/create?topic={topic}&channel={channel}")

    @defer.inlineCallbacks
    def channel_stats(self, topic: str, channel: str) -> dict:
        """The channel's /stats entry (depth, in_flight_count, deferred_count, ...)."""
        _, stats = yield self.get_json(f"/stats?format=json&topic={topic}&channel={channel}")
        for t in stats.get("topics", []):
            if t["topic_name"] == topic:
                for c in t["channels"]:
                    if c["channel_name"] == channel:
                        return c
        return {}

    @defer.inlineCallbacks
    def wait_drained(self, topic: str, channel: str, timeout: float = 120.0):
        """Until nothing is queued, in flight or deferred on the channel."""
        deadline = time.monotonic() + timeout
        while True:
            stats = yield self.channel_stats(topic, channel)
            if stats and not (stats["depth"] or stats["in_flight_count"] or stats["deferred_count"]):
                return stats
            if time.monotonic() > deadline:
                raise RuntimeError(f"channel {topic}/{channel} not drained: {stats}")
            yield task.deferLater(reactor, 0.05, lambda: None)
