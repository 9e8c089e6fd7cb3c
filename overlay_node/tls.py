"""Local TLS material for the http port: a small certificate authority and certificates it signs for loopback or
named hosts, so that a node (or a cluster on one machine) serves ``https://`` URIs that the official SHIP/SLAP and
UHRP rules accept (they refuse plain ``http://``), and clients trust them by trusting the one CA file
(``http.tls_ca`` for the nodes themselves, ``NODE_EXTRA_CA_CERTS`` for the official TypeScript clients).

For a node reachable from the internet, use a certificate from a public CA instead (``http.tls_cert``,
``http.tls_key``); nothing here is needed then.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from overlay_node.errors import ConfigError

__all__ = ["LocalCa", "check_server_files", "client_context", "ensure_ca", "issue_certificate"]

_VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True, slots=True)
class LocalCa:
    """A CA's certificate and key files."""

    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_ca(directory: Path, name: str = "overlay-node local CA") -> LocalCa:
    """The CA in ``directory`` (``ca.pem``, ``ca.key``), created when missing."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca = LocalCa(directory / "ca.pem", directory / "ca.key")
    if ca.cert.exists() and ca.key.exists():
        return ca
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        ca.key,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    ca.cert.parent.mkdir(parents=True, exist_ok=True)
    ca.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca


def issue_certificate(ca: LocalCa, cert_path: Path, key_path: Path, hosts: Sequence[str]) -> None:
    """Write a server certificate for ``hosts`` (IP addresses or DNS names) signed by ``ca``, and its key (0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca.key}: not the EC key of a local CA")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "overlay-node")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    # the chain: the server certificate, then the CA's (clients that trust the CA verify it either way)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca.cert.read_bytes())


def check_server_files(cert: str, key: str) -> tuple[str, str] | None:
    """The ``(cert, key)`` pair the http port serves TLS with, checked by loading it; None when both are empty.

    Raises:
        ConfigError: only one of them is set, or they do not load as a certificate and its key.
    """
    if not cert and not key:
        return None
    if not cert or not key:
        raise ConfigError("http.tls_cert and http.tls_key: set both (or neither)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http.tls_cert / http.tls_key: cannot load {cert} and {key}: {exc}") from exc
    return cert, key


def client_context(extra_ca: str) -> ssl.SSLContext | bool:
    """What the node's HTTPS clients verify servers with: the system's CAs, plus ``extra_ca`` when set.

    Raises:
        ConfigError: ``extra_ca`` does not load.
    """
    if not extra_ca:
        return True
    context = ssl.create_default_context()
    try:
        context.load_verify_locations(cafile=extra_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"http.tls_ca: cannot load {extra_ca}: {exc}") from exc
    return context


def enable_in_data_dir(data_dir: Path, config_path: Path, hosts: Sequence[str]) -> dict[str, str]:
    """Give a data dir local TLS: a CA and a certificate for ``hosts`` in ``<data_dir>/tls/`` (kept when present),
    and ``http.tls_cert``, ``http.tls_key`` and ``http.tls_ca`` in its config file unless they are set there.

    Returns:
        The three paths (relative to the data dir when they are the ones made here).
    """
    import tomllib

    tls_dir = data_dir / "tls"
    ca = ensure_ca(tls_dir)
    cert, key = tls_dir / "cert.pem", tls_dir / "key.pem"
    if not cert.exists() or not key.exists():
        issue_certificate(ca, cert, key, hosts)
    wanted = {"tls_cert": "tls/cert.pem", "tls_key": "tls/key.pem", "tls_ca": "tls/ca.pem"}
    text = config_path.read_text(encoding="utf-8") if config_path.exists() else ""
    try:
        current = tomllib.loads(text).get("http", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from exc
    missing = {k: v for k, v in wanted.items() if not current.get(k)}
    if missing:
        lines = [f'{k} = "{v}"' for k, v in missing.items()]
        header = "[http]"
        at = next((i for i, line in enumerate(text.splitlines()) if line.strip() == header), None)
        rows = text.splitlines()
        if at is None:
            rows += ["", header, *lines]
        else:
            rows[at + 1 : at + 1] = lines
        config_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return {k: str(current.get(k) or v) for k, v in wanted.items()}
