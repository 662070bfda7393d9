"""`securechat bench setup`: what post-quantum setup costs (sizes checked; times only run)."""

from __future__ import annotations

import json
import subprocess
import sys

from securechat.bench.setup_cost import setup_cost
from securechat.e2e.bundle import KOPK_TARGET, OPK_TARGET
from securechat.protocol import MAX_LINE_BYTES

#: A KEM prekey's public key in base64 (1,184 bytes) and its signature (64).
_KEM_RECORD_MIN = 1184 * 4 // 3 + 64 * 4 // 3


def test_the_sizes_are_those_of_the_frames_a_client_and_server_exchange() -> None:
    cost = setup_cost(rounds=3)
    # A fetched bundle carries the KPK and one KOPK more; a top-up publish the KPK and 15.
    assert cost.bundle_bytes - cost.bundle_bytes_without_kem >= 2 * _KEM_RECORD_MIN
    assert cost.publish_bytes - cost.publish_bytes_without_kem >= (1 + KOPK_TARGET) * _KEM_RECORD_MIN
    assert cost.publish_bytes < MAX_LINE_BYTES  # one frame: the reason for the batch size
    assert cost.publish_bytes_without_kem > OPK_TARGET * 100  # the 100 one-time DH prekeys are in it
    assert cost.kem_store_bytes == (1 + KOPK_TARGET) * (1184 + 64 + 16)


def test_the_command_prints_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "securechat", "bench", "setup", "--rounds", "2", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    result = json.loads(out)
    assert result["scenario"] == "setup" and result["rounds"] == 2
    assert {"initiator_ms", "responder_ms", "publish_server_ms"} <= set(result)
