"""One NSQ V2 connection: handshake, flow control commands, replies, liveness.

The protocol knows nothing of psd's data: it hands each message to a
handler and offers FIN/REQ/TOUCH/RDY/PUB/CLS.  Replies come back in command
order, so commands that expect one push a Deferred on a FIFO, each with a
timeout on the injected clock (a late reply would desynchronise the FIFO, so
a timeout drops the connection).
"""

from __future__ import annotations

import json
from collections import deque
from typing import Optional, Protocol as TypingProtocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from psd.nsq import framing
from psd.nsq.security import handshake_failure_reason

NON_FATAL_ERRORS = frozenset({b"E_FIN_FAILED", b"E_REQ_FAILED", b"E_TOUCH_FAILED"})
DEFAULT_MAX_RDY_COUNT = 2500


class NSQError(Exception):
    """An error frame from nsqd, e.g. ``E_BAD_TOPIC``."""

    def __init__(self, data: bytes):
        self.code, _, detail = data.partition(b" ")
        self.detail = detail.decode("utf-8", "replace")
        super().__init__(data.decode("utf-8", "replace"))

    @property
    def fatal(self) -> bool:
        return self.code not in NON_FATAL_ERRORS


class ResponseTimeout(Exception):
    """nsqd did not answer a command in time."""


class TLSRefused(Exception):
    """The TLS upgrade did not happen: nsqd would not, or its certificate was not verified."""


class MessageHandler(TypingProtocol):
    def connection_made(self, connection: "NSQProtocol") -> None: ...

    def message_received(self, connection: "NSQProtocol", message: framing.Message) -> None: ...

    def connection_closed(self, connection: "NSQProtocol", reason: Failure) -> None: ...


