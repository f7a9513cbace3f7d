"""psd itself, assembled by psd.tap.makeService against a test redis-server."""

from __future__ import annotations

import json

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from psd.tap import Options, makeService
from tests.redisfixture import RedisServer, free_port


class HttpClient:
    """JSON over HTTP to a psd at ``base``."""

    def __init__(self, base: str):
        self.base = base

    @defer.inlineCallbacks
    def request(self, method: str, path: str, body=None, headers=None, raw: bytes = None):
        """(status, decoded JSON body, response) of one request."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None and not any(name.lower() == "content-type" for name in headers or {}):
            headers = {**(headers or {}), "Content-Type": "application/json"}
        response = yield treq.request(method, self.base + path, data=data, headers=headers, persistent=False)
        content = yield response.content()
        return response.code, (json.loads(content) if content else None), response

    def post(self, path: str, body=None, **kwargs):
        return self.request("POST", path, body, **kwargs)

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs)


class RunningPsd(HttpClient):
    """psd running inside the test's own reactor."""

    def __init__(self, service, port: int):
        super().__init__(f"http://127.0.0.1:{port}")
        self.service = service

    @property
    def store(self):
        return self.service.getServiceNamed("store").store

    @property
    def writer(self):
        return self.service.getServiceNamed("writer").writer


@defer.inlineCallbacks
def started_psd(testcase, server: RedisServer, *extra_args: str, backlog: int = 50):
    """Start psd (HTTP on a free port) on ``server``; stopped at cleanup."""
    port = free_port()
    options = Options()
    options.parseOptions(["--redis", server.url, "--http", f"tcp:{port}:interface=127.0.0.1:backlog={backlog}",
                          *extra_args])
    service = makeService(options, reactor)
    service.startService()
    testcase.addCleanup(service.stopService)
    psd = RunningPsd(service, port)
    for _ in range(200):
        if psd.store.connected():
            try:
                yield psd.store.ping()
                status, _, _ = yield psd.get("/health")
                if status == 200:
                    break
            except Exception:
                pass
        yield deferLater(0.025)
    else:
        raise RuntimeError("psd did not become healthy")
    return psd


def deferLater(seconds: float):
    from twisted.internet import task
    return task.deferLater(reactor, seconds, lambda: None)


class PsdTestCase(TestCase):
    """A test on a psd of its own (``self.psd``) over a fresh redis-server (``self.server``)."""

    timeout = 300

    @defer.inlineCallbacks
    def setUp(self):
        self.server = RedisServer(self)
        yield self.server.start()
        self.psd = yield started_psd(self, self.server)
