"""The consumer against a real nsqd that requires TLS (and AUTH), with a CA made by the test.

nsqd runs with ``--tls-cert/--tls-key/--tls-required=true``; psd must consume
through TLS into a real Redis (the sums are exact, and nsqd's /stats says
the connection is TLS), and refuse a certificate it cannot verify with one
clear error line.  For AUTH, nsqd asks a tiny auth server run by the test.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor, ssl
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site

from psd.nsq.security import ClientTLS
from tests import test_nsq_integration as base
from tests.nsqfixture import NSQD
from tests.tlscerts import CertificateAuthority

SECRET = b"s3cret-for-psd"


class AuthServer(Resource):
    """nsqd's --auth-http-address: GET /auth?secret=&tls=&remote_ip= -> identity and authorizations."""

    isLeaf = True

    def __init__(self, secret: bytes):
        super().__init__()
        self.secret = secret
        self.requests = []

    def render_GET(self, request):
        self.requests.append({k.decode(): v[0] for k, v in request.args.items()})
        request.setHeader(b"content-type", b"application/json")
        if request.args.get(b"secret", [b""])[0] != self.secret:
            request.setResponseCode(403)
            return b'{"message": "NOT_AUTHORIZED"}'
        return json.dumps({"ttl": 3600, "identity": "psd-test", "identity_url": "",
                           "authorizations": [{"topic": ".*", "channels": [".*"],
                                               "permissions": ["subscribe", "publish"]}]}).encode()


class HTTPSLookupd(Resource):
    """An nsqlookupd behind HTTPS (nsqlookupd itself serves plain HTTP): /lookup names one nsqd."""

    isLeaf = True

    def __init__(self, nsqd: NSQD):
        super().__init__()
        self.nsqd = nsqd

    def render_GET(self, request):
        return json.dumps({"channels": ["psd"], "producers": [
            {"broadcast_address": "127.0.0.1", "tcp_port": self.nsqd.tcp_port, "http_port": self.nsqd.http_port,
             "hostname": "nsqd", "version": "1.3.0"}]}).encode()


class TLSTestCase(base.IntegrationTestCase):
    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.ca = CertificateAuthority(self.mktemp())
        self.server_cert = self.ca.issue("nsqd", dns_names=["nsqd.test"], ip_addresses=["127.0.0.1"])
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @defer.inlineCallbacks
    def tls_nsqd(self, *extra_args, tls_required="true"):
        nsqd = NSQD(self, tls=(self.ca.ca_file, *self.server_cert), tls_required=tls_required, extra_args=extra_args)
        yield nsqd.start()
        yield nsqd.create_channel("psd", "psd")
        yield nsqd.create_channel("psd_dead", "check")
        return nsqd

    def logged(self, level=None) -> list:
        """What psd logged (not the test's own auth server), optionally at one level."""
        return [formatEvent(e) for e in self.events if e.get("log_namespace", "").startswith("psd.")
                and level in (None, e.get("log_level"))]

    def errors(self) -> list:
        return self.logged(LogLevel.error)

    @defer.inlineCallbacks
    def consumed_through_tls(self, nsqd: NSQD, tls: ClientTLS, **options):
        """Publish a mixed workload, consume it through ``tls``; the sums must be exact."""
        if "lookupd_http_addresses" not in options:
            options["nsqd_tcp_addresses"] = (nsqd.tcp_address,)
        consumer = self.consumer(tls=tls, **options)
        yield self.publish(nsqd, 0, 3000)
        yield self.assert_sums(nsqd)
        stats = yield nsqd.channel_stats("psd", "psd")
        self.assertEqual([c["tls"] for c in stats["clients"]], [True])
        self.assertEqual(self.errors(), [])
        return consumer, stats["clients"][0]

    @defer.inlineCallbacks
    def refused(self, nsqd: NSQD, tls: ClientTLS, **options) -> list:
        """The error lines psd logs for a connection it refuses; it never subscribes."""
        # One connection attempt within the test: the next is 60 s away.
        consumer = self.consumer(nsqd_tcp_addresses=(nsqd.tcp_address,), tls=tls,
                                 reconnect_initial=60.0, reconnect_max=60.0, **options)
        yield self.wait_until(lambda: self.errors())
        self.assertNotEqual([c["state"] for c in consumer.status()], ["subscribed"])
        stats = yield nsqd.channel_stats("psd", "psd")
        self.assertEqual(stats["clients"], [])
        return self.errors()


