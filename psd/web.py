"""twisted.web hardened for a daemon on a network: the limits twisted.web lacks.

- Bodies are capped while they are read (413), before they are buffered
  whole; twisted.web itself has no limit and spools big bodies to disk.
- A request must arrive whole within ``request_timeout`` seconds of its
  first byte: the idle timeout resets on every byte, so without this one
  byte a minute holds a connection forever (slowloris).  A connection that
  sends nothing at all is cut after ``first_byte_timeout``, sooner.
- At most ``max_connections`` connections are open, and at most
  ``max_connections_per_address`` from one source address, so one client's
  idle sockets cannot lock the others out; refusals are logged at most once
  per ``REFUSAL_LOG_INTERVAL`` seconds, with a count.
- A client that does not read its answers stops being read: while the
  transport's send buffer is full, the next pipelined request waits.
- A request or header line over 16 KB is answered (414/431), not dropped;
  an early answer (408, 413, ...) is followed by a lingering close, so the
  client reads it instead of a reset.
- ``Host`` is checked against an allow-list (DNS rebinding); paths must be
  UTF-8.  Authorization is not here: each route declares it (psd.routes).
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Optional

from twisted.logger import Logger
from twisted.web import http, resource, server

log = Logger()

#: Reason phrases twisted.web does not know (it would send "422 Unknown Status").
REASONS = {421: b"Misdirected Request", 422: b"Unprocessable Entity", 431: b"Request Header Fields Too Large"}
#: Seconds an early answer's connection keeps reading (and discarding) before it is closed: closing a
#: socket with unread input sends a reset, and the client may lose the answer with it.
LINGER_SECONDS = 2.0
REFUSAL_LOG_INTERVAL = 10.0


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

    def setResponseCode(self, code: int, message: Optional[bytes] = None) -> None:
        super().setResponseCode(code, message if message is not None else REASONS.get(code))


class GuardedChannel(http.HTTPChannel):
    """An HTTP channel with deadlines, output back-pressure and a way to refuse a request early."""

    rejected = False
    _deadline = None
    _spoke = False
    _linger = None
    #: a finished request whose successor waits until the client reads what it was sent
    _held = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connection_opened(self)
        self._deadline = self.callLater(self.site.first_byte_timeout, self._too_slow)

    def connectionLost(self, reason) -> None:
        self.site.connection_closed(self)
        self._cancel_deadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self.rejected:
            return  # an answer was sent: what follows is read and dropped (lingering close)
        if not self._spoke:
            self._spoke = True
            self._cancel_deadline()
        if not self._handlingRequest:
            self._arm_deadline()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        if self.rejected:
            return
        self._cancel_deadline()
        super().allContentReceived()

    def requestDone(self, request) -> None:
        """Start on the next pipelined request only once the transport has room for its answer.

        twisted.web pauses reading when the send buffer fills between requests,
        but not when it fills during one (the answer is written then): a client
        that pipelines and never reads made it queue answers without end.  The
        held connection gets ``request_timeout`` seconds to drain.
        """
        if self._waitingForTransport and self.persistent and not self.rejected:
            self._held = request
            self._networkProducer.pauseProducing()
            self._arm_deadline()
            return
        super().requestDone(request)

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self._held is not None:
            request, self._held = self._held, None
            self._cancel_deadline()
            super().requestDone(request)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._HTTPChannel__first_line:
            self.reject(414, b"URI Too Long", "request line longer than %d bytes" % self.MAX_LENGTH)
        else:
            self.reject(431, REASONS[431], "header line longer than %d bytes" % self.MAX_LENGTH)

    def _respondToBadRequestAndDisconnect(self) -> None:
        if self._receivedHeaderSize > self.totalHeadersSize:
            self.reject(431, REASONS[431], "headers longer than %d bytes in all" % self.totalHeadersSize)
        elif self._receivedHeaderCount > self.maxHeaders:
            self.reject(431, REASONS[431], "more than %d header lines" % self.maxHeaders)
        else:
            self.reject(400, b"Bad Request", "malformed HTTP request")

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
        """Answer before the request is complete; then read and drop input for a while, and close."""
        if self.rejected:
            return
        self.rejected = True
        self._cancel_deadline()
        self.transport.write(_raw_json_response(status, reason, {"error": message}))
        half_close = getattr(self.transport, "loseWriteConnection", None)
        if half_close is None:
            self.transport.loseConnection()
            return
        half_close()
        self._linger = self.callLater(LINGER_SECONDS, self.transport.abortConnection)

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
        if self.rejected:
            return
        if self._held is not None:  # answers the client never read: nobody to tell
            self.rejected = True
            self.transport.abortConnection()
            return
        if self._handlingRequest:
            return
        if not self.requests:  # no request started: an idle keep-alive connection, or one that never spoke
            self.rejected = True
            self.transport.abortConnection()
            return
        self.reject(408, b"Request Timeout", "request not received in time")


class GuardedSite(server.Site):
    """A Site with psd's limits; ``displayTracebacks`` is off."""

    protocol = GuardedChannel
    requestFactory = LimitedRequest
    displayTracebacks = False

    def __init__(self, root, reactor, max_body_bytes: int, request_timeout: float, max_connections: int,
                 idle_timeout: float = 60.0, max_connections_per_address: Optional[int] = None,
                 first_byte_timeout: Optional[float] = None):
        # Parsing every form body (via email.message) costs ~10% of a small JSON request; the few
        # form routes (the original psd's) parse their own bodies: see api._text_args.
        super().__init__(root, timeout=idle_timeout, reactor=reactor, parsePOSTFormSubmission=False)
        self.max_body_bytes = max_body_bytes
        self.request_timeout = request_timeout
        self.first_byte_timeout = request_timeout if first_byte_timeout is None else first_byte_timeout
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address or max_connections
        self.open_connections = 0
        self._per_address: dict[str, int] = {}
        self._refused = 0
        self._refusal_logged_at: Optional[float] = None

    def buildProtocol(self, addr):
        source = _source(addr)
        if self.open_connections >= self.max_connections:
            return self._refuse("open connections", self.open_connections)
        if self._per_address.get(source, 0) >= self.max_connections_per_address:
            return self._refuse(f"connections from {source}", self._per_address[source])
        channel = super().buildProtocol(addr)
        channel.source = source
        return channel

    def connection_opened(self, channel) -> None:
        self.open_connections += 1
        self._per_address[channel.source] = self._per_address.get(channel.source, 0) + 1

    def connection_closed(self, channel) -> None:
        self.open_connections -= 1
        left = self._per_address[channel.source] - 1
        if left:
            self._per_address[channel.source] = left
        else:
            del self._per_address[channel.source]

    def _refuse(self, what: str, count: int) -> None:
        """Refuse a connection; one log line per interval, however many were refused."""
        self._refused += 1
        now = self.reactor.seconds()
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            log.warn("refused {refused} connection(s) in the last {interval:.0f} s; latest: {count} {what} open",
                     refused=self._refused, interval=REFUSAL_LOG_INTERVAL, count=count, what=what)
            self._refused, self._refusal_logged_at = 0, now
        return None


