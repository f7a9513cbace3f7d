"""TLS upgrade and AUTH in the NSQ handshake, without sockets: IDENTIFY -> TLS -> AUTH -> SUB -> RDY.

The transport records ``startTLS``; the real handshake with nsqd is in
test_nsq_tls.  The settings that make the TLS options and the secret are
checked here too.
"""

import json
import os
import struct

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from psd import config
from psd.nsq import framing
from psd.nsq.consumer import NSQConsumer
from psd.nsq.protocol import NSQError, NSQProtocol, TLSRefused
from psd.nsq.security import ClientTLS, auth_secret, client_tls, handshake_failure_reason
from psd.tap import Options, makeService
from tests import nsqframes
from tests.test_nsq_consumer import METRICS, FakeWriter, HalfRandom, Peer
from tests.test_nsq_protocol import SETTINGS, RecordingHandler
from tests.tlscerts import CertificateAuthority

TLS_OPTIONS = object()  # what the protocol hands to startTLS, as given
CERTIFICATE_REFUSED = Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
IDENTITY = {"identity": "psd-test", "identity_url": "", "permission_count": 1}


class TLSStringTransport(StringTransport):
    """Records startTLS and what had been written when it was called."""

    tls = None

    def startTLS(self, options):
        self.tls = options
        self.written_before_tls = self.value()


def auth_frame(secret: bytes) -> bytes:
    return b"AUTH\n" + struct.pack(">L", len(secret)) + secret


class UpgradeTestCase(nsqframes.WireEnd, SynchronousTestCase):
    tls = TLS_OPTIONS

    def setUp(self):
        self.handler = RecordingHandler()
        self.protocol = NSQProtocol(Clock(), self.handler, "127.0.0.1:4150", response_timeout=5.0, tls=self.tls)
        self.transport = TLSStringTransport()
        self.protocol.makeConnection(self.transport)
        self.transport.protocol = self.protocol
        self.sent()

    def identify(self):
        d = self.protocol.identify(SETTINGS)
        self.identified = json.loads(self.sent()[13:])
        return d


class UpgradeTests(UpgradeTestCase):
    def test_tls_v1_asked_then_upgraded_before_anything_else_is_sent(self):
        d = self.identify()
        self.assertIs(self.identified["tls_v1"], True)
        self.receive(nsqframes.identify_reply(tls_v1=True, max_rdy_count=50))
        self.assertIs(self.transport.tls, TLS_OPTIONS)
        self.assertEqual(self.transport.written_before_tls, b"")
        self.assertEqual(self.protocol.state, "upgrading")
        self.assertNoResult(d)
        self.receive(nsqframes.OK)  # nsqd's first frame over TLS
        self.assertEqual(self.successResultOf(d)["max_rdy_count"], 50)
        self.assertEqual(self.protocol.state, "identified")
        self.assertEqual(self.sent(), b"")

    def test_nsqd_that_does_not_agree_to_tls_is_refused(self):
        for reply in (nsqframes.identify_reply(tls_v1=False), nsqframes.identify_reply(), nsqframes.OK):
            self.setUp()
            d = self.identify()
            self.receive(reply)
            self.assertIn("did not agree to tls_v1", str(self.failureResultOf(d, TLSRefused).value))
            self.assertIsNone(self.transport.tls)
            self.assertTrue(self.transport.disconnecting)

    def test_something_else_than_ok_after_the_upgrade_is_refused(self):
        d = self.identify()
        self.receive(nsqframes.identify_reply(tls_v1=True))
        self.receive(nsqframes.response(b"{}"))
        self.assertIn("instead of OK", str(self.failureResultOf(d, TLSRefused).value))

    def test_fatal_error_after_the_upgrade_fails_identify(self):
        d = self.identify()
        self.receive(nsqframes.identify_reply(tls_v1=True))
        self.receive(nsqframes.error(b"E_IDENTIFY_FAILED TLS handshake failed"))
        self.assertEqual(self.failureResultOf(d, NSQError).value.code, b"E_IDENTIFY_FAILED")

    def test_certificate_refused_during_the_upgrade_is_tls_refused(self):
        d = self.identify()
        self.receive(nsqframes.identify_reply(tls_v1=True))
        self.protocol.connectionLost(CERTIFICATE_REFUSED)
        self.assertEqual(str(self.failureResultOf(d, TLSRefused).value), "certificate verify failed")
        (closed,) = self.handler.closed
        self.assertTrue(closed.check(TLSRefused))

    def test_connection_lost_after_the_upgrade_is_not_tls_refused(self):
        self.identify()
        self.receive(nsqframes.identify_reply(tls_v1=True))
        self.receive(nsqframes.OK)
        self.protocol.connectionLost(CERTIFICATE_REFUSED)
        (closed,) = self.handler.closed
        self.assertFalse(closed.check(TLSRefused))


class PlainTests(UpgradeTestCase):
    tls = None

    def test_without_tls_options_no_tls_v1_and_no_upgrade(self):
        d = self.identify()
        self.assertNotIn("tls_v1", self.identified)
        self.receive(nsqframes.identify_reply(tls_v1=True))
        self.assertIsNone(self.transport.tls)
        self.assertEqual(self.protocol.state, "identified")
        self.successResultOf(d)


