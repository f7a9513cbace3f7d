"""A real redis-server for integration tests: free port, temp dir, always stopped.

The cleanup is registered before readiness is awaited, so a server that
never becomes ready is still killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from psd.keys import Layout
from psd.store import RedisAddress, RedisStore
from psd.writer import Writer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server is not installed: run `make test` (it installs it)")
    return found


class RedisServer:
    """``tls`` (a tests.tlscerts.TLSFiles): TLS only, on ``port`` (``--port 0``); client
    certificates are asked for, required when ``client_certificates`` is true."""

    def __init__(self, testcase, *extra_args: str, appendonly: bool = False, tls=None,
                 client_certificates: bool = False):
        self.dir = testcase.mktemp()
        os.makedirs(self.dir)
        self.port = free_port()
        self.tls = tls
        listen = ["--port", str(self.port)]
        if tls is not None:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", tls.server_cert,
                      "--tls-key-file", tls.server_key, "--tls-ca-cert-file", tls.ca,
                      "--tls-auth-clients", "yes" if client_certificates else "optional"]
        self.args = [redis_binary(), *listen, "--bind", "127.0.0.1", "--dir", self.dir,
                     "--save", "", "--appendonly", "yes" if appendonly else "no", *extra_args]
        self.process = None
        testcase.addCleanup(self.stop)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _socket(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        if self.tls is None:
            return s
        context = ssl.create_default_context(cafile=self.tls.ca)
        context.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        return context.wrap_socket(s, server_hostname="127.0.0.1")

    def start(self) -> defer.Deferred:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self.wait_ready()

    @defer.inlineCallbacks
    def wait_ready(self, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while self.call("PING") != b"+PONG\r\n":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not become ready")
            yield task.deferLater(reactor, 0.05, lambda: None)

    def call(self, *args: str) -> bytes:
        """One command over a plain socket (RESP), for test setup and checks."""
        command = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(a), a) for a in (x.encode() if isinstance(x, str) else x for x in args))
        try:
            with self._socket() as s:
                s.sendall(command)
                return s.recv(1 << 20)
        except OSError:
            return b""

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)
            self.kill()
            self.process = None


@defer.inlineCallbacks
def started_store(testcase, server: RedisServer, reply_timeout: float = 5.0, address: RedisAddress = None):
    """A RedisStore connected to ``server`` (at ``address`` if given) with its scripts loaded."""
    store = RedisStore(address or RedisAddress(server.url), reply_timeout=reply_timeout)
    store.start()
    testcase.addCleanup(store.stop)
    deadline = time.monotonic() + 10
    while not store.connected():
        if time.monotonic() > deadline:
            raise RuntimeError("store did not connect")
        yield task.deferLater(reactor, 0.02, lambda: None)
    yield store.load_scripts()
    return store


class StoreTestCase(TestCase):
    """A real redis-server, a RedisStore on it and a Writer with a 1 ms window."""

    @defer.inlineCallbacks
    def setUp(self):
        self.server = RedisServer(self)
        yield self.server.start()
        self.store = yield started_store(self, self.server)
        self.layout = Layout()
        self.writer = Writer(reactor, self.store, self.layout, window=0.001)
