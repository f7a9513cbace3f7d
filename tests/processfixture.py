"""psd as the real `twistd psd` child process, for tests that kill it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def wait_until(ready, process: subprocess.Popen, name: str, timeout: float = 20.0) -> None:
    """Poll ``ready`` until it is true; a child process needs wall-clock time to start."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start (exit code {process.poll()})")
        time.sleep(0.05)


def http_call(port: int, method: str, path: str, body=None, headers=None, timeout: float = 10.0):
    """(status, decoded JSON) or (None, None) when psd is not answering."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if body is not None:
            headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    except OSError:
        return None, None
    finally:
        connection.close()


class PsdProcess:
    """`twistd -n psd ARGS` in ``workdir``; ``start`` waits for /health to say 200."""

    def __init__(self, testcase, workdir: str, http_port: int, *args: str):
        self.workdir, self.port, self.args = workdir, http_port, list(args)
        self.process = None
        self.log = open(os.path.join(workdir, "psd.log"), "ab")
        testcase.addCleanup(self.log.close)
        testcase.addCleanup(self.kill)

    def start(self, healthy: bool = True) -> None:
        self.process = subprocess.Popen(
            [*TWISTD, "-n", "--pidfile=", "psd", "--http", f"tcp:{self.port}:interface=127.0.0.1", *self.args],
            cwd=self.workdir, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        if healthy:
            wait_until(lambda: self.call("GET", "/health")[0] == 200, self.process, "psd")

    def call(self, method: str, path: str, body=None, headers=None):
        return http_call(self.port, method, path, body, headers)

    def rss(self) -> int:
        """Resident memory of the psd process in bytes (0 when it is not running)."""
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
        except (AttributeError, OSError, StopIteration):
            return 0

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(60)
        self.process = None