class AuthTests(UpgradeTestCase):
    tls = None

    def test_auth_sends_the_secret_and_returns_the_identity(self):
        self.identify()
        self.receive(nsqframes.identify_reply(auth_required=True))
        self.assertTrue(self.protocol.auth_required)
        d = self.protocol.authenticate(b"s3cret")
        self.assertEqual(self.sent(), auth_frame(b"s3cret"))
        self.assertNoResult(d)
        self.receive(nsqframes.response(json.dumps(IDENTITY).encode()))
        self.assertEqual(self.successResultOf(d), IDENTITY)

    def test_refused_secret_fails_and_closes(self):
        self.identify()
        self.receive(nsqframes.identify_reply(auth_required=True))
        d = self.protocol.authenticate(b"wrong")
        self.receive(nsqframes.error(b"E_AUTH_FAILED AUTH failed"))
        self.assertEqual(self.failureResultOf(d, NSQError).value.code, b"E_AUTH_FAILED")
        self.assertTrue(self.transport.disconnecting)

    def test_auth_not_required_by_default(self):
        self.identify()
        self.receive(nsqframes.identify_reply())
        self.assertFalse(self.protocol.auth_required)

    def test_empty_secret_is_refused_before_sending(self):
        self.assertRaises(ValueError, framing.auth, b"")


class TLSPeer(Peer):
    transport_type = TLSStringTransport


class ConsumerHandshakeTests(SynchronousTestCase):
    """The consumer's order: IDENTIFY, TLS, AUTH, SUB, RDY, and one clear line when refused."""

    def consumer(self, **options) -> TLSPeer:
        reactor = MemoryReactorClock()
        consumer = NSQConsumer(reactor, FakeWriter(), METRICS, nsqd_tcp_addresses=("127.0.0.1:4150",),
                               random=HalfRandom(), max_in_flight=10, **options)
        consumer.startService()
        reactor.advance(0)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return TLSPeer(reactor.tcpClients[0][2])

    def errors(self) -> list:
        return [formatEvent(e) for e in self.events if e.get("log_level") is LogLevel.error]

    def test_identify_then_tls_then_auth_then_sub_then_rdy(self):
        peer = self.consumer(tls=ClientTLS(server_name="nsqd.test"), auth_secret=b"s3cret")
        self.assertIs(json.loads(peer.sent()[17:])["tls_v1"], True)
        peer.receive(nsqframes.identify_reply(tls_v1=True, auth_required=True))
        self.assertIsNotNone(peer.transport.tls)
        self.assertEqual(peer.sent(), b"")
        peer.receive(nsqframes.OK)
        self.assertEqual(peer.sent(), auth_frame(b"s3cret"))
        peer.receive(nsqframes.response(json.dumps(IDENTITY).encode()))
        self.assertEqual(peer.sent(), b"SUB psd psd\n")
        peer.receive(nsqframes.OK)
        self.assertEqual(peer.sent(), b"RDY 10\n")
        self.assertEqual(self.errors(), [])
        self.assertNotIn("s3cret", " ".join(formatEvent(e) for e in self.events))

    def test_no_auth_when_nsqd_does_not_require_it(self):
        peer = self.consumer(auth_secret=b"s3cret")
        peer.sent()
        peer.receive(nsqframes.identify_reply())
        self.assertEqual(peer.sent(), b"SUB psd psd\n")

    def test_auth_required_without_a_secret_is_one_clear_line(self):
        peer = self.consumer()
        peer.sent()
        peer.receive(nsqframes.identify_reply(auth_required=True))
        self.assertEqual(peer.sent(), b"")
        self.assertTrue(peer.transport.disconnecting)
        (line,) = self.errors()
        self.assertIn("nsqd requires AUTH: set [nsq] auth_secret_file", line)

    def test_refused_certificate_is_one_clear_line(self):
        ca_file = CertificateAuthority(self.mktemp()).ca_file
        peer = self.consumer(tls=ClientTLS(ca_file=ca_file, server_name="nsqd.test"))
        peer.sent()
        peer.receive(nsqframes.identify_reply(tls_v1=True))
        peer.protocol.connectionLost(CERTIFICATE_REFUSED)
        (line,) = self.errors()
        self.assertIn("nsqd 127.0.0.1:4150: TLS refused: certificate verify failed", line)
        self.assertIn(f"checked against the CA in {ca_file} for the name nsqd.test", line)


class HandshakeFailureReasonTests(SynchronousTestCase):
    def test_openssl_error_stack_in_words(self):
        self.assertEqual(handshake_failure_reason(CERTIFICATE_REFUSED), "certificate verify failed")

    def test_the_outermost_openssl_reason(self):
        stack = [("", "", "provider signature failure"), ("", "", "EVP lib"), ("SSL routines", "", "certificate verify failed")]
        self.assertEqual(handshake_failure_reason(Failure(SSL.Error(stack))), "certificate verify failed")

    def test_name_mismatch(self):
        failure = Failure(VerificationError(errors=[]))
        self.assertEqual(handshake_failure_reason(failure), "its certificate does not name the expected server")

    def test_closed_during_the_handshake(self):
        reason = handshake_failure_reason(Failure(ConnectionDone()))
        self.assertIn("nsqd closed the connection during the TLS handshake", reason)


