"""`securechat certs`: a throwaway CA and a server certificate for trying securechat out.

Shaped like what a public CA issues, so that the web PKI's rules (the CA/Browser
Forum's profile, which browsers and cryptography's verifier apply) accept it: a root,
an intermediate, and a server certificate for server authentication only, valid for a
year. server.pem holds the server certificate followed by the intermediate, as a server
must send them; ca.pem holds the root, which clients trust.

Neither CA's private key is ever written: they are only needed to sign what is made
here, and a CA key left on disk would let anyone who reads it impersonate the server.
To renew, run again with `force`. For a server people rely on, use a certificate from a
real CA (Let's Encrypt, an organisation's CA) with its full chain in the PEM file.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_private

__all__ = ["SERVER_CERT_LIFETIME", "CertPaths", "make_certs"]

#: How long the certificates are valid. Mozilla's intermediate TLS profile allows a
#: server certificate at most 366 days (and recommends 90); renew with `--force`.
SERVER_CERT_LIFETIME = timedelta(days=365)
#: How far back validity starts, so a client whose clock is a little behind the
#: machine that made the certificate does not see it as "not yet valid".
_BACKDATE = timedelta(days=1)
# The longest common name X.520 allows (ub-common-name); longer host names go in the
# subjectAltName only, which is what clients check anyway.
_MAX_COMMON_NAME = 64


@dataclass(frozen=True)
class CertPaths:
    """Where the three files live in a certificate directory."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def under(cls, directory: Path) -> CertPaths:
        return cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")

    def all_exist(self) -> bool:
        return self.ca.is_file() and self.cert.is_file() and self.key.is_file()


def make_certs(directory: Path, hosts: Sequence[str], *, force: bool = False) -> tuple[CertPaths, bool]:
    """Create ca.pem, server.pem (certificate + intermediate) and server.key (0600) in
    `directory` for `hosts` (DNS names, wildcards or IP addresses).

    Returns the paths and whether new files were written: with `force` False and all
    three files present, nothing is touched. Raises `ValueError` for no hosts or one
    that is neither an IP address nor a valid DNS name, and `OSError` when the
    directory is not writable.
    """
    if not hosts:
        raise ValueError("at least one host name or IP address is needed")
    names = [_general_name(host) for host in hosts]
    paths = CertPaths.under(directory)
    if paths.all_exist() and not force:
        return paths, False
    tag = secrets.token_hex(4)  # tells apart the local CAs of different runs
    root_key, intermediate_key, server_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    start = datetime.now(UTC) - _BACKDATE
    end = start + SERVER_CERT_LIFETIME
    root_name = _name(f"securechat local CA {tag}")
    root = (
        _builder(root_name, root_name, root_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    intermediate_name = _name(f"securechat local intermediate {tag}")
    intermediate = (
        _builder(intermediate_name, root_name, intermediate_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        # Limits what the intermediate may vouch for, as public CAs' intermediates do.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_authority_key_id(root), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    common_name = hosts[0] if len(hosts[0]) <= _MAX_COMMON_NAME else None
    server = (
        _builder(_name(common_name), intermediate_name, server_key.public_key(), start, end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        # Server authentication only: trustme's defaults added client auth and code signing.
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Not critical: the subject is not empty (RFC 5280 4.2.1.6; browsers insist).
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(_authority_key_id(intermediate), critical=False)
        .sign(intermediate_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(paths.key, key_pem)
    chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (server, intermediate))
    write_private(paths.cert, chain_pem, mode=0o644)
    write_private(paths.ca, root.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return paths, True


def _general_name(host: str) -> x509.GeneralName:
    """`host` as a subjectAltName entry; `ValueError` if it is no IP address or DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        ascii_name = host.encode("idna").decode("ascii")  # a non-ASCII name as its A-labels
    except UnicodeError as exc:
        raise ValueError(f"{host!r} is neither an IP address nor a DNS name ({exc})") from None
    labels = ascii_name.split(".")
    wildcard = labels[0] == "*" and len(labels) > 2
    if not all(_is_ldh_label(label) for label in labels[1 if wildcard else 0 :]):
        raise ValueError(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(ascii_name)


def _is_ldh_label(label: str) -> bool:
    """A DNS label of letters, digits and inner hyphens (RFC 1123), as certificates need."""
    return (
        0 < len(label) <= 63
        and label.isascii()
        and label.replace("-", "").isalnum()
        and not label.startswith("-")
        and not label.endswith("-")
    )


def _name(common_name: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "securechat")]
    if common_name is not None:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime,
    end: datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates; the server's ECDSA key signs handshakes, nothing else
    (key encipherment is for RSA key transport, which TLS 1.2's ECDHE suites never use)."""
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
