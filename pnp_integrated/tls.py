"""TLS material and policy: the one place that builds server SSL contexts.

On first start a local CA and an ECDSA P-256 server certificate (SANs: VIP, virtual host name, node address,
hostname, localhost) are generated into ``<data_dir>/certs`` unless the operator supplies a certificate and key.
Every TLS listener of the gateway uses :func:`server_context`; SSLv2/SSLv3 are impossible because the floor is
never below TLS 1.0 and the OpenSSL options that disable them are always set.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .config import Settings, tls_floor

_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


@dataclass(frozen=True)
class CertPaths:
    cert: Path
    key: Path
    ca: Path
    generated: bool

    @property
    def ca_key(self) -> Path:
        """The generated CA's private key (beside its certificate)."""
        return self.ca.with_name("ca.key")


def cert_paths(settings: Settings) -> CertPaths:
    if settings.tls_cert_file:
        cert = Path(settings.tls_cert_file)
        return CertPaths(cert, Path(settings.tls_key_file), Path(settings.tls_ca_file or cert), False)
    d = settings.certs_dir
    return CertPaths(d / "server.pem", d / "server.key", d / "ca.pem", True)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


_PEM = serialization.Encoding.PEM


def _server_names(settings: Settings) -> list[str]:
    """What the server certificate names: the address devices use (VIP), its name, this node's own address."""
    names: list[str] = []
    for value in (settings.vip, settings.virtual_host_name, settings.node_addr, "127.0.0.1", "::1",
                  socket.gethostname(), "localhost"):
        if value and value not in names:
            names.append(value)
    return names


def _san_entries(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for value in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            entries.append(x509.DNSName(value))
    return entries


def _subject_alt_names(cert: x509.Certificate) -> list[str]:
    """The addresses, then the names, a certificate is good for."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in sans.get_values_for_type(x509.IPAddress)] + sans.get_values_for_type(x509.DNSName)


def _leaf(paths: CertPaths) -> x509.Certificate:
    """The server certificate itself, first in its chain file."""
    return x509.load_pem_x509_certificates(paths.cert.read_bytes())[0]


def leaf_certificate(paths: CertPaths) -> str:
    """The server certificate (PEM) without the CA its chain file carries: what a peer pins."""
    return _leaf(paths).public_bytes(_PEM).decode()



def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _issue_server_certificate(settings: Settings, paths: CertPaths, ca_cert: x509.Certificate,
                              ca_key: ec.EllipticCurvePrivateKey) -> None:
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, settings.vip)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(_san_entries(_server_names(settings))), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.key, _private_pem(key))
    # The chain file carries the CA so clients that only trust the CA can build the path.
    paths.cert.write_bytes(cert.public_bytes(_PEM) + ca_cert.public_bytes(_PEM))


def _server_certificate_fits(settings: Settings, paths: CertPaths, ca_cert: x509.Certificate) -> bool:
    """Whether the generated server certificate names the address devices use and its name, from this CA (a
    node's own address is not asked for: peers pin certificates, and Prime's servers share one)."""
    try:
        leaf = _leaf(paths)
        leaf.verify_directly_issued_by(ca_cert)
    except (OSError, ValueError, TypeError, IndexError, InvalidSignature):
        return False
    return {settings.vip, settings.virtual_host_name} - {""} <= set(_subject_alt_names(leaf))


def ensure_certificates(settings: Settings) -> CertPaths:
    """Return the certificate files, generating a CA and a server certificate on first start.

    A generated server certificate is issued again (by the same CA) when it does not name the VIP or the virtual
    host name of the settings, as when a single gateway becomes a node of a pair, or when the CA was replaced by the
    pair's (see :func:`adopt_gateway_ca`).
    """
    paths = cert_paths(settings)
    if not paths.generated:
        return paths
    if paths.ca.exists() and paths.ca_key.exists():
        ca_cert = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        if paths.key.exists() and _server_certificate_fits(settings, paths, ca_cert):
            return paths
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        _issue_server_certificate(settings, paths, ca_cert, ca_key)
        return paths
    settings.certs_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pnp-integrated local CA ({settings.node_name})")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(paths.ca_key, _private_pem(ca_key))
    paths.ca.write_bytes(ca_cert.public_bytes(_PEM))
    _issue_server_certificate(settings, paths, ca_cert, ca_key)
    return paths


def gateway_ca(paths: CertPaths) -> dict[str, str] | None:
    """The generated CA (certificate and key, PEM) that a pair's nodes share, so that a device trusting one node's
    CA trusts the other's certificate after a failover; ``None`` with the operator's own certificates."""
    if not paths.generated:
        return None
    return {"certificate": paths.ca.read_text(), "key": paths.ca_key.read_text()}


def adopt_gateway_ca(settings: Settings, certificate: str, key: str) -> str:
    """Take the pair's CA as this node's and issue this node's server certificate from it (for ``settings``: the
    pair's VIP, name and this node's address); returns the new certificate (PEM, without the CA)."""
    ca_cert = x509.load_pem_x509_certificate(certificate.encode())
    ca_key = serialization.load_pem_private_key(key.encode(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.public_key() != ca_cert.public_key():
        raise ValueError("the CA key does not belong to the CA certificate")
    paths = cert_paths(settings)
    settings.certs_dir.mkdir(parents=True, exist_ok=True)
    if not (paths.ca.exists() and paths.ca.read_text() == certificate):
        _write_private(paths.ca_key, key.encode())
        paths.ca.write_text(certificate)
    return leaf_certificate(ensure_certificates(settings))


def server_context(settings: Settings, paths: CertPaths | None = None) -> ssl.SSLContext:
    """The SSL context of every TLS listener: floor from PNP_TLS_MIN_VERSION, SSLv2/3 impossible."""
    paths = paths or ensure_certificates(settings)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    floor = _VERSIONS[tls_floor(settings.tls_min_version)]
    if floor < ssl.TLSVersion.TLSv1_2:
        # Old device images only: OpenSSL's default security level refuses the SHA-1 signatures TLS 1.0/1.1 need.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 1.0/1.1 are the operator's deliberate opt-in
        ctx.minimum_version = floor
    ctx.options |= ssl.OP_NO_SSLv2 | ssl.OP_NO_SSLv3 | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(paths.cert), str(paths.key))
    return ctx


def device_https_context(settings: Settings, paths: CertPaths | None = None) -> ssl.SSLContext | None:
    """The HTTPS port's context when devices' client certificates are checked (PNP_DEVICE_CA_FILE), else ``None``.

    The certificate is asked for, not required (CNS agents and older images present none); one that is presented
    must chain to the operator's bundle, or the handshake fails.
    """
    if not settings.device_ca_file:
        return None
    ctx = server_context(settings, paths)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.load_verify_locations(cafile=settings.device_ca_file)
    return ctx


def client_context(settings: Settings) -> ssl.SSLContext:
    """A client context that trusts the gateway's CA (used by ``pnpp status`` and the device simulators)."""
    paths = cert_paths(settings)
    ctx = ssl.create_default_context(cafile=str(paths.ca))
    ctx.check_hostname = False  # devices reach us by VIP address; the CA pin is what matters
    return ctx


