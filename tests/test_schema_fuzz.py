"""schemathesis against the served /openapi.json: no answer of psd is a 5xx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.processfixture import PsdProcess, wait_until
from tests.redisfixture import free_port, redis_binary


class SchemaFuzzTests(SynchronousTestCase):
    def test_no_server_errors(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        redis_port = free_port()
        redis = subprocess.Popen([redis_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--dir", workdir], stdout=subprocess.DEVNULL)
        self.addCleanup(lambda: (redis.kill(), redis.wait()))
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "PING"], capture_output=True)
                   .stdout.strip() == b"PONG", redis, "redis-server")
        psd = PsdProcess(self, workdir, free_port(), "--redis", f"redis://127.0.0.1:{redis_port}/0")
        psd.start()
        schemathesis = Path(sys.executable).with_name("schemathesis")
        run = subprocess.run([str(schemathesis), "run", f"http://127.0.0.1:{psd.port}/openapi.json",
                              "--checks", "not_a_server_error", "-n", "30", "--generation-deterministic"],
                             capture_output=True, text=True, timeout=600, cwd=workdir)
        summary = run.stdout[run.stdout.find("SUMMARY"):]
        print("\n[schemathesis] " + " ".join(line.strip() for line in summary.splitlines() if "generated" in line))
        self.assertEqual(run.returncode, 0, run.stdout[-3000:])
        _, document = psd.call("GET", "/openapi.json")
        operations = sum(len(methods) for path, methods in document["paths"].items() if path != "/openapi.json")
        self.assertIn(f"Selected: {operations}/{operations}", summary)
        self.assertIn(f"Tested: {operations}", summary)
        with open(os.path.join(workdir, "psd.log"), "rb") as log:
            self.assertNotIn(b'" 500 ', log.read())