def _source(addr) -> str:
    return getattr(addr, "host", None) or "local"


class RequestGuard(resource.Resource):
    """The checks every request passes before the Klein app sees it.

    A path that is not UTF-8 is a JSON 400 (Klein would answer HTML and log a
    traceback).  ``Host`` must be one of ``allowed_hosts`` when that is given:
    a web page that rebinds its own name to 127.0.0.1 still sends its own name.
    A request without Host (HTTP/1.0) is let through: a browser always sends it.
    """

    isLeaf = True

    def __init__(self, wrapped, allowed_hosts: Optional[frozenset] = None):
        super().__init__()
        self._wrapped = wrapped
        self._allowed_hosts = None if allowed_hosts is None else frozenset(h.lower().encode() for h in allowed_hosts)

    def render(self, request):
        try:
            b"/".join(request.postpath).decode("utf-8")
        except UnicodeDecodeError:
            return json_error(request, 400, "the path must be UTF-8")
        host = request.requestHeaders.getRawHeaders(b"host")
        if self._allowed_hosts is not None and host is not None and host[-1].lower() not in self._allowed_hosts:
            return json_error(request, 421, "this Host is not served here (see [http] allowed_hosts)")
        return self._wrapped.render(request)


def loopback_hosts(interface: str, port: int) -> Optional[frozenset]:
    """The Host values a loopback listener answers by default (None: any, for other interfaces)."""
    if interface not in ("127.0.0.1", "::1", "localhost") or port == 0:
        return None
    names = ("localhost", "127.0.0.1", "[::1]")
    return frozenset(f"{name}:{port}" for name in names) | (frozenset(names) if port == 80 else frozenset())


def json_error(request, status: int, message: str) -> bytes:
    """A compact ``{"error": ...}`` answer, like every other error of psd's."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    content = json.dumps({"error": message}, separators=(",", ":")).encode()
    request.setHeader(b"Content-Length", b"%d" % len(content))
    return content
