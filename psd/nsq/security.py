"""TLS and AUTH credentials for nsqd, read once at startup.

Files are read when psd starts, so a missing or malformed CA, certificate,
key or secret stops it with one line naming the setting instead of failing
every reconnection later.  The secret is never logged.
"""

from __future__ import annotations

from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import ssl
from twisted.internet.error import VerifyError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS

from psd.config import read_secret_file, read_setting_file


class ClientTLS:
    """How to verify nsqd (trust root, expected name) and, optionally, prove who psd is."""

    def __init__(self, ca_file: str = "", server_name: str = "", cert_file: str = "", key_file: str = ""):
        self.ca_file = ca_file
        self.server_name = server_name
        self._trust_root = _trust_root(ca_file) if ca_file else None
        self._client_certificate = _client_certificate(cert_file, key_file) if cert_file else None

    def options_for(self, host: str) -> IOpenSSLClientConnectionCreator:
        """Options for one nsqd: its certificate must name ``server_name``, else the host we dialled."""
        return ssl.optionsForClientTLS(self.name_for(host), trustRoot=self._trust_root,
                                       clientCertificate=self._client_certificate)

    def name_for(self, host: str) -> str:
        return self.server_name or host

    def https_policy(self) -> BrowserLikePolicyForHTTPS:
        """For https:// lookupd addresses: the same trust root as nsqd."""
        return BrowserLikePolicyForHTTPS(trustRoot=self._trust_root)

    def trust_description(self) -> str:
        return f"the CA in {self.ca_file}" if self.ca_file else "the system's trusted CAs"


def _trust_root(ca_file: str):
    """Every certificate of a PEM bundle (ssl.Certificate.loadPEM would keep only the first)."""
    try:
        certificates = x509.load_pem_x509_certificates(read_setting_file("nsq", "tls_ca_file", ca_file))
    except ValueError as e:
        raise ValueError(f"settings: [nsq] tls_ca_file {ca_file!r}: not PEM certificates ({e})") from None
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)) for c in certificates])


def _client_certificate(cert_file: str, key_file: str) -> ssl.PrivateCertificate:
    cert_pem = read_setting_file("nsq", "tls_cert_file", cert_file)
    key_pem = read_setting_file("nsq", "tls_key_file", key_file)
    try:
        # loadPEM also checks that the key is the certificate's
        return ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except (SSL.Error, VerifyError, ValueError, TypeError) as e:
        raise ValueError(f"settings: [nsq] tls_cert_file {cert_file!r} and tls_key_file {key_file!r} "
                         f"are not a matching PEM certificate and key ({e})") from None


def client_tls(nsq: dict) -> Optional[ClientTLS]:
    """``[nsq] tls*`` as a ClientTLS, or None when TLS is off (then the other tls_* must be unset)."""
    if not nsq["tls"]:
        given = [name for name in ("tls_ca_file", "tls_server_name", "tls_cert_file", "tls_key_file") if nsq[name]]
        if given:
            raise ValueError(f"settings: [nsq] {given[0]} is set but [nsq] tls is false")
        return None
    if bool(nsq["tls_cert_file"]) != bool(nsq["tls_key_file"]):
        raise ValueError("settings: [nsq] tls_cert_file and tls_key_file go together")
    return ClientTLS(nsq["tls_ca_file"], nsq["tls_server_name"], nsq["tls_cert_file"], nsq["tls_key_file"])


def auth_secret(nsq: dict) -> Optional[bytes]:
    """``[nsq] auth_secret``, or the first line of ``auth_secret_file``; None when neither is set."""
    if nsq["auth_secret"] and nsq["auth_secret_file"]:
        raise ValueError("settings: [nsq] auth_secret and auth_secret_file exclude each other")
    if nsq["auth_secret_file"]:
        return read_secret_file("nsq", "auth_secret_file", nsq["auth_secret_file"]).encode("utf-8")
    return nsq["auth_secret"].encode("utf-8") or None


def handshake_failure_reason(failure: Failure) -> str:
    """Why a TLS handshake failed, in words.

    OpenSSL's error is a stack of (library, function, reason) tuples, the
    outermost last: "certificate verify failed" after the low-level causes.
    """
    if failure.check(VerificationError):
        return "its certificate does not name the expected server"
    if failure.check(SSL.Error):
        reasons = [entry[-1] for entry in failure.value.args[0] if isinstance(entry, tuple) and entry[-1]]
        return reasons[-1] if reasons else "TLS error"
    return f"nsqd closed the connection during the TLS handshake ({failure.getErrorMessage()})"
