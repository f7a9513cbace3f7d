"""Every documented command does what its document says: README.md and docs/*.md, word for word.

A newcomer runs the examples in order against one fresh psd (as ``make run``
gives: the embedded store), README first, so each document must use its own
uids and names.  Lines ``$ command`` in a fenced block are run with bash in the
repository; the lines up to the next command are the expected output.  Only
the psd address (``localhost:1155``) and the NSQ walkthrough's ports are
moved, to free ports; ``Date:`` headers match any date.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.processfixture import REPO, PsdProcess
from tests.redisfixture import free_port

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def shell_examples(markdown: str) -> list[tuple[str, str]]:
    """(command, expected output) for each ``$ `` line of the fenced blocks, in order."""
    examples = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.S | re.M):
        command, output = None, []
        for line in block.splitlines():
            if command is not None and not output and not _complete(command):
                command += "\n" + line  # a quoted argument or a backslash continues on the next line
            elif line.startswith("$ "):
                if command is not None:
                    examples.append((command, "\n".join(output)))
                command, output = line[2:], []
            elif command is not None:
                output.append(line)
        if command is not None:
            examples.append((command, "\n".join(output)))
    return examples


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # no closing quotation, or a trailing backslash
        return False
    return True


def same_output(expected: str, actual: str) -> bool:
    expected_lines, actual_lines = expected.strip().splitlines(), actual.strip().splitlines()
    return len(expected_lines) == len(actual_lines) and all(
        e == a or (e.startswith("Date: ") and a.startswith("Date: "))
        for e, a in zip(expected_lines, [line.rstrip("\r") for line in actual_lines]))


class ParsingTests(SynchronousTestCase):
    def test_commands_outputs_and_continuations(self):
        text = ("```sh\n$ echo 'a\nb'\na\nb\n\n$ echo c \\\n  d\nc d\n```\nprose\n```\nno command here\n```\n"
                "```sh\n$ true\n```\n")
        self.assertEqual(shell_examples(text), [("echo 'a\nb'", "a\nb\n"), ("echo c \\\n  d", "c d"), ("true", "")])

    def test_dates_match_any_date(self):
        self.assertTrue(same_output("HTTP/1.1 200 OK\nDate: Tue, 01 Dec 2026\n", "HTTP/1.1 200 OK\r\nDate: Wed\r\n"))
        self.assertFalse(same_output("1\n2", "1\n3"))
        self.assertFalse(same_output("1", "1\n2"))

    def test_every_document_has_examples(self):
        for document in DOCUMENTS:
            self.assertTrue(shell_examples(document.read_text()), document)


class DocumentedCommandsTests(TestCase):
    timeout = 300

    def test_every_documented_command(self):
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        data_dir = tempfile.mkdtemp(prefix="psd-docs-")  # short: unix socket paths hold 107 bytes
        self.addCleanup(subprocess.run, ["rm", "-rf", data_dir])
        psd = PsdProcess(self, workdir, free_port(), "--data-dir", data_dir)
        psd.start()
        ports = {name: str(free_port()) for name in ("NSQD_TCP", "NSQD_HTTP", "LOOKUPD_TCP", "LOOKUPD_HTTP", "PSD_PORT")}
        env = {**os.environ, "PYTHONPATH": str(REPO), **ports}
        differences = []
        for document in DOCUMENTS:
            for command, expected in shell_examples(document.read_text()):
                moved = re.sub(r"\b(localhost|127\.0\.0\.1):1155\b", f"127.0.0.1:{psd.port}", command)
                result = subprocess.run(["bash", "-c", moved], cwd=REPO, env=env, capture_output=True, text=True,
                                        timeout=120)
                if not same_output(expected, result.stdout):
                    differences.append(f"{document.name}: $ {command}\n  expected: {expected.strip()}\n"
                                       f"  got:      {result.stdout.strip()}{result.stderr.strip()}")
        self.assertEqual(differences, [], "\n\n".join(differences))
