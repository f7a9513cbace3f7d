"""The Redis edge: connections through txredisapi, the Lua scripts, error mapping.

Writes use a connection of their own so that the scripts run in the order
they were sent (set-total writes depend on it); reads use another pool.
Nothing waits for a connection that is down: a call fails at once with
:class:`StoreUnavailable`, so a client gets its 503 now, not a late write.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, NamedTuple, Optional
from urllib.parse import unquote, urlparse

import txredisapi
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from psd.config import read_setting_file
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
    """Where Redis is and how to log in: ``redis[s]://[user:password@]host:port/db`` or ``unix:///path.sock[?db=N]``.

    ``rediss://`` speaks TLS and checks the server's certificate against
    ``tls_ca_file`` (else the system's CAs) and ``tls_server_name`` (else the
    host); ``tls_cert_file``/``tls_key_file`` give a client certificate.
    ``password`` (e.g. read from ``[redis] password_file``) overrides the URL's.
    ``url`` is the address without the password, for logs.
    """

    def __init__(self, url: str, password: Optional[str] = None, tls_ca_file: str = "", tls_cert_file: str = "",
                 tls_key_file: str = "", tls_server_name: str = ""):
        parsed = urlparse(url)
        self.tls = None
        if parsed.scheme in ("redis", "rediss"):
            self.host = parsed.hostname or "127.0.0.1"
            self.port = parsed.port or 6379
            self.path = None
            db = parsed.path.strip("/") or "0"
        elif parsed.scheme == "unix" and parsed.path:
            self.host = self.port = None
            self.path = parsed.path
            db = dict(p.split("=", 1) for p in parsed.query.split("&") if "=" in p).get("db", "0")
        else:
            raise ValueError(f"redis url {_redacted(url)!r} must be redis://host:port/db, rediss://host:port/db, "
                             "unix:///path.sock or embedded")
        if not db.isdigit():
            raise ValueError(f"redis url {_redacted(url)!r}: the database must be a number")
        self.db = int(db)
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = password if password is not None else (
            unquote(parsed.password) if parsed.password is not None else None)
        if self.username and self.password is None:
            raise ValueError(f"redis url {_redacted(url)!r}: user {self.username!r} needs a password "
                             "(in the url or [redis] password_file)")
        self.url = _redacted(url)
        if parsed.scheme == "rediss":
            self.tls = client_tls(tls_server_name or self.host, tls_ca_file, tls_cert_file, tls_key_file)
        elif tls_ca_file or tls_cert_file or tls_key_file or tls_server_name:
            raise ValueError(f"[redis] tls_* settings need a rediss:// url, not {self.url!r}")

    def connect(self, poolsize: int, reply_timeout: float, connect_timeout: float, on_failure=None):
        """A lazy pool; ``on_failure(message)`` hears of refused certificates and credentials."""
        # dbid None for db 0: no SELECT on connect, one less step that can time out (see RedisStore._pool)
        options = dict(dbid=self.db or None, poolsize=poolsize, password=self.password, replyTimeout=reply_timeout,
                       connectTimeout=connect_timeout, convertNumbers=False, username=self.username)
        if self.path:
            pool = txredisapi.lazyUnixConnectionPool(self.path, **options)
        else:
            pool = txredisapi.lazyConnectionPool(self.host, self.port, ssl_context_factory=self.tls or False, **options)
        pool._factory.protocol = FastEncodingProtocol  # before the reactor runs the connection attempts
        pool._factory.maxDelay = RECONNECT_MAX_DELAY
        pool._factory.psd_on_failure = on_failure
        if pool._factory.deferred is not None:  # a lazy pool's "first connection" Deferred, which no one awaits:
            pool._factory.deferred.addErrback(lambda failure: None)  # its AUTH failure is reported by on_failure
        return pool


def _redacted(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to log."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)).geturl()


def client_tls(server_name: str, ca_file: str = "", cert_file: str = "", key_file: str = ""):
    """TLS client options that verify the server as ``server_name`` (files read now: errors at startup)."""
    from twisted.internet import ssl

    trust = None
    if ca_file:
        pem = read_setting_file("redis", "tls_ca_file", ca_file)
        try:
            trust = ssl.Certificate.loadPEM(pem)
        except Exception as e:
            raise ValueError(f"[redis] tls_ca_file {ca_file!r} is not a PEM certificate: {e}") from None
    client = None
    if cert_file or key_file:
        if not cert_file:
            raise ValueError("[redis] tls_key_file needs tls_cert_file")
        key = read_setting_file("redis", "tls_key_file", key_file) if key_file else b""
        pem = read_setting_file("redis", "tls_cert_file", cert_file) + b"\n" + key
        try:
            client = ssl.PrivateCertificate.loadPEM(pem)
        except Exception as e:
            raise ValueError(f"[redis] tls_cert_file/tls_key_file: not a PEM certificate and key: {e}") from None
    return ssl.optionsForClientTLS(server_name, trustRoot=trust, clientCertificate=client)


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
        if why.check(SSL.Error, VerificationError):
            self._report(f"TLS with the Redis server failed: {_tls_reason(why.value)}")
        super().connectionLost(why)

    def auth(self, password, username=None):
        """AUTH, with a refusal reported (the password itself is never logged)."""

        def refused(reply):
            error = reply.value if isinstance(reply, Failure) else reply
            if isinstance(error, txredisapi.ResponseError):
                user = f"user {username!r}" if username else "the default user"
                self._report(f"Redis refused the credentials of {user}: {error}")
            return reply

        return super().auth(password, username).addBoth(refused)

    def _report(self, message: str) -> None:
        on_failure = getattr(self.factory, "psd_on_failure", None)
        if on_failure is not None:
            on_failure(message)


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
        self._last_refusal = None

    @property
    def started(self) -> bool:
        return bool(self._pools)

    def start(self) -> None:
        self._pools = {"write": self._connect("write"), "read": self._connect("read")}

    def _connect(self, role: str):
        size = 1 if role == "write" else self._read_pool
        return self.address.connect(size, self._reply_timeout, self._reply_timeout, self._connection_refused)

    def _connection_refused(self, message: str) -> None:
        """One error line per reason (a pool retries every few seconds), again once it changed."""
        if message != self._last_refusal:
            self._last_refusal = message
            self.log.error("{reason} ({url})", reason=message, url=self.address.url)

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
        """PING on the write connection and the read pool: healthy only when both can serve."""
        d = defer.gatherResults([self._command(role, "PING") for role in ("write", "read")], consumeErrors=True)
        return d.addCallbacks(lambda replies: replies[-1], lambda failure: failure.value.subFailure)

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


def _tls_reason(error: Exception) -> str:
    """OpenSSL's error list or service_identity's mismatch as one short phrase."""
    if isinstance(error, SSL.Error) and error.args and isinstance(error.args[0], list):
        return "; ".join(str(entry[-1]) for entry in error.args[0] if entry) or str(error)
    if isinstance(error, VerificationError):
        names = [getattr(e, "mismatched_id", e) for e in error.errors]
        names = [getattr(n, "hostname", getattr(n, "ip", n)) for n in names]
        return "its certificate is not for " + ", ".join(
            n.decode() if isinstance(n, bytes) else str(n) for n in names)
    return str(error)


def parse_sums(reply) -> list[int]:
    """The read script's answer, ``"12,0,-3"`` -> exact integer sums."""
    if isinstance(reply, bytes):
        reply = reply.decode()
    return list(map(int, reply.split(","))) if reply else []

