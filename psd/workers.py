"""``--workers N``: N psd processes accepting on one port, so HTTP ingest uses N cores.

The first process makes N listening sockets on the configured address, all
with SO_REUSEPORT, keeps one and starts N - 1 more processes (``python -m
twisted psd <same options> --inherited-fd 3``), each with one of the others as
its file descriptor 3, which it adopts (``reactor.adoptStreamPort``).  The
kernel spreads new connections evenly over the sockets.  (With one shared
socket, whichever process woke first took a whole burst: 29 of wrk's 32
connections went to one process.)  The first process keeps the workers'
sockets open, so connections that reach a restarting worker's socket wait in
its backlog instead of being refused.  Each worker is a whole psd with its own
writer and Redis connections, so a request is acknowledged by the process that
wrote it.
A worker that dies is restarted after a second; stopping the first process
stops them all.  Workers log to the first process's stdout and stderr.
"""

from __future__ import annotations

import os
import re
import socket
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet import defer, error, protocol
from twisted.logger import Logger

#: the descriptor number the listening socket has in a worker
WORKER_FD = 3
RESTART_DELAY = 1.0


def http_service(reactor, endpoint: str, site, workers: int, inherited_fd, worker_args: list) -> Service:
    """The service that serves ``site``: alone, as the first of ``workers``, or as a started worker."""
    if inherited_fd is not None:
        return AdoptedPortService(reactor, inherited_fd, site)
    if workers == 1:
        return ListeningService(endpoint, serverFromString(reactor, endpoint), site)
    return SharedPortService(reactor, endpoint, site, workers - 1, worker_args)


def cannot_listen(endpoint: str, error: Exception) -> SystemExit:
    """One line naming the address and the setting; under twistd it ends the process with status 1."""
    reason = getattr(error, "socketError", None) or error
    return SystemExit(f"psd: cannot listen on {endpoint} ([http] listen or --http): "
                      f"{getattr(reason, 'strerror', None) or reason}")


class ListeningService(StreamServerEndpointService):
    """The HTTP port of a single process: a port in use stops psd at startup with one line, not a traceback."""

    _raiseSynchronously = True

    def __init__(self, description: str, endpoint, factory):
        super().__init__(endpoint, factory)
        self._description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except error.CannotListenError as e:
            raise cannot_listen(self._description, e) from None


def tcp_address(endpoint: str) -> tuple[socket.AddressFamily, str, int, int]:
    """(family, interface, port, backlog) of a ``tcp:`` or ``tcp6:`` server endpoint string."""
    kind, *fields = [field.replace("\\:", ":") for field in re.split(r"(?<!\\):", endpoint)]
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"--workers needs a tcp: or tcp6: endpoint, not {endpoint!r}")
    positional = [field for field in fields if "=" not in field]
    options = dict(field.split("=", 1) for field in fields if "=" in field)
    port = options.pop("port", positional[0] if positional else None)
    if port is None or not port.isdigit() or len(positional) > 1 or options.keys() - {"interface", "backlog"}:
        raise ValueError(f"--workers: cannot read the port of {endpoint!r} (tcp:PORT[:interface=...][:backlog=...])")
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = options.get("interface", "::" if kind == "tcp6" else "0.0.0.0")
    return family, interface, int(port), int(options.get("backlog", 50))


def reuseport_sockets(endpoint: str, count: int) -> list[socket.socket]:
    """``count`` listening sockets on the endpoint's address (port 0: the port the first got)."""
    family, interface, port, backlog = tcp_address(endpoint)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((interface, sockets[0].getsockname()[1] if len(sockets) > 1 else port))
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SharedPortService(Service):
    """Listens on ``endpoint`` and runs ``extra`` worker processes that accept on the same port."""

    log = Logger()

    def __init__(self, reactor, endpoint: str, factory, extra: int, worker_args: list):
        self._reactor = reactor
        self._endpoint = endpoint
        self._factory = factory
        self._extra = extra
        self._worker_args = worker_args
        self._port = None
        self._sockets: list[socket.socket] = []
        self._workers: dict[int, _Worker] = {}

    def startService(self) -> None:
        super().startService()
        try:
            sockets = reuseport_sockets(self._endpoint, self._extra + 1)
        except (OSError, ValueError) as e:
            raise cannot_listen(self._endpoint, e) from None
        own, self._sockets = sockets[0], sockets[1:]
        self._port = self._reactor.adoptStreamPort(own.fileno(), own.family, self._factory)
        own.close()  # the port holds its own duplicate
        for index in range(1, self._extra + 1):
            self._start_worker(index)

    def _start_worker(self, index: int) -> None:
        if not self.running:
            return
        worker = self._workers[index] = _Worker(self, index)
        # text, like twistd's own log: twist writes JSON events when its output is not a terminal
        args = [sys.executable, "-m", "twisted", "--log-format=text", "psd", *self._worker_args,
                "--inherited-fd", str(WORKER_FD)]
        self._reactor.spawnProcess(worker, sys.executable, args, env=os.environ,
                                   childFDs={1: 1, 2: 2, WORKER_FD: self._sockets[index - 1].fileno()})
        self.log.info("started worker {index} (pid {pid})", index=index, pid=worker.transport.pid)

    def worker_ended(self, worker: "_Worker", reason) -> None:
        if self.running:
            self.log.warn("worker {index} ended ({reason}); restarting it in {delay} s", index=worker.index,
                          reason=reason.value, delay=RESTART_DELAY)
            self._reactor.callLater(RESTART_DELAY, self._start_worker, worker.index)

    def stopService(self):
        super().stopService()
        stopping = []
        for worker in self._workers.values():
            if not worker.ended.called:
                try:
                    worker.transport.signalProcess("TERM")
                except error.ProcessExitedAlready:
                    pass
                stopping.append(worker.ended)
        if self._port is not None:
            stopping.append(defer.maybeDeferred(self._port.stopListening))
        for sock in self._sockets:
            sock.close()
        return defer.DeferredList(stopping)


class _Worker(protocol.ProcessProtocol):
    def __init__(self, service: SharedPortService, index: int):
        self.service = service
        self.index = index
        self.ended = defer.Deferred()

    def processEnded(self, reason) -> None:
        self.ended.callback(None)
        self.service.worker_ended(self, reason)


class AdoptedPortService(Service):
    """Serves ``factory`` on a listening socket inherited from the first psd process."""

    log = Logger()

    def __init__(self, reactor, fd: int, factory):
        self._reactor = reactor
        self._fd = fd
        self._factory = factory
        self._port = None

    def startService(self) -> None:
        super().startService()
        probe = socket.socket(fileno=os.dup(self._fd))
        family = probe.family
        probe.close()
        self._port = self._reactor.adoptStreamPort(self._fd, family, self._factory)
        os.close(self._fd)  # the port holds its own duplicate
        self.log.info("worker accepting on {address}", address=self._port.getHost())

    def stopService(self):
        super().stopService()
        return defer.maybeDeferred(self._port.stopListening)
