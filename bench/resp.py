"""A minimal blocking RESP client for the benchmarks' probes (INFO, SLOWLOG, totals).

The benchmarks must not share psd's client library: what they measure and
what they check with stay independent.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager


class RedisProbe:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        self._sock = socket.create_connection((host, port), timeout=60)
        self._file = self._sock.makefile("rb")

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def call(self, *args):
        parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self._sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self._read()

    def _read(self):
        line = self._file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self._file.read(size + 2)[:-2]
            return data.decode("utf-8", "replace")
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._read() for _ in range(size)]
        raise RuntimeError(f"unexpected RESP line {line!r}")

    def command_calls(self) -> dict[str, tuple[int, int]]:
        """``INFO commandstats`` as command -> (calls, usec); commands run inside scripts included."""
        stats = {}
        for line in self.call("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, fields = line[len("cmdstat_"):].split(":", 1)
                values = dict(item.split("=") for item in fields.split(","))
                stats[name] = (int(values["calls"]), int(values["usec"]))
        return stats

    def sum_fields(self, pattern: str) -> int:
        """Sum of every field of every hash matching ``pattern`` (SCAN inside one script)."""
        return int(self.call("EVAL", _SUM_SCRIPT, 0, pattern))


@contextmanager
def scratch_redis(port: int, launcher: tuple = ()):
    """A throwaway redis-server on ``port`` (no persistence, in a temp dir): yields a probe on it."""
    workdir = tempfile.mkdtemp(prefix="psd-bench-redis-")
    server = subprocess.Popen([*launcher, shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                               "--dir", workdir, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                probe = RedisProbe(port)
                probe.call("PING")
                break
            except (OSError, RuntimeError):
                time.sleep(0.05)
        try:
            yield probe
        finally:
            probe.close()
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


_SUM_SCRIPT = """
local cursor, total = '0', 0
repeat
  local reply = redis.call('SCAN', cursor, 'MATCH', ARGV[1], 'COUNT', 1000)
  cursor = reply[1]
  for _, key in ipairs(reply[2]) do
    for _, value in ipairs(redis.call('HVALS', key)) do total = total + tonumber(value) end
  end
until cursor == '0'
return string.format('%d', total)
"""
