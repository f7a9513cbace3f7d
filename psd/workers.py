"""``--workers N``: N psd processes accepting on one listening socket, so HTTP ingest uses N cores.

The first process listens on the configured endpoint and starts N - 1 more
(``python -m twisted psd <same options> --inherited-fd 3``) with the
listening socket as their file descriptor 3; each adopts it
(``reactor.adoptStreamPort``) and the kernel hands every new connection to
one of them.  Each worker is a whole psd with its own writer and Redis
connections, so a request is acknowledged by the process that wrote it.
A worker that dies is restarted after a second; stopping the first process
stops them all.  Workers log to the first process's stdout and stderr.
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.application import strports
from twisted.application.service import Service
from twisted.internet import defer, error, protocol
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

#: the descriptor number the listening socket has in a worker
WORKER_FD = 3
RESTART_DELAY = 1.0


def http_service(reactor, endpoint: str, site, workers: int, inherited_fd, worker_args: list) -> Service:
    """The service that serves ``site``: alone, as the first of ``workers``, or as a started worker."""
    if inherited_fd is not None:
        return AdoptedPortService(reactor, inherited_fd, site)
    if workers == 1:
        return strports.service(endpoint, site, reactor=reactor)
    return SharedPortService(reactor, endpoint, site, workers - 1, worker_args)


class SharedPortService(Service):
    """Listens on ``endpoint`` and runs ``extra`` worker processes that accept on the same socket."""

    log = Logger()

    def __init__(self, reactor, endpoint: str, factory, extra: int, worker_args: list):
        self._reactor = reactor
        self._endpoint = endpoint
        self._factory = factory
        self._extra = extra
        self._worker_args = worker_args
        self._port = None
        self._listening = None
        self._workers: dict[int, _Worker] = {}

    def startService(self) -> None:
        super().startService()
        self._listening = serverFromString(self._reactor, self._endpoint).listen(self._factory)
        self._listening.addCallback(self._listened)
        self._listening.addErrback(lambda failure: self.log.failure("cannot listen on {endpoint}", failure,
                                                                    endpoint=self._endpoint))

    def _listened(self, port) -> None:
        self._port = port
        for index in range(1, self._extra + 1):
            self._start_worker(index)

    def _start_worker(self, index: int) -> None:
        if not self.running:
            return
        worker = self._workers[index] = _Worker(self, index)
        args = [sys.executable, "-m", "twisted", "psd", *self._worker_args, "--inherited-fd", str(WORKER_FD)]
        self._reactor.spawnProcess(worker, sys.executable, args, env=os.environ,
                                   childFDs={1: 1, 2: 2, WORKER_FD: self._port.fileno()})
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
        elif self._listening is not None:
            self._listening.cancel()
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
