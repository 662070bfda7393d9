"""sslyze, a TLS scanner, against a live server using what `securechat certs` writes.

It judges the server the way an auditor would: Mozilla's intermediate profile (TLS 1.2
and 1.3 only, its suites and groups, a browser-grade certificate path, at most a year of
validity, no compression, secure renegotiation, fallback SCSV, extended master secret),
plus our own stricter rules: X25519 and P-256 only, no session tickets, a certificate
for server authentication only. The one thing a throwaway CA cannot pass is trust by the
public stores; the chain is checked against the CA file instead. sslyze does not probe
the finite-field groups; tests/test_transport_policy.py does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from sslyze import (
    CertificateInfoExtraArgument,
    ScanCommand,
    ScanCommandAttemptStatusEnum,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanResult,
    ServerScanStatusEnum,
    TlsResumptionSupportEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

from securechat.certs import make_certs
from securechat.server import Server, ServerConfig
from securechat.transport import server_context


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerScanResult]:
    """One scan of a live server (about a second here), shared by the checks below."""
    paths, _ = make_certs(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"])
    # The scanner makes a few hundred connections within a second from one address: the
    # per-address limits (their own tests) would refuse most of them.
    config = ServerConfig(host="127.0.0.1", port=0, max_per_ip=100_000)
    with Server(config, server_context(paths.cert, paths.key)) as server:
        request = ServerScanRequest(
            server_location=ServerNetworkLocation("localhost", server.address[1], ip_address="127.0.0.1"),
            scan_commands=SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER | {ScanCommand.SESSION_RESUMPTION},
            scan_commands_extra_arguments=ScanCommandsExtraArguments(
                certificate_info=CertificateInfoExtraArgument(custom_ca_file=paths.ca)
            ),
        )
        scanner = Scanner()
        scanner.queue_scans([request])
        (result,) = scanner.get_results()
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    assert result.scan_result is not None
    failed = {
        name: attempt.error_reason
        for name, attempt in vars(result.scan_result).items()
        if attempt.status == ScanCommandAttemptStatusEnum.ERROR
    }
    assert not failed, [a.error_trace for a in vars(result.scan_result).values() if a.error_trace]
    yield result


# sslyze loads the public trust stores it ships, one of which has a certificate with a
# negative serial number; cryptography warns about it. Not ours.
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")


def test_mozilla_intermediate_profile_holds(scan: ServerScanResult) -> None:
    try:
        check_server_against_tls_configuration(
            scan, MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
        )
    except ServerNotCompliantWithTlsConfiguration as exc:
        pytest.fail(f"not compliant: {exc.issues}")


def test_only_tls_1_2_and_1_3_are_spoken(scan: ServerScanResult) -> None:
    result = scan.scan_result
    assert result is not None
    spoken = {
        name
        for name in (
            "ssl_2_0_cipher_suites",
            "ssl_3_0_cipher_suites",
            "tls_1_0_cipher_suites",
            "tls_1_1_cipher_suites",
            "tls_1_2_cipher_suites",
            "tls_1_3_cipher_suites",
        )
        if getattr(result, name).result.is_tls_version_supported
    }
    assert spoken == {"tls_1_2_cipher_suites", "tls_1_3_cipher_suites"}


def test_only_x25519_and_p256_are_offered(scan: ServerScanResult) -> None:
    assert scan.scan_result is not None
    curves = scan.scan_result.elliptic_curves.result
    assert curves is not None
    assert {curve.name for curve in curves.supported_curves or []} == {"X25519", "secp256r1"}


def test_no_session_tickets(scan: ServerScanResult) -> None:
    assert scan.scan_result is not None
    resumption = scan.scan_result.session_resumption.result
    assert resumption is not None
    assert resumption.tls_ticket_resumption_result == TlsResumptionSupportEnum.NOT_SUPPORTED


def test_no_client_initiated_renegotiation(scan: ServerScanResult) -> None:
    assert scan.scan_result is not None
    renegotiation = scan.scan_result.session_renegotiation.result
    assert renegotiation is not None
    assert not renegotiation.is_vulnerable_to_client_renegotiation_dos
    assert renegotiation.supports_secure_renegotiation


def test_the_certificate_is_for_server_auth_and_comes_with_its_chain(scan: ServerScanResult) -> None:
    assert scan.scan_result is not None
    info = scan.scan_result.certificate_info.result
    assert info is not None
    (deployment,) = info.certificate_deployments
    leaf, *intermediates = deployment.received_certificate_chain
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert len(intermediates) == 1 and deployment.received_chain_has_valid_order
    assert deployment.received_chain_contains_anchor_certificate is False  # the root is the client's
    trusted_by = {
        r.trust_store.name for r in deployment.path_validation_results if r.was_validation_successful
    }
    assert trusted_by == {"Supplied CA file"}  # a throwaway CA: no public store trusts it


def test_a_path_to_ca_pem_is_what_validates(scan: ServerScanResult) -> None:
    # The path the scanner built ends in the root of ca.pem, through the intermediate.
    assert scan.scan_result is not None
    info = scan.scan_result.certificate_info.result
    assert info is not None
    chain = info.certificate_deployments[0].verified_certificate_chain
    assert chain is not None and len(chain) == 3
    assert chain[-1].subject == chain[-1].issuer
