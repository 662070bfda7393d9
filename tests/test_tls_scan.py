"""sslyze, a TLS scanner, against a live server using what `securechat certs` writes.

It judges the server the way an auditor would: Mozilla's intermediate profile (TLS 1.2
and 1.3 only, its suites and groups, a browser-grade certificate path, at most a year of
validity, no compression, secure renegotiation, fallback SCSV, extended master secret),
plus our own stricter rules: X25519 and P-256 only, no session tickets, a certificate
for server authentication only. The one thing a throwaway CA cannot pass is trust by the
public stores; the chain is checked against the CA file instead. sslyze does not probe
the finite-field groups; tests/test_transport_policy.py does.

sslyze runs as a command from a virtual environment of its own, `.venv-scan` (`make test`
makes it): it pins an old cryptography, and the tests must run against the newest, which
is what users of securechat get. Its JSON report is read here; the compliance verdict is
the one its command line prints and returns (0 compliant, 1 not).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from securechat.certs import make_certs
from securechat.server import Server, ServerConfig
from securechat.transport import server_context

SSLYZE = Path(__file__).resolve().parents[1] / ".venv-scan" / "bin" / "sslyze"
# The scan takes about a second here; this only bounds a scanner that hangs.
SCAN_TIMEOUT = 90.0


@dataclass(frozen=True)
class Scan:
    report: dict[str, Any]  # the one server's result in sslyze's JSON
    stdout: str  # sslyze's console report, ending in its compliance verdict
    returncode: int
    target: str  # how sslyze names the server in its verdict, host:port
    ca: Path

    def result(self, command: str) -> dict[str, Any]:
        attempt = self.report["scan_result"][command]
        assert attempt["status"] == "COMPLETED", (command, attempt["status"], attempt["error_reason"])
        assert attempt["result"] is not None, command
        result: dict[str, Any] = attempt["result"]
        return result


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Scan:
    """One scan of a live server, shared by the checks below."""
    if not SSLYZE.exists():
        pytest.skip(f"{SSLYZE} does not exist: `make test` installs sslyze there (not run, or pip failed)")
    paths, _ = make_certs(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"])
    report_path = tmp_path_factory.mktemp("sslyze") / "scan.json"
    # sslyze's own interpreter and packages only: nothing of this environment's Python.
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONHOME")}
    # The scanner makes a few hundred connections within a second from one address: the
    # per-address limits (their own tests) would refuse most of them.
    config = ServerConfig(host="127.0.0.1", port=0, max_per_ip=100_000)
    with Server(config, server_context(paths.cert, paths.key)) as server:
        target = f"localhost:{server.address[1]}"
        # A report to a file, not to stdout: with `--json_out=-` sslyze skips the compliance check.
        done = subprocess.run(
            [
                str(SSLYZE),
                "--mozilla_config=intermediate",
                "--resum",  # tickets; not among the commands the Mozilla check needs
                f"--certinfo_ca_file={paths.ca}",
                f"--json_out={report_path}",
                f"{target}{{127.0.0.1}}",  # the name to verify and send, the address to reach
            ],
            capture_output=True,
            text=True,
            timeout=SCAN_TIMEOUT,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    output = f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    # 0 compliant, 1 not compliant; anything else is a crash. A command line sslyze
    # refuses exits 0 without a report.
    assert done.returncode in (0, 1), output
    assert report_path.is_file(), output
    document = json.loads(report_path.read_text(encoding="utf-8"))
    assert document["invalid_server_strings"] == [], document["invalid_server_strings"]
    (report,) = document["server_scan_results"]
    assert report["connectivity_status"] == "COMPLETED", report["connectivity_error_trace"]
    assert report["scan_status"] == "COMPLETED", output
    assert report["scan_result"] is not None
    failed = {
        name: (attempt["error_reason"], attempt["error_trace"])
        for name, attempt in report["scan_result"].items()
        if attempt["status"] == "ERROR"
    }
    assert not failed, failed
    return Scan(report, done.stdout, done.returncode, target, paths.ca)


def test_mozilla_intermediate_profile_holds(scan: Scan) -> None:
    verdict = scan.stdout[scan.stdout.rfind("COMPLIANCE AGAINST TLS CONFIGURATION") :]
    assert 'Mozilla\'s "intermediate" configuration' in verdict, scan.stdout
    assert f"{scan.target}: OK - Compliant." in verdict, f"not compliant:\n{verdict}"
    assert scan.returncode == 0, verdict


def test_only_tls_1_2_and_1_3_are_spoken(scan: Scan) -> None:
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
        if scan.result(name)["is_tls_version_supported"]
    }
    assert spoken == {"tls_1_2_cipher_suites", "tls_1_3_cipher_suites"}


def test_only_x25519_and_p256_are_offered(scan: Scan) -> None:
    curves = scan.result("elliptic_curves")
    assert {curve["name"] for curve in curves["supported_curves"] or []} == {"X25519", "secp256r1"}


def test_no_session_tickets(scan: Scan) -> None:
    resumption = scan.result("session_resumption")
    assert resumption["tls_ticket_resumption_result"] == "NOT_SUPPORTED"


def test_no_client_initiated_renegotiation(scan: Scan) -> None:
    renegotiation = scan.result("session_renegotiation")
    assert renegotiation["is_vulnerable_to_client_renegotiation_dos"] is False
    assert renegotiation["supports_secure_renegotiation"] is True


def _certificates(chain: list[dict[str, Any]]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(certificate["as_pem"].encode()) for certificate in chain]


def test_the_certificate_is_for_server_auth_and_comes_with_its_chain(scan: Scan) -> None:
    (deployment,) = scan.result("certificate_info")["certificate_deployments"]
    leaf, *intermediates = _certificates(deployment["received_certificate_chain"])
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert len(intermediates) == 1 and deployment["received_chain_has_valid_order"] is True
    assert deployment["received_chain_contains_anchor_certificate"] is False  # the root is the client's
    validations = deployment["path_validation_results"]
    trusted_by = {r["trust_store"]["name"] for r in validations if r["was_validation_successful"]}
    assert trusted_by == {"Supplied CA file"}  # a throwaway CA: no public store trusts it


def test_a_path_to_ca_pem_is_what_validates(scan: Scan) -> None:
    # The path the scanner built ends in the root of ca.pem, through the intermediate.
    deployment = scan.result("certificate_info")["certificate_deployments"][0]
    assert deployment["verified_certificate_chain"] is not None
    chain = _certificates(deployment["verified_certificate_chain"])
    assert len(chain) == 3
    assert chain[-1].subject == chain[-1].issuer
    assert chain[-1] == x509.load_pem_x509_certificate(scan.ca.read_bytes())
