"""A throwaway certificate authority for TLS tests, made with ``cryptography`` in a temp dir."""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY))


class CertificateAuthority:
    """A CA whose PEM is ``ca_file``; ``issue`` signs server or client certificates with it."""

    def __init__(self, directory: str, name: str = "psd test CA"):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._certificate = (
            _builder(_name(name), _name(name), self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self._key, hashes.SHA256()))
        self.ca_file = _write(os.path.join(self.directory, "ca.pem"),
                              self._certificate.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, dns_names=(), ip_addresses=(), client: bool = False) -> tuple[str, str]:
        """Sign a certificate for ``name``; returns the paths of its PEM certificate and key."""
        key = ec.generate_private_key(ec.SECP256R1())
        alternative = [x509.DNSName(n) for n in dns_names] + [x509.IPAddress(ipaddress.ip_address(a))
                                                              for a in ip_addresses]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = _builder(_name(name), self._certificate.subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False)
        if alternative:
            builder = builder.add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        certificate = builder.sign(self._key, hashes.SHA256())
        cert_file = _write(os.path.join(self.directory, f"{name}.pem"),
                           certificate.public_bytes(serialization.Encoding.PEM))
        key_file = _write(os.path.join(self.directory, f"{name}.key"), key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_file, key_file


class TLSFiles(NamedTuple):
    """PEM files: the CA, a server certificate for 127.0.0.1/localhost, a client certificate."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def make_ca(directory: str, name: str = "psd test CA") -> TLSFiles:
    """A CA in ``directory`` and the two certificates a TLS server test needs, signed by it."""
    ca = CertificateAuthority(directory, name)
    return TLSFiles(ca.ca_file, *ca.issue("localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"]),
                    *ca.issue("psd", client=True))
