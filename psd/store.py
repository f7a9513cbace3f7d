"""The Redis edge: connections through txredisapi, the Lua scripts, error mapping.

Writes use a connection of their own so that the scripts run in the order
they were sent (set-total writes depend on it); reads use another pool.
Nothing waits for a connection that is down: a call fails at once with
:class:`StoreUnavailable`, so a client gets its 503 now, not a late write.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import txredisapi
from twisted.internet import defer
from twisted.logger import Logger

from psd.errors import InvalidInput, RejectedByStore, StoreUnavailable

def _lua_dir() -> Path:
    """``lua/`` is installed as the package ``psd.lua``; in a checkout it sits beside ``psd/``."""
    installed = Path(__file__).parent / "lua"
    return installed if installed.is_dir() else Path(__file__).parent.parent / "lua"


LUA_DIR = _lua_dir()
#: Error replies that say "not now": the data was not touched, try later.
_TRANSIENT = ("LOADING", "BUSY", "OOM", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS")


class Script:
    """A Lua script from ``lua/``, run with EVALSHA and reloaded on NOSCRIPT."""

    def __init__(self, name: str):
        self.name = name
        self.source = (LUA_DIR / f"{name}.lua").read_bytes()
        self.sha = hashlib.sha1(self.source).hexdigest()


class RedisAddress:
    """Where Redis is: ``redis://host:port/db`` or ``unix:///path.sock[?db=N]``."""

    def __init__(self, url: str):
        parsed = urlparse(url)
        self.url = url
        if parsed.scheme == "redis":
            self.host = parsed.hostname or "127.0.0.1"
            self.port = parsed.port or 6379
            self.path = None
            db = parsed.path.strip("/") or "0"
        elif parsed.scheme == "unix" and parsed.path:
            self.host = self.port = None
            self.path = parsed.path
            db = dict(p.split("=", 1) for p in parsed.query.split("&") if "=" in p).get("db", "0")
        else:
            raise ValueError(f"redis url {url!r} must be redis://host:port/db, unix:///path.sock or embedded")
        if not db.isdigit():
            raise ValueError(f"redis url {url!r}: the database must be a number")
        self.db = int(db)
        self.password = parsed.password

    def connect(self, poolsize: int, reply_timeout: float, connect_timeout: float):
        # dbid None for db 0: no SELECT on connect, one less step that can time out (see RedisStore._pool)
        options = dict(dbid=self.db or None, poolsize=poolsize, password=self.password, replyTimeout=reply_timeout,
                       connectTimeout=connect_timeout, convertNumbers=False)
        if self.path:
            pool = txredisapi.lazyUnixConnectionPool(self.path, **options)
        else:
            pool = txredisapi.lazyConnectionPool(self.host, self.port, **options)
        pool._factory.protocol = FastEncodingProtocol  # before the reactor runs the connection attempts
        pool._factory.maxDelay = RECONNECT_MAX_DELAY
        return pool


#: Longest wait between reconnection attempts (txredisapi's default is 10 s: a restarted
#: Redis would leave the reads failing that long after the writes recovered).
RECONNECT_MAX_DELAY = 2.0


class EncodedArgs(NamedTuple):
    """``count`` command arguments already in RESP form (``$<length>\r\n<bytes>\r\n`` each).

    The reader builds thousands of hash keys per script call from a few
    templates; handing them over encoded saves encoding each one again.
    """

    data: bytes
    count: int


class FastEncodingProtocol(txredisapi.RedisProtocol):
    """txredisapi's protocol with a leaner command encoder.

    A write-script call carries thousands of keys; txredisapi encodes each
    argument through a chain of type checks (a quarter of psd's CPU on
    batch traffic).  Strings, bytes and ints are encoded here exactly as it
    would; anything else goes to its encoder.  :class:`EncodedArgs` (the read
    path's keys) go as they are.
    """

    def _build_command(self, *args, **kwargs) -> bytes:
        count = len(args)
        parts = [b""]
        append = parts.append
        for arg in args:
            kind = type(arg)
            if kind is str:
                try:
                    data = arg.encode(self.charset, self.errors)
                except UnicodeEncodeError:
                    data = self._encode_value(arg)  # raises txredisapi's InvalidData
            elif kind is bytes:
                data = arg
            elif kind is int:
                data = b"%d" % arg
            elif kind is EncodedArgs:
                append(arg.data)
                count += arg.count - 1
                continue
            else:
                data = self._encode_value(arg)
            append(b"$%d\r\n%s\r\n" % (len(data), data))
        parts[0] = b"*%d\r\n" % count
        return b"".join(parts)

    def connectionLost(self, why) -> None:
        """Let go of what was never sent when the connection goes.

        A reply timeout aborts the connection with the commands Redis did not
        take still in the transport (tens of MB for a large read); transport,
        connector and protocol refer to each other, so without this the buffer
        lives until a full garbage collection, which may be a long time.
        """
        drop_unsent(self.transport)
        super().connectionLost(why)


#: Where Twisted transports keep bytes not yet written: a TCP transport
#: (``twisted.internet.abstract.FileDescriptor``) and a TLS layer above it.
_UNSENT_BUFFERS = {"dataBuffer": bytes, "_tempDataBuffer": list, "_tempDataLen": int, "offset": int,
                   "_appSendBuffer": list}


