"""``payorch serve``'s listen policy and ``payorch auth hash-token``, run as the real command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from adapters.sandbox import SandboxServer
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.trust import hash_token
from tests.certs import Authority
from tests.e2e.helpers import create_request, error_reason
from tests.e2e.test_cli import _start, _stop, _wait_for

pytestmark = pytest.mark.timeout(60)

LOCAL = ["--sandbox-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]


def test_serve_on_every_address_without_tls_and_auth_refuses_to_start(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process = _start(["serve", "--grpc-listen", "0.0.0.0:0", *LOCAL], tmp_path, log)
    assert process.wait(30) == 2
    text = log.read_text()
    assert "0.0.0.0:0 is not a loopback address" in text
    assert "TLS ([grpc.tls]) and caller authentication ([auth])" in text
    assert "--insecure" in text
    assert "payorch gRPC listening" not in text
    assert not (tmp_path / "payorch.db").exists()  # refused before the store is opened


def test_serve_insecure_on_every_address_starts_with_a_warning(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process = _start(["serve", "--grpc-listen", "0.0.0.0:0", "--insecure", *LOCAL], tmp_path, log)
    try:
        port = int(_wait_for(r"payorch gRPC listening on 0\.0\.0\.0:(\d+)", log, process)[1])
        assert "WARNING payorch --insecure: 0.0.0.0:0 is not a loopback address" in log.read_text()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            payment = payments_pb2_grpc.PaymentOrchestratorStub(channel).CreatePayment(
                create_request("insecure-1")
            )
            assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    finally:
        assert _stop(process) == 0


def test_serve_with_tls_and_callers_listens_everywhere_and_knows_its_callers(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    ca = Authority()
    ca.server_certificate().write(tmp_path, "server")
    (tmp_path / "payorch.toml").write_text(
        f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{sandbox.url}"\n'
        '[routes]\n"*" = ["sandbox"]\n'
        '[grpc.tls]\ncert_file = "server.pem"\nkey_file = "server.key"\n'
        '[auth]\n[[auth.callers]]\nname = "checkout"\naccount = "shop"\n'
        f'roles = ["payments.write"]\ntoken_sha256 = ["{hash_token("cli-token")}"]\n'
    )
    log = tmp_path / "serve.log"
    process = _start(
        ["--log-level", "DEBUG", "serve", "--grpc-listen", "0.0.0.0:0", *LOCAL],
        tmp_path,
        log,
        env={"PAYORCH_CONFIG": str(tmp_path / "payorch.toml")},
    )
    try:
        port = int(_wait_for(r"payorch gRPC listening on 0\.0\.0\.0:(\d+)", log, process)[1])
        assert "gRPC: TLS, callers: checkout" in log.read_text()
        credentials = grpc.ssl_channel_credentials(ca.pem)
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.CreatePayment(
                    create_request("t-1"), metadata=[("authorization", "Bearer not-it")]
                )
            assert error_reason(refused.value)[1] == "UNAUTHENTICATED"
            payment = stub.CreatePayment(
                create_request("t-1"), metadata=[("authorization", "Bearer cli-token")]
            )
            assert payment.status == pb.PAYMENT_STATUS_AUTHORIZED
    finally:
        assert _stop(process) == 0
    assert "cli-token" not in log.read_text() and "not-it" not in log.read_text()


def test_a_bad_auth_configuration_stops_the_start_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / "payorch.toml").write_text(
        '[auth]\n[[auth.callers]]\nname = "checkout"\naccount = "shop"\n'
        'roles = ["payments.write"]\ntoken_sha256 = ["abc"]\n'
    )
    log = tmp_path / "serve.log"
    process = _start(["serve", "--config", str(tmp_path / "payorch.toml"), *LOCAL], tmp_path, log)
    assert process.wait(30) == 2
    assert "caller 'checkout': token_sha256 holds 3 characters" in log.read_text()


def test_hash_token_reads_the_token_on_stdin_and_prints_its_sha256() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "auth", "hash-token"],
        input=b"s3cret-token\n",
        capture_output=True,
        timeout=30,
        check=True,
    )
    assert done.stdout.decode().strip() == hash_token("s3cret-token")
    assert len(done.stdout.decode().strip()) == 64
    empty = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "auth", "hash-token"],
        input=b"",
        check=False,
        capture_output=True,
        timeout=30,
    )
    assert empty.returncode == 2 and b"no token on stdin" in empty.stderr
