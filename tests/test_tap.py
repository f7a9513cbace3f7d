"""Options and assembly: one clear line for a bad setting, the service tree, the plugin."""

from __future__ import annotations

import gc
import io
import os
from contextlib import redirect_stdout

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

import psd
from psd import config
from psd.tap import Options, StartupObjectsFrozen, makeService


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self):
        settings = self.parse().settings
        self.assertEqual(settings.http["listen"], "tcp:1155:interface=127.0.0.1")
        self.assertEqual(settings.redis["url"], "embedded")
        self.assertEqual(settings.metrics["names"], ["points", "steps", "distance", "calories"])

    def test_overrides(self):
        settings = self.parse("--http", "tcp:9999", "--redis", "redis://h:1/2").settings
        self.assertEqual((settings.http["listen"], settings.redis["url"]), ("tcp:9999", "redis://h:1/2"))

    def test_bad_endpoints_and_addresses(self):
        for args, fragment in ((("--http", "tcp:notaport"), "--http 'tcp:notaport' is not a server endpoint"),
                               (("--http", "bogus:1"), "is not a server endpoint"),
                               (("--http", "tcp:1:interfce=x"), "(unknown parameter 'interfce'); write tcp:PORT:"),
                               (("--http", "127.0.0.1:1"), "e.g. tcp:1155:interface=127.0.0.1"),
                               (("--redis", "redis://h:notaport"), "--redis: "),
                               (("--nsqd", "localhost"), "--nsqd 'localhost' must be HOST:PORT"),
                               (("--nsqd", "h:99999"), "--nsqd 'h:99999' must be HOST:PORT")):
            e = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(fragment, str(e))

    def test_missing_embedded_binary(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[embedded]\nbinary = "/nonexistent/valkey-server"\n')
        e = self.assertRaises(usage.UsageError, self.parse, "--config", path)
        self.assertIn("[embedded] binary '/nonexistent/valkey-server' is not an executable file", str(e))

    def test_bad_redis_url(self):
        e = self.assertRaises(usage.UsageError, self.parse, "--redis", "mysql://x")
        self.assertIn("redis url 'mysql://x' must be", str(e))

    def test_config_file_errors_name_the_setting(self):
        path = self.mktemp()
        for text, fragment in (('[writer]\nwindow_ms = "fast"\n', "[writer] window_ms must be of type float"),
                               ("[writer]\nmax_in_flight = 0\n", "[writer] max_in_flight has an invalid value 0: it must be at least 1"),
                               ("[http]\nmax_points = -5\n", "max_points has an invalid value -5: it must be from 1 to 100000"),
                               ("[http]\nrequest_timeout = 0\n", "request_timeout has an invalid value 0.0: it must be more than 0"),
                               ("[writer]\nbogus = 1\n", "unknown setting [writer] bogus"),
                               ("[nope]\n", "unknown section [nope]"),
                               ("[metrics]\nnames = ['a:b']\n", "[metrics] names"),
                               ("not toml =", "is not valid TOML")):
            with open(path, "w") as f:
                f.write(text)
            e = self.assertRaises(usage.UsageError, self.parse, "--config", path)
            self.assertIn(fragment, str(e))
            self.assertNotIn("\n", str(e))
        e = self.assertRaises(usage.UsageError, self.parse, "--config", path + ".missing")
        self.assertIn("cannot read config", str(e))

    def test_the_shipped_settings_file_is_the_defaults(self):
        defaults = config.load()
        shipped = config.load(__file__.rsplit("/tests/", 1)[0] + "/conf/settings.toml.dist")
        for section in config.SCHEMA:
            self.assertEqual(getattr(shipped, section), getattr(defaults, section), section)


    def test_errors_come_without_the_usage_text(self):
        options = Options()
        self.assertRaises(usage.UsageError, options.parseOptions, ["--bogus"])
        self.assertEqual(options.getUsage(), "")
        self.assertIn("--redis", Options().getUsage())

    def test_a_relative_data_dir_is_resolved_once(self):
        settings = self.parse("--data-dir", "var/here", "--redis", "redis://h:1/0").settings
        self.assertEqual(settings.embedded["data_dir"], os.path.abspath("var/here"))

    def test_a_data_dir_in_use_is_one_line_naming_the_pid(self):
        from psd.embedded import DataDirLock
        from pathlib import Path
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        lock = DataDirLock(Path(data_dir))
        lock.acquire()
        self.addCleanup(lock.release)
        e = self.assertRaises(usage.UsageError, self.parse, "--data-dir", data_dir)
        self.assertIn(f"{data_dir!r} is in use by psd pid {os.getpid()}", str(e))

    def test_the_version_is_psds(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertRaises(SystemExit, self.parse, "--version")
        self.assertTrue(out.getvalue().startswith(f"psd {psd.__version__} "), out.getvalue())

    def test_the_example_settings_print_as_shipped(self):
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(config.main(["psd.config", "--example"]), 0)
        self.assertEqual(out.getvalue(), config.example_path().read_text())
        self.assertEqual(config.example_path().name, "settings.toml.dist")


class MakeServiceTests(SynchronousTestCase):
    def test_service_tree(self):
        options = Options()
        options.parseOptions(["--redis", "redis://127.0.0.1:1/0"])
        service = makeService(options, MemoryReactorClock())
        self.assertEqual([s.name for s in service], ["gc", "store", "writer", "http"])

    def test_embedded_store_comes_first(self):
        options = Options()
        options.parseOptions(["--data-dir", self.mktemp()])
        service = makeService(options, MemoryReactorClock())
        self.assertEqual([s.name for s in service], ["gc", "embedded-store", "store", "writer", "http"])

    def test_workers_share_the_first_process_embedded_store(self):
        data_dir = self.mktemp()
        options = Options()
        options.parseOptions(["--data-dir", data_dir, "--inherited-fd", "3"])
        service = makeService(options, MemoryReactorClock())
        self.assertEqual([s.name for s in service], ["gc", "store", "writer", "http"])
        self.assertEqual(service.getServiceNamed("store").store.address.path,
                         os.path.join(os.path.abspath(data_dir), "redis.sock"))

    def test_roles(self):
        def names(*args):
            options = Options()
            options.parseOptions(["--redis", "redis://127.0.0.1:1/0", *args])
            return [s.name for s in makeService(options, MemoryReactorClock())]

        self.assertEqual(names("--nsqd", "127.0.0.1:4150"), ["gc", "store", "writer", "nsq", "http"])
        self.assertEqual(names("--lookupd", "http://127.0.0.1:4161", "--role", "worker"), ["gc", "store", "writer", "nsq"])
        self.assertEqual(names("--nsqd", "127.0.0.1:4150", "--role", "server"), ["gc", "store", "writer", "http"])
        for args, fragment in ((("--role", "worker"), "--role worker needs NSQ"),
                               (("--role", "both"), "--role must be all, server or worker")):
            e = self.assertRaises(usage.UsageError, names, *args)
            self.assertIn(fragment, str(e))

    def test_startup_objects_are_kept_out_of_collections_while_running(self):
        service = StartupObjectsFrozen(Clock())
        before = gc.get_threshold()
        service.startService()
        try:
            self.assertGreater(gc.get_freeze_count(), 0)
            self.assertEqual(gc.get_threshold()[0], StartupObjectsFrozen.YOUNG_THRESHOLD)
        finally:
            service.stopService()
        self.assertEqual((gc.get_freeze_count(), gc.get_threshold()), (0, before))

    def test_full_collections_run_on_the_clock_while_running(self):
        """The tuning stops full collections happening by themselves: one runs every collect_every seconds."""
        clock, collections = Clock(), []
        service = StartupObjectsFrozen(clock, collect_every=10.0, collect=lambda: collections.append(clock.seconds()))
        service.startService()
        try:
            clock.advance(5)
            self.assertEqual(collections, [])
            for _ in range(3):
                clock.advance(5)
                clock.advance(5)
            self.assertEqual(collections, [10.0, 20.0, 30.0])
        finally:
            service.stopService()
        clock.advance(100)
        self.assertEqual(collections, [10.0, 20.0, 30.0])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_plugin_is_found(self):
        from twisted.plugin import IPlugin, getPlugins
        from twisted.application.service import IServiceMaker
        import twisted.plugins

        names = [p.tapname for p in getPlugins(IServiceMaker, twisted.plugins) if IPlugin.providedBy(p)]
        self.assertIn("psd", names)


class StoreServiceStartTests(SynchronousTestCase):
    def test_the_store_connects_once_its_server_listens(self):
        """Connecting before the embedded server's socket exists only fails and logs retry lines."""
        from psd.store import RedisAddress, RedisStore
        from psd.tap import StoreService

        listening = []
        store = RedisStore(RedisAddress("unix:///nonexistent/redis.sock"))
        clock = Clock()
        service = StoreService(clock, store, listening=lambda: bool(listening))
        service.startService()
        clock.advance(1)
        self.assertFalse(store.started)
        listening.append(True)
        clock.advance(0.2)
        self.assertTrue(store.started)
        self.successResultOf(service.stopService())

    def test_scripts_that_fail_to_load_are_said_once_with_the_reason(self):
        from twisted.logger import globalLogPublisher

        from psd.tap import StoreService

        class RefusingStore:
            started = True
            address = type("Address", (), {"url": "redis://127.0.0.1:6379/0"})()

            def ping(self):
                return defer.succeed("PONG")

            def load_scripts(self):
                return defer.fail(RuntimeError("NOPERM this user has no permissions to run the 'script' command"))

            def stop(self):
                return defer.succeed(None)

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = Clock()
        service = StoreService(clock, RefusingStore())
        service.startService()
        for _ in range(20):
            clock.advance(0.2)
        errors = [e for e in events if e.get("log_level") is not None and e["log_level"].name == "error"
                  and "scripts failed" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1)
        self.assertIn("NOPERM", str(errors[0]["error"]))
        self.successResultOf(service.stopService())
