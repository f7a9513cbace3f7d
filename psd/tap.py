"""The one assembly point: ``twistd psd`` options and the service tree."""

from __future__ import annotations

import functools
import gc
import os
import re
import sys

from typing import Callable

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted import version as twisted_version
from twisted.python import usage

import psd
from psd import config
from psd.api import API
from psd.embedded import EmbeddedRedis, data_dir_holder, find_server_binary
from psd.embedded import socket_path as embedded_socket_path
from psd.coalesce import TotalsHistory
from psd.keys import Layout
from psd.nsq import security as nsq_security
from psd.nsq.consumer import NSQConsumer
from psd.reader import Reader
from psd.store import RedisAddress, RedisStore
from psd.validation import metric_names
from psd.routes import Tokens
from psd.web import GuardedSite, RequestGuard, loopback_hosts
from psd.workers import http_service, tcp_address
from psd.writer import Writer


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "psd, the Point Space Daemon: activity metrics summed at every calendar granularity."
    optParameters = [
        ["config", "c", None, "Path of a settings file (`python -m psd.config --example` prints every setting)."],
        ["role", None, None, "all (HTTP and NSQ), server (HTTP only) or worker (NSQ only); "
                             "default: all when NSQ is configured, else server."],
        ["http", None, None, "HTTP server endpoint, e.g. tcp:1155:interface=127.0.0.1 (overrides [http] listen)."],
        ["redis", None, None, "redis://host:port/db, unix:///path.sock, or embedded (overrides [redis] url)."],
        ["data-dir", None, None, "Data directory of the embedded store (overrides [embedded] data_dir)."],
        ["workers", None, 1, "HTTP worker processes sharing the listening socket (see psd/workers.py).", int],
        ["inherited-fd", None, None, "Internal: serve on this inherited listening socket (a started worker).", int],
    ]

    #: set when the options were wrong: twistd then prints the usage text before the error line
    _failed = False

    def parseOptions(self, options=None) -> None:
        #: the arguments as given, for the worker processes started with --workers
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            self._failed = True
            raise usage.UsageError(f"{e} (twistd psd --help lists the options)") from None

    def getUsage(self, width=None) -> str:
        """The usage text for --help; after an error only the error line, not the whole text."""
        return "" if self._failed else super().getUsage(width)

    def opt_version(self) -> None:
        """Print psd's version and exit."""
        print(f"psd {psd.__version__} (Twisted {twisted_version.short()}, Python {sys.version.split()[0]})")
        sys.exit(0)

    def __init__(self):
        super().__init__()
        self.nsqd, self.lookupd = [], []

    def opt_nsqd(self, address: str) -> None:
        """nsqd TCP address HOST:PORT to consume from (repeatable; overrides [nsq] nsqd_tcp_addresses)."""
        self.nsqd.append(address)

    def opt_lookupd(self, url: str) -> None:
        """nsqlookupd HTTP address to discover nsqd (repeatable; overrides [nsq] lookupd_http_addresses)."""
        self.lookupd.append(url)

    def postOptions(self) -> None:
        try:
            settings = config.load(self["config"])
            for option, (section, name) in self.OVERRIDES.items():
                if self[option] is not None:
                    settings.set(section, name, self[option])
            for address in self.nsqd:
                if not config.host_port(address):
                    raise config.SettingsError(f"--nsqd {address!r} must be HOST:PORT, e.g. 127.0.0.1:4150")
            for values, name in ((self.nsqd, "nsqd_tcp_addresses"), (self.lookupd, "lookupd_http_addresses")):
                if values:
                    settings.set("nsq", name, values)
            self.role = _role(self["role"], settings.nsq)
            self.nsq_tls = nsq_security.client_tls(settings.nsq)
            self.nsq_auth_secret = nsq_security.auth_secret(settings.nsq)
            _check_endpoint(settings.http["listen"], self._named("http"))
            # resolved once: a relative data_dir means the working directory psd was started in
            settings.set("embedded", "data_dir", os.path.abspath(settings.embedded["data_dir"]))
            if settings.redis["url"] == "embedded":
                settings.set("embedded", "binary", find_server_binary(settings.embedded["binary"]))
                holder = data_dir_holder(settings.embedded["data_dir"]) if self["inherited-fd"] is None else None
                if holder is not None:
                    raise config.SettingsError(f"[embedded] data_dir {settings.embedded['data_dir']!r} is in use "
                                               f"by psd pid {holder}: stop it, or give this psd another --data-dir")
            else:
                try:
                    redis_address(settings.redis, settings.redis["url"])
                except ValueError as e:
                    raise config.SettingsError(f"{self._named('redis')}: {e}") from None
            self.write_token = _write_token(settings.http)
            if self["workers"] < 1:
                raise ValueError("--workers must be at least 1")
            if self["workers"] > 1:
                tcp_address(settings.http["listen"])
        except (config.SettingsError, ValueError, FileNotFoundError) as e:
            raise usage.UsageError(str(e)) from None
        self.settings = settings

    #: command-line option -> the setting it overrides
    OVERRIDES = {"http": ("http", "listen"), "redis": ("redis", "url"), "data-dir": ("embedded", "data_dir")}

    def _named(self, option: str) -> str:
        """How the user gave a value: ``--http`` when the flag was used, else the setting's name."""
        section, name = self.OVERRIDES[option]
        return f"--{option}" if self[option] is not None else f"[{section}] {name}"


