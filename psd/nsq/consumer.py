"""The NSQ consumer service: discovery, connections, RDY, backoff, dead letters.

Every message is decoded into one WriteUnit and handed to the writer; it is
FINished only once Redis acknowledged the write, requeued when the store is
unavailable, and dead-lettered (published to ``dead_letter_topic`` with the
reason, then FINished) when retrying cannot help.  Nothing is dropped and
nothing is retried forever.
"""

from __future__ import annotations

import base64
import json
import random as random_module
import socket
from typing import Optional
from urllib.parse import quote

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

import psd
from psd.errors import InvalidInput, RejectedByStore, StoreUnavailable
from psd.nsq import framing
from psd.nsq.messages import parse_message
from psd.nsq.protocol import NSQProtocol, TLSRefused
from psd.nsq.security import ClientTLS

DEAD_LETTER_BODY_LIMIT = 256 * 1024
#: the first re-poll of lookupd after an answer with no nsqd, doubled on each empty answer
EMPTY_POLL_DELAY = 1.0
BACKOFF_JITTER = 0.25


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"nsqd address {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


class AuthNotConfigured(Exception):
    """nsqd requires AUTH and psd has no secret to send."""


class _Peer:
    """One nsqd: its reconnecting ClientService and its live connection."""

    def __init__(self, address: str, service: ClientService, from_lookupd: bool):
        self.address = address
        self.service = service
        self.from_lookupd = from_lookupd
        self.connection: Optional[NSQProtocol] = None


