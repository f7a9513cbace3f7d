"""The benchmark suite runs (quick mode) and its end-of-run totals checks pass.

Not a timed test: it only checks that the suite works and that no
acknowledged point went missing; the figures are for ``make bench``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, TestCase

ROOT = Path(__file__).resolve().parent.parent


class QuickBenchTests(TestCase):
    timeout = 120

    def test_quick_run_checks_its_totals(self):
        if not (shutil.which("wrk") and shutil.which("redis-benchmark") and shutil.which("taskset")):
            raise SkipTest("wrk, redis-benchmark and taskset are needed (make system-deps)")
        run = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"], capture_output=True,
                             text=True, cwd=ROOT, timeout=110)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        table = run.stdout
        for row in ("(a) uniform", "(b) workouts", "(c) single point, 32 conn", "(c) single point, --workers 2"):
            line = next(line for line in table.splitlines() if line.startswith(row))
            self.assertIn("ok (1 runs)", line)
        self.assertIn("Redis ceiling", table)

    def test_lua_floor_runs_and_checks_its_totals(self):
        if not (shutil.which("redis-benchmark") and shutil.which("taskset")):
            raise SkipTest("redis-benchmark and taskset are needed (make system-deps)")
        run = subprocess.run([sys.executable, str(ROOT / "bench" / "lua_floor.py"), "--rounds", "1", "--batches", "2",
                              "--benchmark-requests", "50000"], capture_output=True, text=True, cwd=ROOT, timeout=110,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        self.assertIn("lua/write.lua", run.stdout)
        self.assertIn("floor (HINCRBY only)", run.stdout)

    def test_script_cost_runs(self):
        run = subprocess.run([sys.executable, str(ROOT / "bench" / "script_cost.py"), "--rounds", "1"],
                             capture_output=True, text=True, cwd=ROOT, timeout=110, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        self.assertIn("split by max_script_ms = 20", run.stdout)