def drop_unsent(transport) -> None:
    """Empty the write buffers of ``transport`` and of the transports beneath it."""
    seen = 0
    while transport is not None and seen < 4:
        for name, empty in _UNSENT_BUFFERS.items():
            if name in getattr(transport, "__dict__", ()):
                setattr(transport, name, empty())
        transport, seen = getattr(transport, "transport", None), seen + 1


class RedisStore:
    """Runs psd's scripts on Redis and turns Redis' errors into psd's."""

    log = Logger()

    def __init__(self, address: RedisAddress, reply_timeout: float = 5.0, read_pool: int = 2):
        self.address = address
        self._reply_timeout = reply_timeout
        self._read_pool = read_pool
        self.write_script = Script("write")
        self.read_script = Script("read")
        self.members_script = Script("members")
        self.scripts = (self.write_script, self.read_script, self.members_script)
        self._pools: dict = {}

    def start(self) -> None:
        self._pools = {"write": self._connect("write"), "read": self._connect("read")}

    def _connect(self, role: str):
        size = 1 if role == "write" else self._read_pool
        return self.address.connect(size, self._reply_timeout, self._reply_timeout)

    def _pool(self, role: str):
        """The pool for ``role``, replaced if txredisapi gave up on it.

        txredisapi stops reconnecting for good when AUTH or SELECT fails on a
        new connection, which a Redis that is stopped (SIGSTOP) or overloaded
        makes happen through a reply timeout; psd must recover by itself.
        """
        pool = self._pools.get(role)
        if pool is not None and pool._factory.stopped:
            self.log.warn("Redis {role} connections had stopped retrying; reconnecting", role=role)
            pool.disconnect()
            pool = self._pools[role] = self._connect(role)
        return pool

    @defer.inlineCallbacks
    def stop(self):
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            yield pool.disconnect()

    def connected(self) -> bool:
        return all(self._pools.get(role) is not None and self._pools[role]._factory.size > 0
                   for role in ("write", "read"))

    @defer.inlineCallbacks
    def load_scripts(self):
        """SCRIPT LOAD every script (also done lazily on NOSCRIPT)."""
        for script in self.scripts:
            sha = yield self._command("write", "SCRIPT", "LOAD", script.source)
            if sha != script.sha:
                raise RuntimeError(f"Redis hashed lua/{script.name}.lua as {sha}, expected {script.sha}")
        return [script.sha for script in self.scripts]

    def write(self, keys: list, args: list) -> defer.Deferred:
        return self._evalsha("write", self.write_script, keys, args)

    def read(self, keys: list, args: list) -> defer.Deferred:
        return self._evalsha("read", self.read_script, keys, args)

    def members(self, keys: list) -> defer.Deferred:
        """The members of each set in ``keys``: a list of lists of str, in order."""
        d = self._evalsha("read", self.members_script, keys, [])
        return d.addCallback(lambda reply: [part.split(",") if part else [] for part in reply.split(";")])

    def ping(self) -> defer.Deferred:
        return self._command("read", "PING")

    def command(self, *args: Any) -> defer.Deferred:
        """Any other command, on the read pool (HGETALL, SMEMBERS, ...)."""
        return self._command("read", *args)

    def _evalsha(self, role: str, script: Script, keys, args: list) -> defer.Deferred:
        """Run ``script``; ``keys`` is a list or :class:`EncodedArgs`."""
        if type(keys) is EncodedArgs:
            count, keys = keys.count, (keys,)
        else:
            count = len(keys)
        d = self._command(role, "EVALSHA", script.sha, count, *keys, *args)

        def no_script(failure):  # Redis restarted or SCRIPT FLUSH: EVAL sends the source and caches it again
            failure.trap(_NoScript)
            self.log.info("lua/{name}.lua was not in Redis' script cache; sending it with EVAL", name=script.name)
            return self._command(role, "EVAL", script.source, count, *keys, *args)

        return d.addErrback(no_script)

    def _command(self, role: str, *args: Any) -> defer.Deferred:
        pool = self._pool(role)
        if pool is None or pool._factory.size == 0:
            return defer.fail(StoreUnavailable("Redis is not connected"))
        try:
            d = pool.execute_command(*args)
        except Exception as e:  # txredisapi raises synchronously when the connection just died
            return defer.fail(_translate(e))
        return d.addErrback(lambda failure: defer.fail(_translate(failure.value)))


class _NoScript(Exception):
    pass


def _translate(error: Exception) -> Exception:
    """Map a txredisapi failure to StoreUnavailable / RejectedByStore / NOSCRIPT."""
    if isinstance(error, (StoreUnavailable, RejectedByStore, InvalidInput, _NoScript)):
        return error
    if isinstance(error, txredisapi.ResponseError):
        message = str(error.args[0]) if error.args else str(error)
        if message.startswith("NOSCRIPT"):
            return _NoScript(message)
        if message.startswith(_TRANSIENT):
            return StoreUnavailable(f"Redis: {message}")
        return RejectedByStore(message)
    return StoreUnavailable(f"Redis: {error.__class__.__name__}: {error}")


def parse_sums(reply) -> list[int]:
    """The read script's answer, ``"12,0,-3"`` -> exact integer sums."""
    if isinstance(reply, bytes):
        reply = reply.decode()
    return list(map(int, reply.split(","))) if reply else []

