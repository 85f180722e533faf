"""The two commands a user runs: ``payorch serve`` on its embedded defaults, and
``payorch sandbox``."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest

from adapters.sandbox import new_webhook_secret, sign_standard_webhook
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from tests.e2e.helpers import create_request

pytestmark = pytest.mark.timeout(60)


def _start(
    args: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYORCH_")} | (env or {})
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for(pattern: str, log: Path, process: subprocess.Popen[bytes]) -> re.Match[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} never appeared:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(20)


def test_serve_with_no_configuration_uses_sqlite_and_an_in_process_sandbox(
    tmp_path: Path,
) -> None:
    log = tmp_path / "serve.log"
    process = _start(
        ["serve", "--grpc-listen", "127.0.0.1:0", "--sandbox-listen", "127.0.0.1:0",
         "--http-listen", "127.0.0.1:0"],
        tmp_path,
        log,
    )  # fmt: skip
    try:
        port = int(_wait_for(r"payorch gRPC listening on 127\.0\.0\.1:(\d+)", log, process)[1])
        sandbox_url = _wait_for(
            r"sandbox provider \(in-process\) listening on (\S+)", log, process
        )[1]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
            payment = stub.CreatePayment(create_request("cli-1"))
            assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
            assert payment.provider == "sandbox"
            ledger = httpx.get(f"{sandbox_url}/_sandbox/ledger").json()["entries"]
            assert [e["kind"] for e in ledger] == ["authorization"]
            # The full local loop: the sandbox's signed webhook comes back and is applied.
            request = pb.ListPaymentEventsRequest(payment_id=payment.payment_id)
            deadline = time.monotonic() + 10
            while "ProviderEventReceived" not in [
                e.type for e in stub.ListPaymentEvents(request).events
            ]:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        http_port = int(_wait_for(r"payorch HTTP listening on 127\.0\.0\.1:(\d+)", log, process)[1])
        assert httpx.get(f"http://127.0.0.1:{http_port}/readyz").json() == {"status": "ready"}
    finally:
        code = _stop(process)
    text = log.read_text()
    assert code == 0, text
    assert "event store: sqlite:///payorch.db" in text
    assert "stopped" in text
    assert (tmp_path / "payorch.db").exists()


def test_sandbox_runs_alone_and_stops_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "sandbox.log"
    process = _start(["sandbox", "--listen", "127.0.0.1:0"], tmp_path, log)
    try:
        url = _wait_for(r"sandbox provider listening on (\S+)", log, process)[1]
        assert httpx.get(f"{url}/_sandbox/faults").json()["honor_idempotency"] is True
    finally:
        assert _stop(process) == 0, log.read_text()


def test_a_database_password_never_reaches_the_log(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process = _start(
        [
            "serve",
            "--grpc-listen", "127.0.0.1:0",
            "--sandbox-listen", "127.0.0.1:0",
            "--database-url", "postgresql://payorch:s3cr3t-pw@127.0.0.1:1/none",
        ],
        tmp_path,
        log,
    )  # fmt: skip
    try:
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    text = log.read_text()
    assert "postgresql://payorch@127.0.0.1:1/none" in text
    assert "s3cr3t-pw" not in text
    assert process.returncode != 0


def _serve_with_a_configured_sandbox(
    tmp_path: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path, str]:
    """``payorch serve --config --sandbox-url``: a sandbox payorch did not start, whose
    table names no webhook secret. Nothing is sent to the sandbox: its port is closed."""
    (tmp_path / "providers.toml").write_text(
        '[providers.sandbox]\ntype = "sandbox"\n[routes]\n"*" = ["sandbox"]\n'
    )
    log = tmp_path / "serve.log"
    process = _start(
        ["serve", "--config", "providers.toml", "--sandbox-url", "http://127.0.0.1:9",
         "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        tmp_path,
        log,
        env,
    )  # fmt: skip
    port = _wait_for(r"payorch HTTP listening on 127\.0\.0\.1:(\d+)", log, process)[1]
    return process, log, f"http://127.0.0.1:{port}/webhooks/sandbox"


def _post_sandbox_delivery(url: str, secret: str) -> httpx.Response:
    body = (
        b'{"id":"evt_cli","type":"payment.authorized","created":%d,"data":{"payment":'
        b'{"id":"sbx_pay_1","reference":"","amount":1,"currency":"USD","status":"authorized",'
        b'"idempotency_key":"k"}}}' % int(time.time())
    )
    stamp = int(time.time())
    headers = {"webhook-id": "evt_cli", "webhook-timestamp": str(stamp),
               "webhook-signature": sign_standard_webhook(secret, "evt_cli", stamp, body)}  # fmt: skip
    return httpx.post(url, content=body, headers=headers)


def test_serve_with_a_configuration_verifies_the_sandboxs_webhooks_with_the_secret_from_the_environment(
    tmp_path: Path,
) -> None:
    secret = new_webhook_secret()
    process, log, url = _serve_with_a_configured_sandbox(
        tmp_path, {"PAYORCH_SANDBOX_WEBHOOK_SECRET": secret}
    )
    try:
        answer = _post_sandbox_delivery(url, secret)
    finally:
        code = _stop(process)
    text = log.read_text()
    assert (answer.status_code, answer.json()) == (200, {"stored": 1, "duplicates": 0}), text
    assert code == 0, text
    assert "no webhook secret" not in text
    assert secret not in text


def test_serve_warns_at_start_up_of_a_webhook_endpoint_without_a_secret(tmp_path: Path) -> None:
    process, log, url = _serve_with_a_configured_sandbox(tmp_path, {})
    try:
        answer = _post_sandbox_delivery(url, new_webhook_secret())
    finally:
        code = _stop(process)
    text = log.read_text()
    assert answer.status_code == 401, text
    assert code == 0, text
    (warning,) = [line for line in text.splitlines() if " WARNING " in line and "webhook" in line]
    assert "'sandbox'" in warning and "/webhooks/sandbox" in warning and "refused" in warning
