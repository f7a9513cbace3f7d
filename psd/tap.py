"""The one assembly point: ``twistd psd`` options and the service tree."""

from __future__ import annotations

import gc
import sys

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python import usage
from psd import config
from psd.api import API
from psd.embedded import EmbeddedRedis, find_server_binary
from psd.embedded import socket_path as embedded_socket_path
from psd.keys import Layout
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
        ["config", "c", None, "Path of a settings file (see conf/settings.toml.dist)."],
        ["role", None, None, "all (HTTP and NSQ), server (HTTP only) or worker (NSQ only); "
                             "default: all when NSQ is configured, else server."],
        ["http", None, None, "HTTP server endpoint, e.g. tcp:1155:interface=127.0.0.1 (overrides [http] listen)."],
        ["redis", None, None, "redis://host:port/db, unix:///path.sock, or embedded (overrides [redis] url)."],
        ["data-dir", None, None, "Data directory of the embedded store (overrides [embedded] data_dir)."],
        ["workers", None, 1, "HTTP worker processes sharing the listening socket (see psd/workers.py).", int],
        ["inherited-fd", None, None, "Internal: serve on this inherited listening socket (a started worker).", int],
    ]

    def parseOptions(self, options=None) -> None:
        #: the arguments as given, for the worker processes started with --workers
        self.argv = list(sys.argv[1:] if options is None else options)
        super().parseOptions(options)

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
            for option, (section, name) in {"http": ("http", "listen"), "redis": ("redis", "url"),
                                            "data-dir": ("embedded", "data_dir")}.items():
                if self[option] is not None:
                    settings.set(section, name, self[option])
            for values, name in ((self.nsqd, "nsqd_tcp_addresses"), (self.lookupd, "lookupd_http_addresses")):
                if values:
                    settings.set("nsq", name, values)
            self.role = _role(self["role"], settings.nsq)
            _check_endpoint(settings.http["listen"])
            if settings.redis["url"] == "embedded":
                settings.set("embedded", "binary", find_server_binary(settings.embedded["binary"]))
            else:
                RedisAddress(settings.redis["url"])
            self.write_token = _write_token(settings.http)
            if self["workers"] < 1:
                raise ValueError("--workers must be at least 1")
            if self["workers"] > 1:
                tcp_address(settings.http["listen"])
        except (config.SettingsError, ValueError, FileNotFoundError) as e:
            raise usage.UsageError(str(e)) from None
        self.settings = settings


def _check_endpoint(description: str) -> None:
    """Parse ``[http] listen`` now, so a typo is one line at startup, not a traceback later.

    serverFromString needs a reactor object but only builds the endpoint: no I/O happens.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except (ValueError, TypeError, KeyError) as e:
        raise config.SettingsError(f"settings: [http] listen {description!r} is not a server endpoint: {e}") from None


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
    try:
        with open(http["token_file"]) as f:
            token = f.readline().strip()
    except OSError as e:
        raise config.SettingsError(f"settings: [http] token_file: cannot read it: {e.strerror}") from None
    if not token:
        raise config.SettingsError("settings: [http] token_file is empty")
    return token


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
    """Connects to Redis and loads the scripts, retrying until Redis answers."""

    log = Logger()
    name = "store"

    def __init__(self, reactor, store: RedisStore, retry_every: float = 0.2):
        self._reactor = reactor
        self.store = store
        self._retry_every = retry_every
        self._loop = None

    def startService(self) -> None:
        super().startService()
        self.store.start()
        self._loop = task.LoopingCall(self._try_load)
        self._loop.clock = self._reactor
        self._loop.start(self._retry_every, now=False)

    @defer.inlineCallbacks
    def _try_load(self):
        try:
            yield self.store.ping()
            yield self.store.load_scripts()
        except Exception as e:  # not up yet, or went away again: the next tick retries
            self.log.debug("store not ready: {error}", error=e)
            return
        self.log.info("store ready at {url}", url=self.store.address.url)
        self.log.info("scripts loaded: {scripts}",
                      scripts=", ".join(f"{script.name} {script.sha}" for script in self.store.scripts))
        self._loop.stop()

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self.store.stop()


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
    """

    YOUNG_THRESHOLD = 10000  # objects allocated between young collections (CPython's default: 700)

    def startService(self) -> None:
        super().startService()
        self._thresholds = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(self.YOUNG_THRESHOLD, 20, 20)

    def stopService(self) -> None:
        super().stopService()
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


def _nsq_consumer(reactor, writer, metrics, nsq: dict) -> NSQConsumer:
    return NSQConsumer(reactor, writer, metrics, topic=nsq["topic"], channel=nsq["channel"],
                       nsqd_tcp_addresses=tuple(nsq["nsqd_tcp_addresses"]),
                       lookupd_http_addresses=tuple(nsq["lookupd_http_addresses"]),
                       max_in_flight=nsq["max_in_flight"], max_attempts=nsq["max_attempts"],
                       dead_letter_topic=nsq["dead_letter_topic"], msg_timeout=nsq["msg_timeout"],
                       heartbeat_interval=nsq["heartbeat_interval"], lookupd_poll_interval=nsq["lookupd_poll_interval"],
                       backoff_max=nsq["backoff_max"], stop_timeout=nsq["stop_timeout"])


def makeService(options: Options, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    root = StopInOrder()
    frozen = StartupObjectsFrozen()
    frozen.setName("gc")
    frozen.setServiceParent(root)

    redis_url = settings.redis["url"]
    if redis_url == "embedded" and options["inherited-fd"] is not None:
        # a --workers process: the first process runs the embedded store, the workers share it
        redis_url = "unix://" + embedded_socket_path(settings.embedded["data_dir"])
    elif redis_url == "embedded":
        embedded = EmbeddedRedis(reactor, settings.embedded["data_dir"], settings.embedded["binary"])
        embedded.setServiceParent(root)
        redis_url = embedded.url
    store = RedisStore(RedisAddress(redis_url), reply_timeout=settings.redis["reply_timeout"])
    StoreService(reactor, store).setServiceParent(root)

    layout = Layout(settings.redis["prefix"], settings.redis["count_prefix"])
    w = settings.writer
    writer = Writer(reactor, store, layout, dedupe_ttl=w["dedupe_ttl"], window=w["window_ms"] / 1000.0,
                    max_batch_points=w["max_batch_points"], max_script_increments=w["max_script_increments"],
                    max_queue_points=w["max_queue_points"], max_in_flight=w["max_in_flight"])
    WriterService(writer).setServiceParent(root)
    reader = Reader(store, layout, settings.query["max_reads_per_call"])

    metrics = metric_names(settings.metrics["names"])
    health_checks = {}
    if options.role in ("all", "worker"):
        consumer = _nsq_consumer(reactor, writer, metrics, settings.nsq)
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