def describe(paths: CertPaths) -> dict[str, object]:
    """Human-facing facts about the server certificate (``pnpp certs show``)."""
    cert = _leaf(paths)
    return {
        "certificate": str(paths.cert),
        "key": str(paths.key),
        "ca": str(paths.ca),
        "generated": paths.generated,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(":"),
        "key_type": type(cert.public_key()).__name__.lstrip("_"),
        "subject_alt_names": _subject_alt_names(cert),
    }


TRUST_FILE = "prime-trust.pem"


def trust_path(settings: Settings) -> Path:
    """Where ``pnpp prime trust`` keeps the certificates Prime's endpoints presented (the bridge trusts them)."""
    return settings.certs_dir / TRUST_FILE


TRUST_INDEX = "prime-trust.json"


def trusted_prime_hosts(settings: Settings) -> dict[str, list[str]]:
    """Prime host -> the PEM certificates its endpoints presented to ``pnpp prime trust`` (empty when none)."""
    import json

    try:
        data = json.loads((settings.certs_dir / TRUST_INDEX).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(host): [str(p) for p in pems] for host, pems in data.items() if isinstance(pems, list)}


def store_prime_trust(settings: Settings, host: str, pems: list[str]) -> Path:
    """Record what ``host`` presented, replacing what it presented before, and rewrite the bundle the bridge and
    the health checks verify against: every trusted Prime host's certificates (a Prime pair with two addresses has
    two servers, each with its own certificate)."""
    import json

    from .credentials import write_secret

    hosts = trusted_prime_hosts(settings)
    hosts[host] = pems
    settings.certs_dir.mkdir(parents=True, exist_ok=True)
    write_secret(settings.certs_dir / TRUST_INDEX, json.dumps(hosts, indent=2))
    bundle: list[str] = []
    for host_pems in hosts.values():
        bundle.extend(p for p in host_pems if p not in bundle)
    path = trust_path(settings)
    path.write_text("\n".join(bundle) + "\n")
    return path
