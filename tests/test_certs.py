from __future__ import annotations

import ipaddress
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from securechat.certs import CertPaths, make_certs
from securechat.cli import main
from securechat.transport import client_context, server_context


def test_needs_at_least_one_host(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="host"):
        make_certs(tmp_path, [])


def test_writes_three_files_and_never_the_ca_key(tmp_path: Path) -> None:
    paths, written = make_certs(tmp_path / "c", ["localhost"])
    assert written and paths == CertPaths.under(tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ca.pem", "server.key", "server.pem"]
    assert "PRIVATE KEY" in paths.key.read_text()


def test_a_partial_set_is_completed_not_kept(tmp_path: Path) -> None:
    paths, _ = make_certs(tmp_path, ["localhost"])
    paths.key.unlink()
    _, written = make_certs(tmp_path, ["localhost"])
    assert written and paths.all_exist()


def load_chain(paths: CertPaths) -> tuple[x509.Certificate, list[x509.Certificate], x509.Certificate]:
    """(leaf, the intermediates after it in server.pem, the root in ca.pem)."""
    leaf, *intermediates = x509.load_pem_x509_certificates(paths.cert.read_bytes())
    return leaf, intermediates, x509.load_pem_x509_certificate(paths.ca.read_bytes())


def test_the_server_certificate_is_for_server_auth_only(tmp_path: Path) -> None:
    paths, _ = make_certs(tmp_path, ["localhost"])
    leaf, _, _ = load_chain(paths)
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    # An ECDSA key signs the handshake; it never enciphers a key (that was RSA key transport).
    assert usage.digital_signature and not usage.key_encipherment and not usage.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_server_pem_holds_the_chain_up_to_the_root(tmp_path: Path) -> None:
    paths, _ = make_certs(tmp_path, ["localhost"])
    leaf, intermediates, root = load_chain(paths)
    assert len(intermediates) == 1
    assert leaf.issuer == intermediates[0].subject and intermediates[0].issuer == root.subject
    assert root.subject not in {c.subject for c in intermediates}  # the root is the client's, not sent


@pytest.mark.parametrize(
    "name", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], ids=str
)
def test_a_browser_grade_verifier_accepts_the_chain(
    tmp_path: Path, name: x509.DNSName | x509.IPAddress
) -> None:
    # cryptography's verifier applies the CA/Browser Forum's profile (RFC 5280 plus the
    # web PKI's rules), as browsers do; it refused trustme's certificates (critical SAN
    # next to a subject).
    paths, _ = make_certs(tmp_path, ["localhost", "127.0.0.1"])
    leaf, intermediates, root = load_chain(paths)
    verifier = PolicyBuilder().store(Store([root])).build_server_verifier(name)
    chain = verifier.verify(leaf, intermediates)
    assert [c.subject for c in chain] == [leaf.subject, intermediates[0].subject, root.subject]


def test_the_certificate_lives_at_most_a_year(tmp_path: Path) -> None:
    # Mozilla's intermediate profile: at most 366 days (trustme's ran for 1000 years).
    paths, _ = make_certs(tmp_path, ["localhost"])
    leaf, intermediates, root = load_chain(paths)
    assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 366
    for cert in (leaf, *intermediates, root):
        assert cert.not_valid_before_utc <= datetime.now(UTC) < cert.not_valid_after_utc


def test_a_client_verifies_the_server_through_the_intermediate(tmp_path: Path) -> None:
    paths, _ = make_certs(tmp_path, ["localhost"])
    a, b = socket.socketpair()
    a.settimeout(10.0)
    b.settimeout(10.0)
    server_ctx = server_context(paths.cert, paths.key)
    served = threading.Thread(target=lambda: server_ctx.wrap_socket(a, server_side=True).close())
    served.start()
    try:
        with client_context(paths.ca).wrap_socket(b, server_hostname="localhost") as tls:
            assert tls.version() is not None
    finally:
        b.close()
        served.join(10.0)
        a.close()


def test_a_host_that_is_no_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"bad\.\.name"):
        make_certs(tmp_path, ["bad..name"])


def test_the_command_refuses_a_bad_host_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certs", "--dir", str(tmp_path), "--host", "no space"]) == 2
    assert "'no space' is neither an IP address nor a DNS name" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
