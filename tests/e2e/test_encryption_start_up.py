"""``payorch serve`` and the encryption keys: one warning without them, the current key id
(never a key) with them, and a clear refusal to start with keys it cannot use."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.encryption import new_key

pytestmark = pytest.mark.timeout(60)

SERVE = ["serve", "--grpc-listen", "127.0.0.1:0", "--sandbox-listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0"]  # fmt: skip


def serve_until_listening(tmp_path: Path, env: dict[str, str]) -> tuple[int, str]:
    """Starts ``payorch serve``, waits until it listens (or exits), stops it: its exit code
    and everything it logged."""
    log = tmp_path / "serve.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *SERVE],
            cwd=tmp_path, env=clean | env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while process.poll() is None and not re.search(r"gRPC listening", log.read_text()):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(20), log.read_text()


def test_without_keys_serve_warns_once_that_events_are_stored_unencrypted(
    tmp_path: Path,
) -> None:
    code, text = serve_until_listening(tmp_path, {})
    assert code == 0, text
    (warning,) = [line for line in text.splitlines() if "PAYORCH_ENCRYPTION_KEYS" in line]
    assert " WARNING " in warning and "stored unencrypted" in warning


def test_with_keys_serve_names_the_current_key_id_and_no_key(tmp_path: Path) -> None:
    k2, k1 = new_key("k2"), new_key("k1")
    code, text = serve_until_listening(tmp_path, {"PAYORCH_ENCRYPTION_KEYS": f"{k2},{k1}"})
    assert code == 0, text
    assert "event state encrypted with key id k2 (2 key(s) held)" in text
    assert "stored unencrypted" not in text
    assert k2.partition(":")[2] not in text and k1.partition(":")[2] not in text


def test_keys_it_cannot_use_stop_the_start_with_a_clear_message(tmp_path: Path) -> None:
    short = "k1:c2hvcnQta2V5"  # "short-key": 9 bytes
    code, text = serve_until_listening(tmp_path, {"PAYORCH_ENCRYPTION_KEYS": short})
    assert code == 2, text
    assert "cannot start" in text
    assert "key 'k1' is 9 bytes; AES-GCM takes 16, 24 or 32" in text
    assert "c2hvcnQta2V5" not in text
