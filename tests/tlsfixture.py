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


class TLSFiles(NamedTuple):
    """PEM files: the CA, a server certificate for 127.0.0.1/localhost, a client certificate."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: str, key, certificate: x509.Certificate) -> tuple[str, str]:
    with open(path + ".pem", "wb") as f:
        f.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(path + ".key", "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return path + ".pem", path + ".key"


def _certificate(subject: str, key, issuer: str, issuer_key, *extensions) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer_key, hashes.SHA256())


def make_ca(directory: str, name: str = "psd test CA") -> TLSFiles:
    """A CA and the certificates it signed, in ``directory`` (created)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate(name, ca_key, name, ca_key, (x509.BasicConstraints(ca=True, path_length=0), True))
    ca_file, _ = _write(os.path.join(directory, "ca"), ca_key, ca)
    leaf = (x509.BasicConstraints(ca=False, path_length=None), True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", server_key, name, ca_key, leaf,
                          (x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False),
                          (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("psd", client_key, name, ca_key, leaf,
                          (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False))
    return TLSFiles(ca_file, *_write(os.path.join(directory, "server"), server_key, server),
                    *_write(os.path.join(directory, "client"), client_key, client))