def _check_endpoint(description: str, source: str) -> None:
    """Parse the HTTP endpoint now, so a typo is one line at startup, not a traceback later.

    serverFromString needs a reactor object but only builds the endpoint: no I/O happens.
    """
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(_NO_REACTOR, description)
    except (ValueError, TypeError, KeyError) as e:
        reason = str(e)
        unknown = re.search(r"unexpected keyword argument '(\w+)'", reason)
        if unknown:
            reason = f"unknown parameter {unknown.group(1)!r}"
        raise config.SettingsError(f"{source} {description!r} is not a server endpoint ({reason}); "
                                   f"write tcp:PORT:interface=HOST, e.g. tcp:1155:interface=127.0.0.1") from None


#: what serverFromString is handed while only checking a description: it stores it, never calls it
_NO_REACTOR = object()


def _role(role, nsq: dict) -> str:
    has_nsq = bool(nsq["nsqd_tcp_addresses"] or nsq["lookupd_http_addresses"])
    role = role or ("all" if has_nsq else "server")
    if role not in ("all", "server", "worker"):
        raise config.SettingsError(f"--role must be all, server or worker, not {role!r}")
    if role in ("all", "worker") and not has_nsq:
        raise config.SettingsError(f"--role {role} needs NSQ: give --nsqd or --lookupd, or [nsq] addresses")
    return role


def _write_token(http: dict) -> str:
    """``[http] token``, or the first line of ``[http] token_file`` (kept out of the config)."""
    if http["token"] and http["token_file"]:
        raise config.SettingsError("settings: [http] token and token_file exclude each other")
    if not http["token_file"]:
        return http["token"]
    return config.read_secret_file("http", "token_file", http["token_file"])


def redis_address(redis: dict, url: str) -> RedisAddress:
    """``url`` with the [redis] credentials and TLS settings (files read now: errors stop startup)."""
    password = config.read_secret_file("redis", "password_file", redis["password_file"]) if redis["password_file"] else None
    try:
        return RedisAddress(url, password, tls_ca_file=redis["tls_ca_file"], tls_cert_file=redis["tls_cert_file"],
                            tls_key_file=redis["tls_key_file"], tls_server_name=redis["tls_server_name"])
    except config.SettingsError:
        raise
    except ValueError as e:
        raise config.SettingsError(f"settings: {e}") from None


def _allowed_hosts(http: dict):
    """``[http] allowed_hosts``, or the loopback names of a loopback listen address (None: any Host)."""
    if http["allowed_hosts"]:
        return frozenset(http["allowed_hosts"])
    try:
        _, interface, port, _ = tcp_address(http["listen"])
    except ValueError:  # a unix socket, or an endpoint type without an interface
        return None
    return loopback_hosts(interface, port)


