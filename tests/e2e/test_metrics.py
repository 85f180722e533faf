"""Metrics and structured logs of a real ``payorch serve``: its ``GET /metrics`` read over
HTTP and parsed with prometheus_client's own parser after a create, a decline, a provider
outage that opens a breaker, and a signed webhook; its JSON log lines parsed, one a line,
carrying the payment id."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.sandbox import SandboxServer, new_webhook_secret
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from tests.e2e.conftest import free_port
from tests.e2e.helpers import create_request, error_reason
from tests.e2e.test_resilience import provider

pytestmark = pytest.mark.timeout(120)

CREATE = "/payments.v1.PaymentOrchestrator/CreatePayment"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Served:
    """A ``payorch serve`` process: its gRPC stub, its /metrics, its log."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process, self.log = process, log
        self.grpc_port = int(self.wait_for(r"gRPC listening on [\d.]+:(\d+)"))
        self.http_port = int(self.wait_for(r"HTTP listening on [\d.]+:(\d+)"))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.stub = payments_pb2_grpc.PaymentOrchestratorStub(self.channel)

    def wait_for(self, pattern: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.log.read_text()):
                return match.group(1)
            assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.05)
        raise TimeoutError(self.log.read_text())

    def metrics(self) -> Samples:
        response = httpx.get(f"http://127.0.0.1:{self.http_port}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


@pytest.fixture
def served(
    database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> Iterator[tuple[Served, str]]:
    """Region US goes to the sandbox, region EU to a provider nobody listens for (its breaker
    opens after two failures); logs as JSON at DEBUG. Yields the server and the sandbox's
    webhook secret."""
    down = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "payorch.toml"
    config.write_text(
        f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{sandbox.url}"\n'
        + provider("down", down, threshold=2, open_seconds=60)
        + '[routes]\n"*" = ["sandbox"]\n"EU" = ["down"]\n'
    )
    secret = new_webhook_secret()
    env = dict(os.environ)
    env.update(
        PAYORCH_DATABASE_URL=database_url,
        PAYORCH_CONFIG=str(config),
        PAYORCH_GRPC_LISTEN="127.0.0.1:0",
        PAYORCH_HTTP_LISTEN="127.0.0.1:0",
        PAYORCH_SANDBOX_WEBHOOK_SECRET=secret,
        PAYORCH_LOG_FORMAT="json",
    )
    env.pop("PAYORCH_METRICS", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "--log-level", "DEBUG", "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            server = Served(process, log)
            yield server, secret
            server.channel.close()
        finally:
            sandbox.disable_webhooks()
            process.terminate()
            process.wait(20)


def test_metrics_follow_a_create_a_decline_an_outage_and_a_webhook(
    served: tuple[Served, str], sandbox: SandboxServer
) -> None:
    server, secret = served
    before = server.metrics()
    assert value(before, "payorch_breaker_state", provider="down") == 0  # closed

    # A create: one OK call, one provider call that succeeded, one store transaction at least.
    sandbox.configure_webhooks(
        f"http://127.0.0.1:{server.http_port}/webhooks/sandbox", secret, initial_delay_ms=50
    )
    created = server.stub.CreatePayment(create_request("m-1"))
    assert created.status == pb.PAYMENT_STATUS_AUTHORIZED
    after = server.metrics()
    assert value(after, "payorch_grpc_calls_total", method=CREATE, code="OK") == 1
    assert value(after, "payorch_grpc_call_seconds_count", method=CREATE) == 1
    ok = {"provider": "sandbox", "operation": "authorize"}
    assert value(after, "payorch_provider_calls_total", outcome="succeeded", **ok) == 1
    assert value(after, "payorch_provider_call_seconds_count", **ok) == 1
    assert value(after, "payorch_store_transaction_seconds_count") >= 1
    assert value(after, "payorch_store_batch_size_count") >= 1
    if "event store: postgresql" in server.log.read_text():  # saves after the first guess
        assert value(after, "payorch_store_head_guesses_total", result="hit") >= 1
        assert value(after, "payorch_store_head_guesses_total", result="miss") == 0

    # Bad input: counted under its status code.
    with pytest.raises(grpc.RpcError) as bad:
        server.stub.CreatePayment(create_request("m-bad", amount=-5))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = server.metrics()
    assert value(after, "payorch_grpc_calls_total", method=CREATE, code="INVALID_ARGUMENT") == 1

    # A decline: a business outcome, counted as such; the breaker stays closed.
    declined = server.stub.CreatePayment(create_request("m-2", payment_method="pm_card_declined"))
    assert declined.status == pb.PAYMENT_STATUS_DECLINED
    after = server.metrics()
    assert value(after, "payorch_provider_calls_total", outcome="declined", **ok) == 1
    assert value(after, "payorch_grpc_calls_total", method=CREATE, code="OK") == 2
    assert value(after, "payorch_breaker_state", provider="sandbox") == 0

    # An outage: calls not reached, retried, the breaker opens, then refuses at once.
    down = {"provider": "down", "operation": "authorize"}
    failed = server.stub.CreatePayment(create_request("m-3", region="EU"))
    assert failed.status == pb.PAYMENT_STATUS_FAILED  # two attempts failed; the third refused
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.CreatePayment(create_request("m-4", region="EU"))
    assert error_reason(refused.value)[0] == grpc.StatusCode.UNAVAILABLE
    after = server.metrics()
    assert value(after, "payorch_provider_calls_total", outcome="not_reached", **down) == 1
    assert value(after, "payorch_provider_retries_total", provider="down") >= 1
    assert value(after, "payorch_breaker_state", provider="down") == 2  # open
    transition = {"provider": "down", "from_state": "closed", "to_state": "open"}
    assert value(after, "payorch_breaker_transitions_total", **transition) == 1
    assert value(after, "payorch_grpc_calls_total", method=CREATE, code="UNAVAILABLE") == 1
    refusals = (
        "payorch_bulkhead_refusals_total",
        frozenset({("provider", "down"), ("reason", "slots")}),
    )
    assert after[refusals] == 0  # the breaker refused it, not the bulkhead

    # A webhook: the sandbox's signed delivery of the create, stored, then applied.
    def delivered() -> bool:
        samples = server.metrics()
        return (
            value(samples, "payorch_webhook_deliveries_total", provider="sandbox", result="stored")
            >= 1
            and sum(
                v for (name, _), v in samples.items() if name == "payorch_webhooks_processed_total"
            )
            >= 1
            and value(samples, "payorch_webhook_consumer_lag") == 0
        )

    eventually(delivered)
    final = server.metrics()
    assert value(final, "payorch_payments_requiring_review") == 0
    assert value(final, "payorch_payments_in_doubt") >= 0
    assert "payorch_listing_lag" in {name for name, _ in final}

    # The JSON log: every line an object; the create's lines name its payment and operation.
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    about = [line for line in lines if line.get("payment_id") == created.payment_id]
    assert about, "no log line carries the created payment's id"
    assert {line["operation"] for line in about} == {"authorize"}


def test_metrics_off_serves_no_metrics_endpoint(
    database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    env = dict(os.environ)
    env.update(
        PAYORCH_DATABASE_URL=database_url, PAYORCH_SANDBOX_URL=sandbox.url,
        PAYORCH_GRPC_LISTEN="127.0.0.1:0", PAYORCH_HTTP_LISTEN="127.0.0.1:0",
        PAYORCH_METRICS="off",
    )  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "serve"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            server = Served(process, log)
            assert server.stub.CreatePayment(create_request("off-1")).payment_id
            response = httpx.get(f"http://127.0.0.1:{server.http_port}/metrics")
            assert response.status_code == 404
            server.channel.close()
        finally:
            process.terminate()
            process.wait(20)
