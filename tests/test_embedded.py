"""The embedded store: a real server process on a unix socket, supervised and stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from psd.embedded import DataDirInUse, DataDirLock, EmbeddedRedis, data_dir_holder, find_server_binary, socket_path
from psd.store import RedisAddress, RedisStore


class EmbeddedRedisTests(TestCase):
    @defer.inlineCallbacks
    def wait_for_ping(self, store: RedisStore):
        for _ in range(400):
            try:
                reply = yield store.ping()
                return reply
            except Exception:
                yield task.deferLater(reactor, 0.025, lambda: None)
        self.fail("embedded store never answered")

    @defer.inlineCallbacks
    def test_starts_restarts_and_stops(self):
        data_dir = tempfile.mkdtemp(prefix="psd-embedded-")  # short: unix socket paths hold 107 bytes
        self.addCleanup(shutil.rmtree, data_dir, True)
        embedded = EmbeddedRedis(reactor, data_dir, max_backoff=0.2)
        embedded.startService()
        self.addCleanup(embedded.stopService)
        store = RedisStore(RedisAddress(embedded.url), reply_timeout=2)
        store.start()
        self.addCleanup(store.stop)
        self.assertEqual((yield self.wait_for_ping(store)), "PONG")
        self.assertEqual(oct(os.stat(embedded.data_dir).st_mode & 0o777), "0o700")
        info = yield store.command("CONFIG", "GET", "port")
        self.assertEqual(info, ["port", "0"])  # no TCP listener at all
        yield store.command("HSET", "k", "f", "1")

        os.kill(embedded._process.pid, 9)  # it dies: psd starts it again, the data is in the AOF
        for _ in range(400):
            if embedded._process is not None and embedded._failures:
                break
            yield task.deferLater(reactor, 0.025, lambda: None)
        self.assertEqual((yield self.wait_for_ping(store)), "PONG")
        self.assertEqual((yield store.command("HGET", "k", "f")), "1")

        yield store.stop()
        yield embedded.stopService()
        self.assertIsNone(embedded._process)
        self.assertFalse(os.path.exists(embedded.socket_path))

    def test_too_long_a_data_dir_is_refused_clearly(self):
        embedded = EmbeddedRedis(reactor, "/tmp/" + "d" * 120)
        e = self.assertRaises(ValueError, embedded.startService)
        self.assertIn("too long for a unix socket path", str(e))
        self.assertFalse(embedded.running)


class DataDirOwnershipTests(TestCase):
    """One psd per data directory; a server left behind by a crashed psd is stopped, its data kept."""

    def data_dir(self) -> str:
        path = tempfile.mkdtemp(prefix="psd-owner-")  # short: unix socket paths hold 107 bytes
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def test_a_second_psd_is_refused_with_the_holders_pid(self):
        path = self.data_dir()
        first = DataDirLock(Path(path))
        first.acquire()
        self.addCleanup(first.release)
        e = self.assertRaises(DataDirInUse, DataDirLock(Path(path)).acquire)
        self.assertIn(f"{path!r} is in use by psd pid {os.getpid()}", str(e))
        self.assertEqual(data_dir_holder(path), str(os.getpid()))
        first.release()
        self.assertIsNone(data_dir_holder(path))

    def test_a_dead_holders_lock_is_not_in_the_way(self):
        path = self.data_dir()
        holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                                   "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                                   os.path.join(path, "psd.lock")], stdout=subprocess.PIPE)
        self.addCleanup(holder.wait)
        self.addCleanup(holder.kill)
        self.assertEqual(holder.stdout.readline(), b"locked\n")
        self.assertRaises(DataDirInUse, DataDirLock(Path(path)).acquire)
        holder.kill()
        holder.wait()
        lock = DataDirLock(Path(path))
        lock.acquire()
        lock.release()

    @defer.inlineCallbacks
    def test_a_stale_server_is_stopped_and_its_data_kept(self):
        path = self.data_dir()
        binary = find_server_binary()
        stale = subprocess.Popen([binary, "--port", "0", "--unixsocket", socket_path(path), "--dir", path,
                                  "--appendonly", "yes", "--save", ""], cwd=path, stdout=subprocess.DEVNULL)
        self.addCleanup(stale.wait)
        self.addCleanup(stale.kill)
        old = RedisStore(RedisAddress("unix://" + socket_path(path)), reply_timeout=2)
        old.start()
        self.addCleanup(old.stop)
        yield EmbeddedRedisTests.wait_for_ping(self, old)
        yield old.command("HSET", "k", "f", "7")
        yield old.stop()

        embedded = EmbeddedRedis(reactor, path, binary)
        embedded.startService()
        self.addCleanup(embedded.stopService)
        for _ in range(400):
            if stale.poll() is not None:
                break
            yield task.deferLater(reactor, 0.025, lambda: None)
        self.assertEqual(stale.poll(), 0)  # SHUTDOWN: a clean exit, the append-only file flushed
        store = RedisStore(RedisAddress(embedded.url), reply_timeout=2)
        store.start()
        self.addCleanup(store.stop)
        yield EmbeddedRedisTests.wait_for_ping(self, store)
        self.assertEqual((yield store.command("HGET", "k", "f")), "7")
        info = yield store.command("INFO", "server")
        self.assertIn(f"process_id:{embedded._process.pid}\r\n", info)
