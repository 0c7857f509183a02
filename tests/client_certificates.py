"""Test PKI for client certificates (the gateway's for a broker, devices' SUDI ones): a CA and what it issues, as PEM
files (cryptography)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ClientPki:
    """``ca``: the CA certificate a broker trusts; ``cert`` / ``key``: a client certificate it issued."""

    ca: Path
    cert: Path
    key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    """A fresh CA whose certificate is written to ``ca_file``; :meth:`issue` makes client certificates under it."""

    def __init__(self, ca_file: Path, subject: x509.Name) -> None:
        ca_file.parent.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = subject
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = ca_file
        ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cert_file: Path, key_file: Path, subject: x509.Name) -> tuple[Path, Path]:
        """A client certificate (clientAuth) for ``subject`` and its key (0600), written to the two files."""
        now = dt.datetime.now(dt.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder().subject_name(subject)
            .issuer_name(self.name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(_pem_key(key))
        key_file.chmod(0o600)
        return cert_file, key_file


def common_name(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def issue_client_pki(directory: Path, name: str = "gateway") -> ClientPki:
    """A fresh CA named after ``name`` and a client certificate (clientAuth) for ``name`` under ``directory``."""
    ca = CertificateAuthority(directory / f"{name}-ca.pem", common_name(f"{name} test CA"))
    cert, key = ca.issue(directory / f"{name}.pem", directory / f"{name}.key", common_name(name))
    return ClientPki(ca.ca_file, cert, key)