class NSQConsumer(Service):
    """Consume ``topic``/``channel`` from every nsqd given or discovered."""

    log = Logger()

    def __init__(
        self,
        reactor,
        writer,
        metrics: frozenset,
        topic: str = "psd",
        channel: str = "psd",
        nsqd_tcp_addresses: tuple = (),
        lookupd_http_addresses: tuple = (),
        max_in_flight: int = 200,
        max_attempts: int = 20,
        dead_letter_topic: str = "psd_dead",
        msg_timeout: float = 60.0,
        heartbeat_interval: float = 30.0,
        lookupd_poll_interval: float = 60.0,
        lookupd_poll_jitter: float = 0.3,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        requeue_delay_max: float = 60.0,
        reconnect_initial: float = 1.0,
        reconnect_max: float = 60.0,
        rdy_rotate_interval: float = 5.0,
        response_timeout: float = 10.0,
        stop_timeout: float = 30.0,
        output_buffer_size: int = 16384,
        output_buffer_timeout: float = 0.25,
        http_client=None,
        random: Optional[random_module.Random] = None,
        tls: Optional[ClientTLS] = None,
        auth_secret: Optional[bytes] = None,
    ):
        if not nsqd_tcp_addresses and not lookupd_http_addresses:
            raise ValueError("give nsqd_tcp_addresses or lookupd_http_addresses")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        framing.subscribe(topic, channel)
        framing.publish(dead_letter_topic, b"")
        self._reactor = reactor
        self._writer = writer
        self._metrics = metrics
        self.topic = topic
        self.channel = channel
        for address in nsqd_tcp_addresses:
            split_address(address)
        self._static = list(nsqd_tcp_addresses)
        self._lookupds = [u if "://" in u else f"http://{u}" for u in lookupd_http_addresses]
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.dead_letter_topic = dead_letter_topic
        self._msg_timeout = msg_timeout
        self._heartbeat_interval = heartbeat_interval
        self._poll_interval = lookupd_poll_interval
        self._poll_jitter = lookupd_poll_jitter
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._requeue_delay_max = requeue_delay_max
        self._rdy_rotate_interval = rdy_rotate_interval
        self._response_timeout = response_timeout
        self._stop_timeout = stop_timeout
        self._output_buffer_size = output_buffer_size
        self._output_buffer_timeout = output_buffer_timeout
        self._random = random or random_module.Random()
        self._retry_policy = backoffPolicy(reconnect_initial, reconnect_max, 2.0, jitter=self._random.random)
        self._http = http_client
        self._tls = tls
        self._auth_secret = auth_secret
        self._peers: dict[str, _Peer] = {}
        self._ready: list[NSQProtocol] = []
        self._processing: set[Deferred] = set()
        self._poll_call = None
        self._empty_polls = 0
        self._rotate_call = None
        self._rotation = 0
        self._backoff_level = 0
        self._backoff_state = "off"  # off | waiting | probing
        self._backoff_call = None
        self._accepting = False
        self._drained = False

    # -- service

    def startService(self) -> None:
        super().startService()
        self._accepting = True
        self._drained = False
        for address in self._static:
            self._add_peer(address, from_lookupd=False)
        if self._lookupds:
            if self._http is None:
                import treq
                from twisted.web.client import Agent
                agent = Agent(self._reactor) if self._tls is None else Agent(
                    self._reactor, contextFactory=self._tls.https_policy())
                self._http = treq.client.HTTPClient(agent)
            self._poll_call = self._reactor.callLater(0, self._poll_lookupds)

    def stopService(self) -> Deferred:
        """CLS everywhere, let what is in flight finish (REQ the rest), then close."""
        super().stopService()
        self._accepting = False
        for call in (self._poll_call, self._rotate_call, self._backoff_call):
            if call is not None and call.active():
                call.cancel()
        self._poll_call = self._rotate_call = self._backoff_call = None
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        connections = list(self._ready)
        await DeferredList([c.close() for c in connections], consumeErrors=True)
        deadline = self._reactor.seconds() + self._stop_timeout
        while self._processing and self._reactor.seconds() < deadline:
            self.log.info("stopping: waiting for {count} messages in flight", count=len(self._processing))
            # Wait on a Deferred of our own: a timeout must not cancel the writes.
            drained = Deferred()
            DeferredList(list(self._processing), consumeErrors=True).addBoth(
                lambda _: drained.called or drained.callback(None))
            drained.addTimeout(deadline - self._reactor.seconds(), self._reactor)
            try:
                await drained
            except defer.TimeoutError:
                self.log.warn("stopping: writes still pending after {timeout}s; requeueing them",
                              timeout=self._stop_timeout)
        self._drained = True
        for connection in connections:
            for message_id in list(connection.in_flight):
                connection.requeue(message_id, 0)
        peers, self._peers = list(self._peers.values()), {}
        await gatherResults([peer.service.stopService() for peer in peers])

    def status(self) -> list[dict]:
        """One entry per known nsqd, for /health."""
        result = []
        for address, peer in sorted(self._peers.items()):
            conn = peer.connection
            result.append({
                "address": address,
                "state": conn.state if conn is not None else "disconnected",
                "in_flight": len(conn.in_flight) if conn is not None else 0,
                "rdy": conn.rdy if conn is not None else 0,
            })
        return result

    # -- connections

    def _add_peer(self, address: str, from_lookupd: bool) -> None:
        host, port = split_address(address)
        tls = self._tls.options_for(host) if self._tls is not None else None
        factory = Factory.forProtocol(lambda: NSQProtocol(self._reactor, self, address, self._response_timeout,
                                                          tls=tls))
        service = ClientService(
            HostnameEndpoint(self._reactor, host, port), factory,
            retryPolicy=self._retry_policy, clock=self._reactor,
        )
        self._peers[address] = _Peer(address, service, from_lookupd)
        self.log.info("nsqd {address}: connecting", address=address)
        service.startService()

    def _identify_settings(self) -> dict:
        return {
            "client_id": socket.gethostname().split(".")[0],
            "hostname": socket.getfqdn(),
            "user_agent": f"psd/{psd.__version__}",
            "feature_negotiation": True,
            "heartbeat_interval": round(self._heartbeat_interval * 1000),
            "msg_timeout": round(self._msg_timeout * 1000),
            "output_buffer_size": self._output_buffer_size,
            "output_buffer_timeout": round(self._output_buffer_timeout * 1000),
        }

    def connection_made(self, connection: NSQProtocol) -> None:
        """Handshake; on failure drop the connection and let ClientService retry."""
        d = Deferred.fromCoroutine(self._handshake(connection))
        d.addErrback(self._handshake_failed, connection)

    def _handshake_failed(self, failure: Failure, connection: NSQProtocol) -> None:
        if failure.check(TLSRefused):
            host, _ = split_address(connection.address)
            self.log.error("nsqd {address}: TLS refused: {error} "
                           "(nsqd's certificate checked against {trust} for the name {name})",
                           address=connection.address, error=failure.getErrorMessage(),
                           trust=self._tls.trust_description(), name=self._tls.name_for(host))
            connection.disconnect()
            return
        self.log.error("nsqd {address}: handshake failed: {error}", address=connection.address,
                       error=failure.getErrorMessage())
        connection.disconnect()

    async def _handshake(self, connection: NSQProtocol) -> None:
        settings = await connection.identify(self._identify_settings())
        if connection.auth_required:
            if self._auth_secret is None:
                raise AuthNotConfigured("nsqd requires AUTH: set [nsq] auth_secret_file (or auth_secret)")
            identity = await connection.authenticate(self._auth_secret)
            self.log.info("nsqd {address}: authenticated as {identity} ({permissions} permissions)",
                          address=connection.address, identity=identity.get("identity"),
                          permissions=identity.get("permission_count"))
        await connection.subscribe(self.topic, self.channel)
        self.log.info("nsqd {address}: subscribed to {topic}/{channel} (nsqd {version}, max_rdy_count {max_rdy})",
                      address=connection.address, topic=self.topic, channel=self.channel,
                      version=settings.get("version"), max_rdy=connection.max_rdy_count)
        peer = self._peers.get(connection.address)
        if not self._accepting or peer is None:
            connection.disconnect()
            return
        peer.connection = connection
        self._ready.append(connection)
        self._distribute()

    def connection_closed(self, connection: NSQProtocol, reason: Failure) -> None:
        self.log.info("nsqd {address}: connection closed ({reason})", address=connection.address,
                      reason=reason.getErrorMessage())
        peer = self._peers.get(connection.address)
        if peer is not None and peer.connection is connection:
            peer.connection = None
        if connection in self._ready:
            self._ready.remove(connection)
            self._distribute()

    # -- flow control

    def _distribute(self) -> None:
        """Share max_in_flight among the subscribed connections.

        During backoff everything is at RDY 0 except the probes.  With more
        connections than max_in_flight, RDY 1 rotates among them so no nsqd
        starves.  Lowering comes before raising, so the sum never overshoots.
        """
        conns = self._ready
        if not conns:
            return
        if not self._accepting or self._backoff_state == "waiting":
            targets = [0] * len(conns)
        elif self._backoff_state == "probing":
            targets = [1 if self._rotated(i) else 0 for i in range(len(conns))]
        else:
            targets = self._shares(len(conns))
        for conn, target in zip(conns, targets):
            if min(target, conn.max_rdy_count) < conn.rdy:
                conn.set_rdy(target)
        for conn, target in zip(conns, targets):
            conn.set_rdy(target)
        self._schedule_rotation()

    def _shares(self, n: int) -> list[int]:
        if n > self.max_in_flight:
            return [1 if self._rotated(i) else 0 for i in range(n)]
        base, extra = divmod(self.max_in_flight, n)
        return [base + (1 if i < extra else 0) for i in range(n)]

    def _rotated(self, index: int) -> bool:
        """Whether connection ``index`` is among the max_in_flight currently given RDY 1."""
        n = len(self._ready)
        return (index - self._rotation) % n < min(self.max_in_flight, n)

    def _schedule_rotation(self) -> None:
        needed = self._accepting and len(self._ready) > self.max_in_flight
        if needed and self._rotate_call is None:
            self._rotate_call = self._reactor.callLater(self._rdy_rotate_interval, self._rotate)
        elif not needed and self._rotate_call is not None:
            self._rotate_call.cancel()
            self._rotate_call = None

    def _rotate(self) -> None:
        self._rotate_call = None
        self._rotation += self.max_in_flight
        self._distribute()

    def _store_failed(self) -> None:
        """Redis is unavailable: RDY 0 everywhere, wait, then probe."""
        if self._backoff_state == "waiting":
            return
        self._backoff_level += 1
        delay = min(self._backoff_initial * 2 ** (self._backoff_level - 1), self._backoff_max)
        delay *= 1 + BACKOFF_JITTER * self._random.random()
        self.log.warn("store unavailable: backing off for {delay:.1f}s (level {backoff_level})",
                      delay=delay, backoff_level=self._backoff_level)
        self._backoff_state = "waiting"
        self._backoff_call = self._reactor.callLater(delay, self._probe)
        self._distribute()

    def _probe(self) -> None:
        self._backoff_call = None
        self._backoff_state = "probing"
        self._distribute()

    def _store_succeeded(self) -> None:
        """One acknowledged write while probing ends the backoff: Redis is back."""
        if self._backoff_state != "probing":
            return
        self.log.info("store answering again: resuming after backoff level {backoff_level}",
                      backoff_level=self._backoff_level)
        self._backoff_state = "off"
        self._backoff_level = 0
        self._distribute()

    def in_backoff(self) -> bool:
        return self._backoff_state != "off"

    # -- messages

    def message_received(self, connection: NSQProtocol, message: framing.Message) -> None:
        if self._drained:
            connection.requeue(message.id, 0)
            return
        if self.max_attempts and message.attempts > self.max_attempts:
            reason = f"delivered {message.attempts} times, more than max_attempts {self.max_attempts}"
            self._track(self._dead_letter(connection, message, reason))
            return
        unit_key = f"nsq:{connection.address}:{message.id.decode('ascii', 'replace')}"
        try:
            unit = parse_message(message.body, self._metrics, unit_key)
        except InvalidInput as e:
            self._track(self._dead_letter(connection, message, e.message))
            return
        except Exception:
            self.log.failure("nsqd {address}: decoding message {id} failed", address=connection.address,
                             id=message.id)
            self._track(self._dead_letter(connection, message, "message could not be decoded"))
            return
        d = maybeDeferred(self._writer.submit, unit)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(connection, message),
                       errbackArgs=(connection, message))
        self._track(d)

    def _track(self, d: Deferred) -> None:
        self._processing.add(d)
        d.addBoth(self._untrack, d)

    def _untrack(self, result, d: Deferred):
        self._processing.discard(d)
        return result

    def _written(self, result, connection: NSQProtocol, message: framing.Message) -> None:
        connection.finish(message.id)
        self._store_succeeded()

    def _write_failed(self, failure: Failure, connection: NSQProtocol, message: framing.Message):
        if failure.check(RejectedByStore):
            return self._dead_letter(connection, message, f"rejected by the store: {failure.getErrorMessage()}")
        if not failure.check(StoreUnavailable):  # a bug of ours: redelivering would fail the same way
            self.log.failure("nsqd {address}: writing message {id} failed: internal error; dead-lettered",
                             failure, address=connection.address, id=message.id)
            return self._dead_letter(connection, message, "internal error")
        delay = min(self._backoff_initial * 2 ** (message.attempts - 1), self._requeue_delay_max)
        self.log.warn("nsqd {address}: message {id} requeued in {delay}s: {error}",
                      address=connection.address, id=message.id, delay=delay, error=failure.getErrorMessage())
        self._store_failed()
        connection.requeue(message.id, delay)
        return None

    def _dead_letter(self, connection: NSQProtocol, message: framing.Message, reason: str) -> Deferred:
        """Publish the message and why it was refused to dead_letter_topic, then FIN it.

        If the publish fails the message stays unanswered and nsqd redelivers
        it: never FIN what was not kept somewhere.
        """
        self.log.warn("nsqd {address}: message {id} dead-lettered: {reason}",
                      address=connection.address, id=message.id, reason=reason)
        d = connection.publish(self.dead_letter_topic, dead_letter_body(
            message, reason, connection.address, self.topic, self.channel))
        d.addCallback(lambda _: connection.finish(message.id))
        d.addErrback(lambda f: self.log.error(
            "nsqd {address}: dead-lettering message {id} failed ({error}); nsqd will redeliver it",
            address=connection.address, id=message.id, error=f.getErrorMessage()))
        return d

    # -- discovery

    def _poll_lookupds(self) -> None:
        self._poll_call = None
        d = gatherResults([self._lookup(url) for url in self._lookupds])
        d.addCallback(self._producers_found)
        d.addErrback(lambda f: self.log.failure("lookupd poll failed", f))
        d.addBoth(self._schedule_poll)

    def _schedule_poll(self, _=None) -> None:
        """Poll every interval; while no nsqd is known, sooner (1, 2, 4 ... s): a new nsqd is found at once."""
        if not self._accepting:
            return
        delay = self._poll_interval * (1 + self._poll_jitter * (2 * self._random.random() - 1))
        if self._peers:
            self._empty_polls = 0
        else:
            delay = min(delay, EMPTY_POLL_DELAY * 2 ** self._empty_polls)
            self._empty_polls = min(self._empty_polls + 1, 16)
        self._poll_call = self._reactor.callLater(delay, self._poll_lookupds)

    async def _fetch(self, url: str):
        response = await self._http.get(
            f"{url}/lookup?topic={quote(self.topic)}",
            headers={"Accept": ["application/vnd.nsq; version=1.0"]},
        )
        body = await response.content()
        return response.code, body

    def _lookup(self, url: str) -> Deferred:
        """Producers of the topic per lookupd: a set, or None if it did not answer."""
        d = Deferred.fromCoroutine(self._fetch(url))
        d.addTimeout(self._response_timeout, self._reactor)
        d.addCallback(self._parse_lookup, url)
        d.addErrback(self._lookup_failed, url)
        return d

    def _parse_lookup(self, answer: tuple, url: str) -> Optional[set]:
        code, body = answer
        if code == 404:
            return set()
        if code != 200:
            self.log.warn("lookupd {url}: HTTP {code}", url=url, code=code)
            return None
        producers = json.loads(body).get("producers", [])
        return {f"{p['broadcast_address']}:{p['tcp_port']}" for p in producers}

    def _lookup_failed(self, failure: Failure, url: str) -> None:
        self.log.warn("lookupd {url}: {error}", url=url, error=failure.getErrorMessage())
        return None

    def _producers_found(self, answers: list) -> None:
        """Connect to new producers; forget lookupd-found nsqd that vanished and are down."""
        if not self._accepting:
            return
        found = set().union(*(a for a in answers if a is not None))
        for address in sorted(found - self._peers.keys()):
            self._add_peer(address, from_lookupd=True)
        if any(a is None for a in answers):
            return
        for address, peer in list(self._peers.items()):
            if peer.from_lookupd and address not in found and peer.connection is None:
                self.log.info("nsqd {address}: gone from lookupd; no longer connecting", address=address)
                del self._peers[address]
                peer.service.stopService()


def dead_letter_body(message: framing.Message, reason: str, address: str, topic: str, channel: str) -> bytes:
    """JSON with the reason and the original body (text if UTF-8, else base64; capped)."""
    record = {
        "reason": reason, "nsqd": address, "topic": topic, "channel": channel,
        "id": message.id.decode("ascii", "replace"), "attempts": message.attempts,
        "timestamp_ns": message.timestamp,
    }
    body = message.body
    if len(body) > DEAD_LETTER_BODY_LIMIT:
        record["truncated_from"] = len(body)
        body = body[:DEAD_LETTER_BODY_LIMIT]
    try:
        record["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(body).decode("ascii")
    return json.dumps(record, sort_keys=True).encode("utf-8")
