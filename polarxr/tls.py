"""TLS material for a Dask cluster reachable over a network: a throw-away CA and one node certificate.

For local testing and small deployments. Every scheduler, worker and client gets the same three files
(``ca.pem``, ``cert.pem``, ``key.pem``); Dask verifies the peer's certificate against ``ca.pem`` in both
directions (mutual TLS), so only holders of a certificate signed by this CA can join or submit work.
The CA's private key is never written: nothing else can be signed by it, and rotating means generating
a new set and restarting the cluster. A large site should use its own PKI instead.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from polarxr.errors import ClusterError
from polarxr.io import write_bytes_atomic

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files of one TLS set: CA certificate, node certificate, node private key."""

    ca: Path
    cert: Path
    key: Path


def tls_files(tls_dir: str | Path) -> TLSFiles:
    """The PEM files expected in ``tls_dir``; raises :class:`ClusterError` naming the first missing one."""
    tls_dir = Path(tls_dir)
    files = TLSFiles(tls_dir / CA_FILE, tls_dir / CERT_FILE, tls_dir / KEY_FILE)
    for path in (files.ca, files.cert, files.key):
        if not path.is_file():
            raise ClusterError(path, f"TLS file missing: {tls_dir} must hold {CA_FILE}, {CERT_FILE} and {KEY_FILE}")
    return files


def make_certificates(
    out_dir: str | Path,
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
) -> TLSFiles:
    """Write a self-signed CA (``ca.pem``) and a node certificate + key (``cert.pem``, ``key.pem``).

    ``hostnames`` (DNS names or IP addresses of the scheduler and workers) go into the certificate's
    subject alternative names. The node certificate is valid for both server and client authentication,
    so the same files serve scheduler, workers and clients. Keys are ECDSA P-256; ``key.pem`` is mode
    0600. Files are written under temporary names and renamed, so a failure leaves no half-written set.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not hostnames:
        raise ClusterError(out_dir, "at least one hostname or IP address is needed for the TLS certificate")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ClusterError(out, "exists and is not a folder: give a folder for ca.pem, cert.pem and key.pem")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    # Back-date a little so that a worker whose clock lags the CA's host still accepts the certificate.
    not_before, not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "polarxr dask CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    node_key = ec.generate_private_key(ec.SECP256R1())
    node_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(ca_name)
        .public_key(node_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hostnames]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    key_bytes = node_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = TLSFiles(out / CA_FILE, out / CERT_FILE, out / KEY_FILE)
    write_bytes_atomic(files.key, key_bytes, mode=0o600)
    write_bytes_atomic(files.cert, node_cert.public_bytes(pem), mode=0o644)
    write_bytes_atomic(files.ca, ca_cert.public_bytes(pem), mode=0o644)
    return files


def _general_name(host: str):
    """An IP-address SAN for a literal address, a DNS-name SAN otherwise."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
