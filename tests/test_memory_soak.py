"""Reads that hit ``reply_timeout`` must not leave their memory behind (issue 16, finding 4).

Each timed-out read aborts a Redis connection holding the unsent commands of
a large read; under psd's GC tuning that garbage used to pile up for good.
The real ``twistd psd`` process is measured, so its own GC settings apply.
"""

from __future__ import annotations

import os
import signal
import time

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.processfixture import PsdProcess, http_call
from tests.redisfixture import RedisServer, free_port

TIMEOUTS = 50
REPLY_TIMEOUT = 0.3
#: A read of 500 users x 4 metrics over all time: ~1,000 hash keys per window, ~15 MB of commands.
LARGE_READ = {"uids": list(range(500)), "metrics": ["points", "steps", "distance", "calories"],
              "from": 12345, "to": 2**33 - 12345}


class TimedOutReadsTests(TestCase):
    timeout = 240

    @defer.inlineCallbacks
    def setUp(self):
        self.server = RedisServer(self)
        yield self.server.start()
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        settings = os.path.join(workdir, "settings.toml")
        with open(settings, "w") as f:
            # a read big enough to time out: above the default read budget
            f.write(f"[redis]\nreply_timeout = {REPLY_TIMEOUT}\n[query]\nmax_reads_per_request = 1000000\n")
        self.psd = PsdProcess(self, workdir, free_port(), "--redis", self.server.url, "--config", settings)
        self.psd.start()

    def timed_out_read(self) -> None:
        """One large read while Redis is stopped: a 503, then Redis back and psd healthy again."""
        self.server.kill(signal.SIGSTOP)
        try:
            status, body = http_call(self.psd.port, "POST", "/v1/sum", LARGE_READ, timeout=60)
        finally:
            self.server.kill(signal.SIGCONT)
        self.assertEqual(status, 503, body)
        deadline = time.monotonic() + 30
        while http_call(self.psd.port, "POST", "/v1/sum", {**LARGE_READ, "uids": [1]})[0] != 200:
            self.assertLess(time.monotonic(), deadline, "psd did not recover after Redis came back")
            time.sleep(0.05)

    def test_rss_stays_flat_across_50_timeouts(self):
        for _ in range(5):  # warm up: allocator arenas, connection pools, caches
            self.timed_out_read()
        warm = self.psd.rss()
        peak = warm
        for _ in range(TIMEOUTS):
            self.timed_out_read()
            peak = max(peak, self.psd.rss())
        print(f"\n[{TIMEOUTS} timed-out large reads] RSS after warm-up {warm / 1e6:.0f} MB, "
              f"peak {peak / 1e6:.0f} MB, end {self.psd.rss() / 1e6:.0f} MB")
        # without the fix each timeout kept ~15 MB: +750 MB over the run
        self.assertLess(peak, warm + 150e6)
