"""twisted.web hardened for a daemon on a network: the limits twisted.web lacks.

- Bodies are capped while they are read (413), before they are buffered
  whole; twisted.web itself has no limit and spools big bodies to disk.
- A request must arrive whole within ``request_timeout`` seconds of its
  first byte: the idle timeout resets on every byte, so without this one
  byte a minute holds a connection forever (slowloris).
- At most ``max_connections`` connections are open; more are closed at once.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Optional

from twisted.logger import Logger
from twisted.web import http, resource, server

log = Logger()


def _raw_json_response(status: int, reason: bytes, body: dict) -> bytes:
    content = json.dumps(body, separators=(",", ":")).encode()
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, reason, len(content)) + content)


class LimitedRequest(server.Request):
    """A request whose body may not exceed the site's ``max_body_bytes``."""

    _received = 0

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > self.channel.site.max_body_bytes:
            self.channel.reject(413, b"Request Entity Too Large", "request body too large")
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.channel.rejected:
            return
        self._received += len(data)
        if self._received > self.channel.site.max_body_bytes:
            self.channel.reject(413, b"Request Entity Too Large", "request body too large")
            return
        self.content.write(data)


class GuardedChannel(http.HTTPChannel):
    """An HTTP channel with a whole-request deadline and a way to refuse a request early."""

    rejected = False
    _deadline = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.open_connections += 1
        self._arm_deadline()

    def connectionLost(self, reason) -> None:
        self.site.open_connections -= 1
        self._cancel_deadline()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.rejected:
            return
        if not self._handlingRequest:
            self._arm_deadline()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        if self.rejected:
            return
        self._cancel_deadline()
        super().allContentReceived()

    # A connection's local address and TLS-ness do not change, yet twisted.web asks for both on every
    # request (a getsockname() call and an interface lookup): ~3% of a single-point request.
    _host = None
    _secure = None

    def getHost(self):
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def isSecure(self) -> bool:
        if self._secure is None:
            self._secure = super().isSecure()
        return self._secure

    def reject(self, status: int, reason: bytes, message: str) -> None:
        """Answer before the request is complete, and close: nothing more is read."""
        if self.rejected:
            return
        self.rejected = True
        self._cancel_deadline()
        self.transport.write(_raw_json_response(status, reason, {"error": message}))
        self.transport.loseConnection()

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = self.callLater(self.site.request_timeout, self._too_slow)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self._handlingRequest or self.rejected:
            return
        if not self.requests:  # no request started: an idle keep-alive connection, or one that never spoke
            self.rejected = True
            self.transport.abortConnection()
            return
        self.reject(408, b"Request Timeout", "request not received in time")
        self.transport.abortConnection()


class GuardedSite(server.Site):
    """A Site with psd's limits; ``displayTracebacks`` is off."""

    protocol = GuardedChannel
    requestFactory = LimitedRequest
    displayTracebacks = False

    def __init__(self, root, reactor, max_body_bytes: int, request_timeout: float, max_connections: int,
                 idle_timeout: float = 60.0):
        # Parsing every form body (via email.message) costs ~10% of a small JSON request; the few
        # form routes (the original psd's) parse their own bodies: see api._text_args.
        super().__init__(root, timeout=idle_timeout, reactor=reactor, parsePOSTFormSubmission=False)
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.open_connections = 0

    def buildProtocol(self, addr):
        if self.open_connections >= self.max_connections:
            log.warn("refusing a connection from {addr}: {n} open", addr=addr, n=self.open_connections)
            return None
        return super().buildProtocol(addr)


class RequestGuard(resource.Resource):
    """The checks every request passes before the Klein app sees it.

    A path that is not UTF-8 is a JSON 400 (Klein would answer HTML and log a
    traceback).  Tokens are not checked here: each route declares its scope
    and checks it (psd.access), on the path Klein actually routed.
    """

    isLeaf = True

    def __init__(self, wrapped):
        super().__init__()
        self._wrapped = wrapped

    def render(self, request):
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return _json_error(request, 400, "the path must be UTF-8")
        return self._wrapped.render(request)


def _json_error(request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps({"error": message}, separators=(",", ":")).encode()
