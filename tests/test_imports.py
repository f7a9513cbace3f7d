"""The import arrows, enforced: core <- edges (store, HTTP, NSQ) <- tap.

The pure core does no I/O (no Twisted, no Redis client, no HTTP); the HTTP API
and the NSQ consumer never import each other; nothing imports the assembly
point.  Parsed with ``ast``, so a docstring cannot claim what the code breaks.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

PACKAGE = Path(__file__).resolve().parent.parent / "psd"

CORE = {"psd.buckets", "psd.coalesce", "psd.compat", "psd.config", "psd.embedded_launcher", "psd.cost", "psd.errors",
        "psd.keys", "psd.leaderboard", "psd.model", "psd.openapi", "psd.series", "psd.split", "psd.validation",
        "psd.nsq.framing", "psd.nsq.messages"}
HTTP = {"psd.api", "psd.routes", "psd.web"}
NSQ = {"psd.nsq.protocol", "psd.nsq.consumer", "psd.nsq.security"}
#: libraries that do I/O or need a reactor: edges only
IO_LIBRARIES = ("twisted", "txredisapi", "klein", "treq", "werkzeug")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (``from psd import x`` counts as ``psd.x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def all_modules() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in sorted(PACKAGE.rglob("*.py"))}


def violations(modules: dict[str, set[str]]) -> list[str]:
    known = set(modules)
    found = []
    for module, imported in modules.items():
        internal = {name for name in imported if name in known and name != "psd"}
        if module in CORE:
            found += [f"{module} (core) imports {name}" for name in sorted(internal - CORE - {"psd.nsq"})]
            found += [f"{module} (core) imports {name}" for name in sorted(imported)
                      if name.split(".")[0] in IO_LIBRARIES]
        if module in HTTP:
            found += [f"{module} (HTTP) imports {name}" for name in sorted(internal & NSQ)]
        if module in NSQ:
            found += [f"{module} (NSQ) imports {name}" for name in sorted(internal & HTTP)]
        if module != "psd.tap":
            found += [f"{module} imports the assembly point" for name in internal if name == "psd.tap"]
    return found


class ImportRuleTests(SynchronousTestCase):
    def test_the_arrows_hold(self):
        self.assertEqual(violations(all_modules()), [])

    def test_every_module_has_a_place(self):
        placed = CORE | HTTP | NSQ | {"psd", "psd.nsq", "psd.tap", "psd.store", "psd.reader", "psd.writer",
                                      "psd.embedded", "psd.workers"}
        self.assertEqual(sorted(set(all_modules()) - placed), [], "a new module: say which layer it belongs to")

    def test_a_broken_arrow_is_seen(self):
        broken = {"psd.buckets": {"twisted.internet", "psd.store"}, "psd.store": set(),
                  "psd.api": {"psd.nsq.consumer"}, "psd.nsq.consumer": {"psd.api", "psd.tap"}, "psd.tap": set()}
        self.assertEqual(violations(broken), [
            "psd.buckets (core) imports psd.store", "psd.buckets (core) imports twisted.internet",
            "psd.api (HTTP) imports psd.nsq.consumer", "psd.nsq.consumer (NSQ) imports psd.api",
            "psd.nsq.consumer imports the assembly point"])
