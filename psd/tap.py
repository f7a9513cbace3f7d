"""The one assembly point: ``twistd psd`` options and the service tree."""

from __future__ import annotations

import sys

from twisted.application.service import MultiService, Service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python import usage
from psd import config
from psd.api import API, is_write
from psd.embedded import EmbeddedRedis
from psd.keys import Layout
from psd.reader import Reader
from psd.store import RedisAddress, RedisStore
from psd.validation import metric_names
from psd.web import GuardedSite, TokenGuard
from psd.workers import http_service
from psd.writer import Writer


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "psd, the Point Space Daemon: activity metrics summed at every calendar granularity."
    optParameters = [
        ["config", "c", None, "Path of a settings file (see conf/settings.toml.dist)."],
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

    def postOptions(self) -> None:
        try:
            settings = config.load(self["config"])
            for option, (section, name) in {"http": ("http", "listen"), "redis": ("redis", "url"),
                                            "data-dir": ("embedded", "data_dir")}.items():
                if self[option] is not None:
                    settings.set(section, name, self[option])
            if settings.redis["url"] != "embedded":
                RedisAddress(settings.redis["url"])
            self.write_token = _write_token(settings.http)
            if self["workers"] < 1:
                raise ValueError("--workers must be at least 1")
        except (config.SettingsError, ValueError) as e:
            raise usage.UsageError(str(e)) from None
        self.settings = settings


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
        self.log.info("scripts loaded: write {write}, read {read}",
                      write=self.store.write_script.sha, read=self.store.read_script.sha)
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


def makeService(options: Options, reactor=None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    settings = options.settings
    root = MultiService()

    redis_url = settings.redis["url"]
    if redis_url == "embedded":
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

    h = settings.http
    api = API(writer, reader, store, metric_names(settings.metrics["names"]),
              max_points=h["max_points"], max_uids=settings.query["max_uids"])
    guarded = TokenGuard(api.resource(), is_write, options.write_token, h["read_token"])
    site = GuardedSite(guarded, reactor, max_body_bytes=h["max_body_bytes"], request_timeout=h["request_timeout"],
                       max_connections=h["max_connections"], access_log=h["access_log"])
    http = http_service(reactor, h["listen"], site, options["workers"], options["inherited-fd"],
                        options.argv + ["--redis", redis_url])
    http.setName("http")
    http.setServiceParent(root)
    return root
