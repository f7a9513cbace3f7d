"""Starts the embedded store's server so that it cannot outlive psd.

Run by psd as ``python -I embedded_launcher.py PARENT_PID SOCKET SERVER ARGS...``
(the standard library only: it is spawned as a script, not imported).  It

1. asks the kernel to send the server SIGTERM when psd dies (Linux
   ``PR_SET_PDEATHSIG``, kept across exec), so a ``kill -9`` of psd does
   not leave an orphaned server holding the data directory;
2. stops a stale server still answering on the socket (one left by a psd
   that died before this launcher existed, or on a system without
   ``PR_SET_PDEATHSIG``): ``SHUTDOWN`` lets it flush its append-only file;
3. becomes the server (exec), so psd supervises the server's own pid.
"""

import ctypes
import os
import signal
import socket
import sys
import time

PR_SET_PDEATHSIG = 1
#: the start of the lines psd logs as warnings (the server's own output is debug)
NOTICE = "psd-launcher: "


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the stale-server check below still applies
        pass
    if os.getppid() != parent_pid:  # psd died before the request above took effect
        sys.exit("psd exited before its embedded store started")


def command(path: str, *words: str) -> bytes:
    """One RESP command over the unix socket; the raw reply (enough to read INFO and +PONG)."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(2)
        connection.connect(path)
        connection.sendall(b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w.encode()) for w in words))
        return connection.recv(65536)


def stop_stale_server(path: str) -> None:
    try:
        info = command(path, "INFO", "server")
    except OSError:  # nothing listens: at most a stale socket file, which the server replaces
        return
    pid = next((int(line.split(b":")[1]) for line in info.split(b"\r\n") if line.startswith(b"process_id:")), None)
    print(f"{NOTICE}stopping a stale embedded store (pid {pid}) still serving {path}", file=sys.stderr, flush=True)
    try:
        command(path, "SHUTDOWN")
    except OSError:  # SHUTDOWN closes the connection without a reply
        pass
    deadline = time.monotonic() + 10
    while pid is not None and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def main(argv: list) -> None:
    parent_pid, path, server = int(argv[1]), argv[2], argv[3]
    die_with_parent(parent_pid)
    stop_stale_server(path)
    os.execv(server, argv[3:])


if __name__ == "__main__":
    main(sys.argv)