class TLSTests(TLSTestCase):
    @defer.inlineCallbacks
    def test_consumes_through_tls_verified_against_the_ca(self):
        nsqd = yield self.tls_nsqd()
        yield self.consumed_through_tls(nsqd, ClientTLS(self.ca.ca_file))

    @defer.inlineCallbacks
    def test_https_lookupd_verified_against_the_same_ca(self):
        nsqd = yield self.tls_nsqd()
        with open(self.server_cert[0], "rb") as cert, open(self.server_cert[1], "rb") as key:
            server_options = ssl.PrivateCertificate.loadPEM(cert.read() + key.read()).options()
        port = reactor.listenSSL(0, Site(HTTPSLookupd(nsqd)), server_options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        yield self.consumed_through_tls(nsqd, ClientTLS(self.ca.ca_file),
                                        lookupd_http_addresses=(f"https://127.0.0.1:{port.getHost().port}",))

    @defer.inlineCallbacks
    def test_certificate_from_an_unknown_ca_is_refused(self):
        nsqd = yield self.tls_nsqd()
        # An impostor CA with the same name as the real one: only its signature differs.
        other = CertificateAuthority(self.mktemp())
        (line,) = yield self.refused(nsqd, ClientTLS(other.ca_file))
        self.assertIn(f"nsqd {nsqd.tcp_address}: TLS refused: certificate verify failed (nsqd's", line)
        self.assertIn(other.ca_file, line)

    @defer.inlineCallbacks
    def test_certificate_for_another_name_is_refused(self):
        nsqd = yield self.tls_nsqd()
        (line,) = yield self.refused(nsqd, ClientTLS(self.ca.ca_file, server_name="other.test"))
        self.assertIn("TLS refused: its certificate does not name the expected server", line)
        self.assertIn("for the name other.test", line)

    @defer.inlineCallbacks
    def test_nsqd_without_tls_is_refused_not_used_in_plain_text(self):
        nsqd = yield self.nsqd()
        (line,) = yield self.refused(nsqd, ClientTLS(self.ca.ca_file))
        self.assertIn(f"nsqd {nsqd.tcp_address}: TLS refused: nsqd did not agree to tls_v1", line)

    @defer.inlineCallbacks
    def test_client_certificate_when_nsqd_requires_one(self):
        nsqd = yield self.tls_nsqd("--tls-client-auth-policy=require-verify", tls_required="tcp-https")
        client_cert = self.ca.issue("psd-client", client=True)
        yield self.consumed_through_tls(nsqd, ClientTLS(self.ca.ca_file, cert_file=client_cert[0],
                                                        key_file=client_cert[1]))

    @defer.inlineCallbacks
    def test_no_client_certificate_when_nsqd_requires_one_is_refused(self):
        nsqd = yield self.tls_nsqd("--tls-client-auth-policy=require-verify", tls_required="tcp-https")
        (line,) = yield self.refused(nsqd, ClientTLS(self.ca.ca_file))
        self.assertIn(f"nsqd {nsqd.tcp_address}: TLS refused:", line)


class AuthTests(TLSTestCase):
    @defer.inlineCallbacks
    def auth_nsqd(self):
        self.auth = AuthServer(SECRET)
        port = reactor.listenTCP(0, Site(self.auth), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        nsqd = yield self.tls_nsqd(f"--auth-http-address=127.0.0.1:{port.getHost().port}")
        return nsqd

    @defer.inlineCallbacks
    def test_auth_with_the_secret_over_tls(self):
        nsqd = yield self.auth_nsqd()
        _, client = yield self.consumed_through_tls(
            nsqd, ClientTLS(self.ca.ca_file, server_name="nsqd.test"), auth_secret=SECRET)
        self.assertEqual((client["authed"], client["auth_identity"]), (True, "psd-test"))
        self.assertEqual({(r["secret"], r["tls"]) for r in self.auth.requests}, {(SECRET, b"true")})
        logged = " ".join(self.logged())
        self.assertIn("authenticated as psd-test", logged)
        self.assertNotIn(SECRET.decode(), logged)

    @defer.inlineCallbacks
    def test_wrong_secret_is_refused_by_nsqd(self):
        nsqd = yield self.auth_nsqd()
        yield self.refused(nsqd, ClientTLS(self.ca.ca_file), auth_secret=b"wrong")
        self.assertIn("E_AUTH_FAILED", " ".join(self.errors()))
        self.assertEqual([r["secret"] for r in self.auth.requests], [b"wrong"])
