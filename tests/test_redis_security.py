"""Redis over TLS (``rediss://``) and with an ACL user, against a real redis-server (issue 16, finding 10).

The certificates come from a CA the test makes; psd must write and read
through TLS, and refuse, with one clear error line, a server it cannot verify
or credentials Redis rejects, never logging the password.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase

from psd import config
from psd.keys import Layout
from psd.model import Point
from psd.reader import Reader, SumRequest
from psd.store import RedisAddress, RedisStore
from psd.tap import Options, redis_address
from psd.writer import Writer
from tests.psdfixture import started_psd
from tests.redisfixture import RedisServer, started_store
from tests.test_store import points_unit
from tests.tlscerts import make_ca
from tests.waiting import poll_until

SECRET = "s3cret-p@ss:word"
TS = 1458061005


def redis_settings(**values) -> dict:
    return {**{name: default for name, (_, default, _) in config.SCHEMA["redis"].items()}, **values}


def store_errors(testcase) -> list[str]:
    """The error lines the store logs while the test runs."""
    lines = []

    def observe(event):
        if event.get("log_namespace") == "psd.store.RedisStore" and event.get("log_level").name == "error":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    testcase.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


@defer.inlineCallbacks
def write_and_read(testcase, store: RedisStore):
    layout = Layout()
    yield Writer(reactor, store, layout, window=0.001).submit(points_unit(Point(7, 0, "points", 5, TS)))
    sums = yield Reader(store, layout).sums([SumRequest(7, 0, "points", TS, TS)])
    testcase.assertEqual(sums, [5])


class RedisAddressTests(SynchronousTestCase):
    def test_acl_user_and_password_from_the_url_are_decoded_and_never_shown(self):
        address = RedisAddress("redis://alice:s3cret%40pass@10.0.0.1:6380/2")
        self.assertEqual((address.username, address.password, address.host, address.port, address.db),
                         ("alice", "s3cret@pass", "10.0.0.1", 6380, 2))
        self.assertEqual(address.url, "redis://alice:***@10.0.0.1:6380/2")
        self.assertNotIn("s3cret", str(self.assertRaises(ValueError, RedisAddress, "http://a:s3cret@h/")))

    def test_password_file_overrides_the_url_and_its_errors_are_one_line(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(SECRET + "\n")
        address = redis_address(redis_settings(password_file=path), "redis://alice@127.0.0.1:6379/0")
        self.assertEqual((address.username, address.password), ("alice", SECRET))
        for settings, url, fragment in (
                (redis_settings(password_file=path + ".missing"), "redis://h/0", f"[redis] password_file {path + '.missing'!r}: cannot read"),
                (redis_settings(), "redis://alice@h/0", "user 'alice' needs a password"),
                (redis_settings(tls_ca_file=path), "redis://h/0", "tls_* settings need a rediss:// url"),
                (redis_settings(tls_ca_file=path + ".missing"), "rediss://h/0", "tls_ca_file"),
                (redis_settings(tls_ca_file=path), "rediss://h/0", "is not a PEM certificate")):
            e = self.assertRaises(config.SettingsError, redis_address, settings, url)
            self.assertIn(fragment, str(e))
            self.assertNotIn(SECRET, str(e))


    def test_the_redis_option_takes_the_same_urls_and_checks_them_at_startup(self):
        missing = self.mktemp()
        settings = self.mktemp()
        with open(settings, "w") as f:
            f.write(f'[redis]\ntls_ca_file = "{missing}"\n')
        options = Options()
        e = self.assertRaises(usage.UsageError, options.parseOptions,
                              ["--redis", f"rediss://psd:{SECRET}@127.0.0.1:6380/0", "--config", settings])
        self.assertIn("[redis] tls_ca_file", str(e))
        self.assertNotIn(SECRET, str(e))


class TLSTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.tls = make_ca(self.mktemp())
        self.server = RedisServer(self, tls=self.tls)
        yield self.server.start()
        self.errors = store_errors(self)

    def address(self, **settings) -> RedisAddress:
        return redis_address(redis_settings(**{"tls_ca_file": self.tls.ca, **settings}), self.server.url)

    @defer.inlineCallbacks
    def test_writes_and_reads_through_tls_with_a_client_certificate(self):
        """Against a Redis that requires client certificates (tls-auth-clients yes)."""
        server = RedisServer(self, tls=self.tls, client_certificates=True)
        yield server.start()
        address = redis_address(redis_settings(tls_ca_file=self.tls.ca, tls_cert_file=self.tls.client_cert,
                                               tls_key_file=self.tls.client_key), server.url)
        store = yield started_store(self, server, address=address)
        yield write_and_read(self, store)
        self.assertEqual(self.errors, [])

    @defer.inlineCallbacks
    def refused(self, address: RedisAddress, reason: str):
        """The store never connects and says why in one error line."""
        store = RedisStore(address, reply_timeout=2.0)
        store.start()
        self.addCleanup(store.stop)
        yield poll_until(lambda: self.errors, "the refusal to be logged")
        yield task.deferLater(reactor, 2.5, lambda: None)  # a reconnection or two later: still one line
        self.assertFalse(store.connected())
        self.assertEqual(len(self.errors), 1, self.errors)
        self.assertIn("TLS with the Redis server failed", self.errors[0])
        self.assertIn(reason, self.errors[0])
        print(f"\n[refused] {self.errors[0]}")

    def test_a_server_signed_by_another_ca_is_refused(self):
        return self.refused(self.address(tls_ca_file=make_ca(self.mktemp(), "another CA").ca),
                            "certificate verify failed")

    def test_a_server_certificate_for_another_name_is_refused(self):
        return self.refused(self.address(tls_server_name="redis.example.com"), "redis.example.com")

    @defer.inlineCallbacks
    def test_psd_writes_and_reads_through_tls(self):
        settings = os.path.abspath(self.mktemp())
        with open(settings, "w") as f:
            f.write(f'[redis]\ntls_ca_file = "{self.tls.ca}"\n')
        psd = yield started_psd(self, self.server, "--config", settings)
        yield poll_until(psd.store.connected, "psd to connect")
        status, body, _ = yield psd.post("/v1/points", {"uid": 3, "atid": 1, "metric": "points", "value": 4, "ts": TS})
        self.assertEqual(status, 200, body)
        status, body, _ = yield psd.post("/v1/sum", {"uids": [3], "metrics": ["points"], "from": TS, "to": TS})
        self.assertEqual((status, body["results"]), (200, {"3": {"points": 4}}))


class ACLTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        # the default user stays open for the fixture's own checks; psd logs in as "psd"
        self.server = RedisServer(self, "--user", "psd", "on", f">{SECRET}", "~*", "+@all")
        yield self.server.start()
        self.errors = store_errors(self)
        self.password_file = self.mktemp()
        with open(self.password_file, "w") as f:
            f.write(SECRET + "\n")

    @defer.inlineCallbacks
    def test_an_acl_user_with_its_password_from_a_file_writes_and_reads(self):
        address = redis_address(redis_settings(password_file=self.password_file),
                                f"redis://psd@127.0.0.1:{self.server.port}/0")
        store = yield started_store(self, self.server, address=address)
        yield write_and_read(self, store)
        self.assertEqual(self.errors, [])

    @defer.inlineCallbacks
    def test_a_wrong_password_is_one_clear_line_without_the_password(self):
        store = RedisStore(RedisAddress(f"redis://psd:wrong-{SECRET}@127.0.0.1:{self.server.port}/0"))
        store.start()
        self.addCleanup(store.stop)
        yield poll_until(lambda: self.errors, "the refusal to be logged")
        self.assertFalse(store.connected())
        self.assertEqual(len(self.errors), 1, self.errors)
        self.assertIn("Redis refused the credentials of user 'psd': WRONGPASS", self.errors[0])
        self.assertNotIn(SECRET, self.errors[0])
        print(f"\n[refused] {self.errors[0]}")
