"""The built package, installed (not editable) into a fresh virtualenv, runs as `twistd psd`."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from twisted.trial.unittest import TestCase

REPO = Path(__file__).resolve().parent.parent


class PackagingTests(TestCase):
    def run_checked(self, *args, cwd=None) -> str:
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300,
                                env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result.stdout

    def test_installed_wheel(self):
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        self.run_checked(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                         "-w", str(work / "dist"), str(REPO))
        wheel = next((work / "dist").glob("psd-*.whl"))
        venv = work / "venv"
        self.run_checked(sys.executable, "-m", "venv", str(venv))
        python = venv / "bin" / "python"
        site = self.run_checked(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
        # the dependencies come from the test venv; psd itself only from the wheel
        Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        self.run_checked(str(python), "-m", "pip", "install", "--no-deps", "-q", str(wheel))
        outside = work / "elsewhere"
        outside.mkdir()
        twistd = (str(python), "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()")
        listing = self.run_checked(*twistd, "--help", cwd=outside)
        self.assertIn("psd", listing.split())
        self.assertIn("--redis", self.run_checked(*twistd, "psd", "--help", cwd=outside))
        self.assertIn("psd 0.1.0", self.run_checked(*twistd, "psd", "--version", cwd=outside))
        example = self.run_checked(str(python), "-m", "psd.config", "--example", cwd=outside)
        self.assertEqual(example, (REPO / "conf" / "settings.toml.dist").read_text())
        where = self.run_checked(str(python), "-c", "import psd.store as s; print(s.LUA_DIR); print(s.Script('write').sha)",
                                 cwd=outside).split()
        self.assertTrue(where[0].startswith(site), where)
        self.assertEqual(len(where[1]), 40)