class NSQProtocol(Protocol):
    """A consumer connection.  States: connecting, connected, upgrading (TLS
    handshake after IDENTIFY), identified, subscribed, closing (CLS sent: no
    new messages, FIN/REQ still work), closed.

    Given ``tls`` (client TLS options), IDENTIFY asks for ``tls_v1`` and the
    connection goes on only over TLS: an nsqd that does not agree, or whose
    certificate the options do not verify, ends the connection.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        handler: MessageHandler,
        address: str,
        response_timeout: float = 10.0,
        max_frame_size: int = framing.DEFAULT_MAX_FRAME,
        tls: Optional[IOpenSSLClientConnectionCreator] = None,
    ):
        self._clock = clock
        self._handler = handler
        self.address = address
        self._response_timeout = response_timeout
        self._tls = tls
        self._decoder = framing.FrameDecoder(max_frame_size)
        self._pending: deque = deque()
        self._idle_limit: Optional[float] = None
        self._idle_call = None
        self.state = "connecting"
        self.rdy = 0
        self.max_rdy_count = DEFAULT_MAX_RDY_COUNT
        self.server_settings: dict = {}
        self.in_flight: set = set()

    # -- connection events

    def connectionMade(self) -> None:
        self.state = "connected"
        self.transport.write(framing.MAGIC_V2)
        self._handler.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        self._reset_idle()
        try:
            frames = self._decoder.feed(data)
        except framing.FramingError as e:
            self.log.error("nsqd {address}: {error}; dropping the connection", address=self.address, error=str(e))
            self._abort()
            return
        for frame in frames:
            if self.state == "closed":
                return
            self._frame_received(frame)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.state == "upgrading":
            reason = Failure(TLSRefused(handshake_failure_reason(reason)))
        self.state = "closed"
        self.rdy = 0
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        pending, self._pending = self._pending, deque()
        for d, timeout in pending:
            timeout.cancel()
            d.errback(reason)
        self._handler.connection_closed(self, reason)

    # -- frames

    def _frame_received(self, frame: framing.Frame) -> None:
        if frame.type == framing.FRAME_MESSAGE:
            try:
                message = framing.decode_message(frame.data)
            except framing.FramingError as e:
                self.log.error("nsqd {address}: {error}", address=self.address, error=str(e))
                self._abort()
                return
            self.in_flight.add(message.id)
            self._handler.message_received(self, message)
        elif frame.type == framing.FRAME_RESPONSE:
            if frame.data == framing.HEARTBEAT:
                self.transport.write(framing.NOP)
            elif self._pending:
                d, timeout = self._pending.popleft()
                timeout.cancel()
                d.callback(frame.data)
            else:
                self.log.warn("nsqd {address}: unexpected response {data!r}", address=self.address, data=frame.data)
        elif frame.type == framing.FRAME_ERROR:
            self._error_received(NSQError(frame.data))
        else:
            self.log.error("nsqd {address}: unknown frame type {type}", address=self.address, type=frame.type)
            self._abort()

    def _error_received(self, error: NSQError) -> None:
        if not error.fatal:
            # The message timed out or was already answered: nsqd redelivers
            # it (or did), and the dedupe key makes the second write a no-op.
            self.log.warn("nsqd {address}: {code}: {detail}", address=self.address,
                          code=error.code.decode(), detail=error.detail)
            return
        self.log.error("nsqd {address}: fatal {code}: {detail}", address=self.address,
                       code=error.code.decode(), detail=error.detail)
        if self._pending:
            d, timeout = self._pending.popleft()
            timeout.cancel()
            d.errback(error)
        self.state = "closed"
        self.transport.loseConnection()

    def _expect_response(self) -> Deferred:
        d = Deferred()
        timeout = self._clock.callLater(self._response_timeout, self._response_timed_out, d)
        self._pending.append((d, timeout))
        return d

    def _response_timed_out(self, d: Deferred) -> None:
        self._pending = deque(entry for entry in self._pending if entry[0] is not d)
        self.log.error("nsqd {address}: no reply within {timeout}s; dropping the connection",
                       address=self.address, timeout=self._response_timeout)
        d.errback(ResponseTimeout(f"nsqd {self.address} did not answer within {self._response_timeout}s"))
        self._abort()

    def _reset_idle(self) -> None:
        if self._idle_limit is None:
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(self._idle_limit)
        else:
            self._idle_call = self._clock.callLater(self._idle_limit, self._idle_timed_out)

    def _idle_timed_out(self) -> None:
        self._idle_call = None
        self.log.error("nsqd {address}: silent for {limit}s (missed heartbeats); dropping the connection",
                       address=self.address, limit=self._idle_limit)
        self._abort()

    def _abort(self) -> None:
        self.state = "closed"
        self.transport.abortConnection()

    # -- commands

    def identify(self, settings: dict) -> Deferred:
        """IDENTIFY; fires with nsqd's settings (max_rdy_count is honoured).

        Heartbeats arrive every ``heartbeat_interval`` ms, so silence for two
        intervals means nsqd is gone even if TCP has not noticed.
        """
        if self._tls is not None:
            settings = dict(settings, tls_v1=True)
        interval = settings.get("heartbeat_interval", 30000)
        if interval and interval > 0:
            self._idle_limit = 2 * interval / 1000.0
            self._reset_idle()
        self.transport.write(framing.identify(settings))
        return self._expect_response().addCallback(self._identified)

    def _identified(self, data: bytes):
        if data.startswith(b"{"):
            self.server_settings = json.loads(data)
            self.max_rdy_count = int(self.server_settings.get("max_rdy_count", DEFAULT_MAX_RDY_COUNT))
        if self._tls is None:
            self.state = "identified"
            return self.server_settings
        if self.server_settings.get("tls_v1") is not True:
            self.disconnect()
            raise TLSRefused("nsqd did not agree to tls_v1 (is it started with --tls-cert and --tls-key?); "
                             "not going on in plain text")
        # nsqd flushed its reply and now waits for our ClientHello; its next
        # frame, OK, is the first one sent over TLS.
        self.state = "upgrading"
        self.transport.startTLS(self._tls)
        return self._expect_response().addCallback(self._upgraded)

    def _upgraded(self, data: bytes) -> dict:
        if data != framing.OK:
            raise TLSRefused(f"nsqd answered {data!r} instead of OK after the TLS upgrade")
        self.state = "identified"
        return self.server_settings

    @property
    def auth_required(self) -> bool:
        return self.server_settings.get("auth_required") is True

    def authenticate(self, secret: bytes) -> Deferred:
        """AUTH, when IDENTIFY's reply says auth_required; fires with nsqd's
        ``{identity, identity_url, permission_count}``.  A refused secret is a
        fatal error frame (E_AUTH_FAILED, E_UNAUTHORIZED)."""
        self.transport.write(framing.auth(secret))
        return self._expect_response().addCallback(self._authenticated)

    def _authenticated(self, data: bytes) -> dict:
        try:
            return json.loads(data)
        except ValueError:
            return {}

    def subscribe(self, topic: str, channel: str) -> Deferred:
        self.transport.write(framing.subscribe(topic, channel))
        return self._expect_response().addCallback(self._subscribed)

    def _subscribed(self, data: bytes) -> bytes:
        self.state = "subscribed"
        return data

    def set_rdy(self, count: int) -> None:
        """Tell nsqd how many messages may be in flight here (never above max_rdy_count)."""
        count = max(0, min(count, self.max_rdy_count))
        if self.state != "subscribed" or count == self.rdy:
            return
        self.rdy = count
        self.transport.write(framing.ready(count))

    def finish(self, message_id: bytes) -> None:
        self._answer(message_id, framing.finish(message_id))

    def requeue(self, message_id: bytes, delay: float) -> None:
        self._answer(message_id, framing.requeue(message_id, round(delay * 1000)))

    def touch(self, message_id: bytes) -> None:
        if self.state != "closed":
            self.transport.write(framing.touch(message_id))

    def _answer(self, message_id: bytes, command: bytes) -> None:
        self.in_flight.discard(message_id)
        if self.state != "closed":
            self.transport.write(command)

    def publish(self, topic: str, body: bytes) -> Deferred:
        self.transport.write(framing.publish(topic, body))
        return self._expect_response()

    def close(self) -> Deferred:
        """CLS: nsqd stops sending (RDY 0) but still takes FIN/REQ; fires on CLOSE_WAIT."""
        if self.state != "subscribed":
            return succeed(None)
        self.state = "closing"
        self.rdy = 0
        self.transport.write(framing.CLS)
        return self._expect_response()

    def disconnect(self) -> None:
        if self.state != "closed":
            self.transport.loseConnection()