def nsq_settings(**values) -> dict:
    settings = {name: default for name, (_, default, _) in config.SCHEMA["nsq"].items()}
    settings.update(values)
    return settings


class SettingsTests(SynchronousTestCase):
    def setUp(self):
        self.ca = CertificateAuthority(self.mktemp())
        self.client_cert, self.client_key = self.ca.issue("psd", client=True)

    def file(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def refused(self, **values) -> str:
        return str(self.assertRaises(ValueError, client_tls, nsq_settings(**values)))

    def test_tls_off_by_default(self):
        self.assertIsNone(client_tls(nsq_settings()))

    def test_tls_with_a_ca_a_name_and_a_client_certificate(self):
        tls = client_tls(nsq_settings(tls=True, tls_ca_file=self.ca.ca_file, tls_server_name="nsqd.test",
                                      tls_cert_file=self.client_cert, tls_key_file=self.client_key))
        self.assertEqual(tls.name_for("127.0.0.1"), "nsqd.test")
        self.assertIsNotNone(tls.options_for("127.0.0.1"))
        self.assertEqual(client_tls(nsq_settings(tls=True)).name_for("10.0.0.1"), "10.0.0.1")

    def test_tls_files_without_tls_are_refused(self):
        self.assertIn("[nsq] tls_ca_file is set but [nsq] tls is false", self.refused(tls_ca_file=self.ca.ca_file))

    def test_certificate_without_key_is_refused(self):
        self.assertIn("go together", self.refused(tls=True, tls_cert_file=self.client_cert))

    def test_unreadable_or_malformed_ca_is_refused(self):
        missing = os.path.join(self.mktemp(), "nope.pem")
        self.assertIn("tls_ca_file", self.refused(tls=True, tls_ca_file=missing))
        self.assertIn("cannot read it", self.refused(tls=True, tls_ca_file=missing))
        self.assertIn("not PEM certificates", self.refused(tls=True, tls_ca_file=self.file(b"garbage")))

    def test_key_of_another_certificate_is_refused(self):
        _, other_key = self.ca.issue("other", client=True)
        line = self.refused(tls=True, tls_cert_file=self.client_cert, tls_key_file=other_key)
        self.assertIn("are not a matching PEM certificate and key", line)

    def test_secret_from_the_settings_or_the_first_line_of_a_file(self):
        self.assertIsNone(auth_secret(nsq_settings()))
        self.assertEqual(auth_secret(nsq_settings(auth_secret="abc")), b"abc")
        self.assertEqual(auth_secret(nsq_settings(auth_secret_file=self.file(b"s3cret\nignored\n"))), b"s3cret")

    def test_secret_settings_errors(self):
        for values, message in (({"auth_secret": "a", "auth_secret_file": self.file(b"b")}, "exclude each other"),
                                ({"auth_secret_file": self.file(b"\n")}, "auth_secret_file is empty"),
                                ({"auth_secret_file": os.path.join(self.mktemp(), "x")}, "cannot read it")):
            self.assertIn(message, str(self.assertRaises(ValueError, auth_secret, nsq_settings(**values))))


class TapTests(SynchronousTestCase):
    """``twistd psd`` reads the files at startup: a bad one is one UsageError line, a good one reaches nsqd."""

    def options(self, text: str) -> Options:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        options = Options()
        options.parseOptions(["--config", path, "--nsqd", "127.0.0.1:4150", "--redis", "redis://127.0.0.1:1/0"])
        return options

    def test_bad_tls_file_is_one_line_at_startup(self):
        e = self.assertRaises(usage.UsageError, self.options, '[nsq]\ntls = true\ntls_ca_file = "/nonexistent.pem"\n')
        self.assertIn("[nsq] tls_ca_file '/nonexistent.pem': cannot read it", str(e))
        self.assertNotIn("\n", str(e))

    def test_tls_and_secret_reach_the_consumer(self):
        ca = CertificateAuthority(self.mktemp())
        secret_file = os.path.abspath(self.mktemp())
        with open(secret_file, "w") as f:
            f.write("s3cret\n")
        options = self.options(f'[nsq]\ntls = true\ntls_ca_file = "{ca.ca_file}"\ntls_server_name = "nsqd.test"\n'
                               f'auth_secret_file = "{secret_file}"\n')
        reactor = MemoryReactorClock()
        consumer = makeService(options, reactor).getServiceNamed("nsq")
        consumer.startService()
        self.addCleanup(consumer.stopService)
        reactor.advance(0)
        peer = TLSPeer(reactor.tcpClients[0][2])
        self.assertIs(json.loads(peer.sent()[17:])["tls_v1"], True)
        peer.receive(nsqframes.identify_reply(tls_v1=True, auth_required=True))
        self.assertIsNotNone(peer.transport.tls)
        peer.receive(nsqframes.OK)
        self.assertEqual(peer.sent(), auth_frame(b"s3cret"))