class StoreService(Service):
    """Connects to Redis and loads the scripts, retrying until Redis answers; says when Redis goes and comes.

    One warning with the address and the reason when Redis cannot be reached
    (at start, after ``warn_after`` seconds; later, when it goes away), one
    info line when it is back: no line per retry.
    """

    log = Logger()
    name = "store"

    def __init__(self, reactor, store: RedisStore, retry_every: float = 0.2, warn_after: float = 2.0,
                 watch_every: float = 1.0, listening: Callable[[], bool] = lambda: True):
        self._reactor = reactor
        self.store = store
        #: true once the server can take connections: the embedded store's socket exists (connecting
        #: earlier only fails and makes txredisapi log a retry line per connection)
        self._listening = listening
        self._retry_every = retry_every
        self._warn_after = warn_after
        self._watch_every = watch_every
        self._loop = None
        self._since = None
        self._reachable = True
        self._load_error = None

    def startService(self) -> None:
        super().startService()
        self._since = self._reactor.seconds()
        self._loop = task.LoopingCall(self._try_load)
        self._loop.clock = self._reactor
        self._loop.start(self._retry_every, now=False)

    @defer.inlineCallbacks
    def _try_load(self):
        if not self.store.started:
            if not self._listening():
                return
            self.store.start()
        try:
            yield self.store.ping()
        except Exception:  # not up yet, or went away again: the next tick retries
            if self._reachable and self._reactor.seconds() - self._since >= self._warn_after:
                yield self._went_away(at_start=True)
            return
        try:
            yield self.store.load_scripts()
        except Exception as e:  # Redis answers but refuses the scripts (ACL, a wrong server): say why, once
            if str(e) != self._load_error:
                self._load_error = str(e)
                self.log.error("Redis at {url} answers, but loading psd's scripts failed: {error}; retrying",
                               url=self.store.address.url, error=e)
            return
        self.log.info("store ready at {url}", url=self.store.address.url)
        self.log.info("scripts loaded: {scripts}",
                      scripts=", ".join(f"{script.name} {script.sha}" for script in self.store.scripts))
        self._loop.stop()
        self._reachable = True
        self._loop = task.LoopingCall(self._watch)
        self._loop.clock = self._reactor
        self._loop.start(self._watch_every, now=False)

    @defer.inlineCallbacks
    def _watch(self):
        if self.store.connected() == self._reachable:
            return
        if self._reachable:
            yield self._went_away()
        else:
            self._reachable = True
            self.log.info("Redis at {url} is reachable again", url=self.store.address.url)

    @defer.inlineCallbacks
    def _went_away(self, at_start: bool = False):
        self._reachable = False
        reason = yield unreachable_reason(self._reactor, self.store.address)
        if at_start and reason is ANSWERING:  # still connecting (a starting server, reconnect backoff)
            self._reachable = True
            return
        self.log.warn("Redis at {url} is unreachable: {reason}; psd answers 503 and keeps retrying",
                      url=self.store.address.url, reason=reason)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.store.stop()


#: what unreachable_reason says of a Redis that takes connections (stalled, or psd not connected yet)
ANSWERING = "it accepts connections but does not answer psd's commands"


def unreachable_reason(reactor, address: RedisAddress, timeout: float = 2.0) -> defer.Deferred:
    """Why Redis cannot be used, in the operating system's words (one connection attempt)."""
    from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint
    from twisted.internet.protocol import Factory, Protocol

    endpoint = (UNIXClientEndpoint(reactor, address.path, timeout=timeout) if address.path
                else HostnameEndpoint(reactor, address.host, address.port, timeout=timeout))

    def connected(protocol):
        protocol.transport.loseConnection()
        return ANSWERING

    return endpoint.connect(Factory.forProtocol(Protocol)).addCallbacks(connected, lambda f: f.getErrorMessage())


class WriterService(Service):
    """Lets the writer finish what it accepted before the store goes away."""

    name = "writer"

    def __init__(self, writer: Writer):
        self.writer = writer

    def stopService(self):
        super().stopService()
        return self.writer.whenIdle()


class StartupObjectsFrozen(Service):
    """Keeps what startup built (modules, Twisted, Klein, the services) out of garbage collections.

    Those objects live as long as the process, yet every full collection walked
    them all, and fewer, larger young collections do the rest.  Measured on
    single-point writes at 32 connections: p99 38 -> 14 ms, CPU per request -15%.

    With these thresholds a full collection almost never happens by itself, so
    cyclic garbage (a failed request's frames and the keys they hold, a dropped
    Redis connection) would stay for good: one runs every ``collect_every``
    seconds on the reactor, between requests.
    """

    YOUNG_THRESHOLD = 10000  # objects allocated between young collections (CPython's default: 700)
    COLLECT_EVERY = 2.0  # seconds; a full collection without the frozen objects takes ~1-20 ms

    def __init__(self, reactor, collect_every: float = COLLECT_EVERY, collect=gc.collect):
        self._reactor = reactor
        self._collect_every = collect_every
        self._collect = collect
        self._loop = None

    def startService(self) -> None:
        super().startService()
        self._thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(self.YOUNG_THRESHOLD, 20, 20)
        self._loop = task.LoopingCall(self._collect)
        self._loop.clock = self._reactor
        self._loop.start(self._collect_every, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        gc.set_threshold(*self._thresholds)
        gc.unfreeze()


class StopInOrder(MultiService):
    """Stops its services one after the other, last added first.

    MultiService stops them all at once; psd needs HTTP and NSQ to stop taking
    work, then the writer to finish what it accepted, and only then the store.
    """

    @defer.inlineCallbacks
    def stopService(self):
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield service.stopService()
            except Exception:
                Logger().failure("stopping {service} failed", service=service.name)


def _nsq_consumer(reactor, writer, metrics, nsq: dict, options: Options) -> NSQConsumer:
    return NSQConsumer(reactor, writer, metrics, topic=nsq["topic"], channel=nsq["channel"],
                       nsqd_tcp_addresses=tuple(nsq["nsqd_tcp_addresses"]),
                       lookupd_http_addresses=tuple(nsq["lookupd_http_addresses"]),
                       max_in_flight=nsq["max_in_flight"], max_attempts=nsq["max_attempts"],
                       dead_letter_topic=nsq["dead_letter_topic"], msg_timeout=nsq["msg_timeout"],
                       heartbeat_interval=nsq["heartbeat_interval"], lookupd_poll_interval=nsq["lookupd_poll_interval"],
                       backoff_max=nsq["backoff_max"], stop_timeout=nsq["stop_timeout"],
                       tls=options.nsq_tls, auth_secret=options.nsq_auth_secret)


def makeService(options: Options, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    root = StopInOrder()
    frozen = StartupObjectsFrozen(reactor)
    frozen.setName("gc")
    frozen.setServiceParent(root)

    redis_url, listening = settings.redis["url"], lambda: True
    if redis_url == "embedded" and options["inherited-fd"] is not None:
        # a --workers process: the first process runs the embedded store, the workers share it
        redis_url = "unix://" + embedded_socket_path(settings.embedded["data_dir"])
    elif redis_url == "embedded":
        embedded = EmbeddedRedis(reactor, settings.embedded["data_dir"], settings.embedded["binary"])
        embedded.setServiceParent(root)
        redis_url = embedded.url
        listening = functools.partial(os.path.exists, embedded.socket_path)
    address = RedisAddress(redis_url) if redis_url != settings.redis["url"] else redis_address(settings.redis, redis_url)
    store = RedisStore(address, reply_timeout=settings.redis["reply_timeout"])
    StoreService(reactor, store, listening=listening).setServiceParent(root)

    layout = Layout(settings.redis["prefix"], settings.redis["count_prefix"])
    w = settings.writer
    writer = Writer(reactor, store, layout, dedupe_ttl=w["dedupe_ttl"], window=w["window_ms"] / 1000.0,
                    max_batch_points=w["max_batch_points"], max_script_increments=w["max_script_increments"],
                    max_queue_points=w["max_queue_points"], max_in_flight=w["max_in_flight"],
                    max_script_ms=w["max_script_ms"],
                    history=TotalsHistory(w["set_total_history"], w["set_total_ttl"]))
    WriterService(writer).setServiceParent(root)
    reader = Reader(store, layout, settings.query["max_reads_per_call"], settings.query["max_reads_per_request"])

    metrics = metric_names(settings.metrics["names"])
    health_checks = {}
    if options.role in ("all", "worker"):
        consumer = _nsq_consumer(reactor, writer, metrics, settings.nsq, options)
        consumer.setName("nsq")
        consumer.setServiceParent(root)
        health_checks["nsq"] = lambda: (any(c["state"] == "subscribed" for c in consumer.status()), consumer.status())
    if options.role == "worker":
        return root

    h = settings.http
    api = API(writer, reader, store, metrics, max_points=h["max_points"], max_uids=settings.query["max_uids"],
              health_checks=health_checks, tokens=Tokens(options.write_token, h["read_token"]))
    guarded = RequestGuard(api.resource(), _allowed_hosts(h))
    site = GuardedSite(guarded, reactor, max_body_bytes=h["max_body_bytes"], request_timeout=h["request_timeout"],
                       max_connections=h["max_connections"],
                       max_connections_per_address=h["max_connections_per_address"],
                       first_byte_timeout=h["first_byte_timeout"])
    if not h["access_log"]:
        site.log = lambda request: None  # one log line per request costs about as much as a query
    http = http_service(reactor, h["listen"], site, options["workers"], options["inherited-fd"],
                        options.argv + ["--redis", redis_url])
    http.setName("http")
    http.setServiceParent(root)
    return root
