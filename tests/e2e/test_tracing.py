"""Traces of real calls: a real gRPC server on loopback, real HTTP to the sandbox and to the
Stripe emulator, spans caught by an in-memory exporter given to ``tracing.configure``; then a
real ``payorch serve`` exporting OTLP/HTTP, as its OTEL_* variables ask, to a receiver run
here that decodes the protobuf."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from adapters.sandbox import SandboxServer
from orchestrator import tracing
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.server import PaymentServer, create_server
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration
from orchestrator.logs import ContextFilter, JsonFormatter
from tests.e2e.conftest import free_port
from tests.e2e.helpers import create_request, error_reason
from tests.e2e.test_resilience import provider
from tests.emulators import stripe

pytestmark = pytest.mark.timeout(120)

CREATE = "payments.v1.PaymentOrchestrator/CreatePayment"
STRIPE_KEY_VARIABLE = "PAYORCH_TEST_TRACING_STRIPE_KEY"


@dataclass
class Traced:
    app: Payments
    server: PaymentServer
    stub: payments_pb2_grpc.PaymentOrchestratorStub
    exporter: InMemorySpanExporter
    sandbox_url: str
    stripe_url: str

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())


@pytest.fixture
def traced(
    database_url: str, sandbox: SandboxServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Traced]:
    """US to the sandbox, GB to the Stripe emulator (a secret key in an Authorization header);
    the instrumentation asked to capture every request header, which must still not leak."""
    monkeypatch.setenv(STRIPE_KEY_VARIABLE, stripe.SECRET_KEY)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", ".*")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS", "")
    emulator = stripe.StripeEmulator()
    emulator.start()
    exporter = InMemorySpanExporter()
    setup = tracing.configure({}, exporter=exporter)
    assert setup is not None
    config = tmp_path / "payorch.toml"
    config.write_text(
        f'[providers.sandbox]\ntype = "sandbox"\nbase_url = "{sandbox.url}"\n'
        f'[providers.stripe-gb]\ntype = "stripe"\nbase_url = "{emulator.url}"\n'
        f'secret_key_env = "{STRIPE_KEY_VARIABLE}"\n'
        + provider("down", f"http://127.0.0.1:{free_port()}", threshold=100)
        + '[routes]\n"*" = ["sandbox"]\nGB = ["stripe-gb"]\nEU = ["down"]\n'
    )
    app = build_payments(database_url, load_configuration(str(config), None).router)
    server = create_server("127.0.0.1:0", app, tracing=setup)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Traced(
            app,
            server,
            payments_pb2_grpc.PaymentOrchestratorStub(channel),
            exporter,
            sandbox.url,
            emulator.url,
        )
    finally:
        channel.close()
        server.stop(grace=1)
        app.close()
        setup.shutdown()
        emulator.stop()


def by_id(spans: list[ReadableSpan]) -> dict[int, ReadableSpan]:
    return {span.context.span_id: span for span in spans}


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """The span's parent, its parent's parent, ... as far as they were exported."""
    index, chain = by_id(spans), []
    while span.parent is not None and span.parent.span_id in index:
        span = index[span.parent.span_id]
        chain.append(span)
    return chain


def server_span(spans: list[ReadableSpan], method: str = CREATE) -> ReadableSpan:
    (found,) = [s for s in spans if s.kind is SpanKind.SERVER and s.name == method]
    return found


def http_spans(spans: list[ReadableSpan], url: str) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.kind is SpanKind.CLIENT
        and str(
            (s.attributes or {}).get("http.url", (s.attributes or {}).get("url.full", ""))
        ).startswith(url)
    ]


def test_a_create_payment_traces_the_server_span_with_the_provider_http_span_under_it(
    traced: Traced,
) -> None:
    created = traced.stub.CreatePayment(create_request("trace-1"))
    assert created.status == pb.PAYMENT_STATUS_AUTHORIZED
    spans = traced.spans()
    server = server_span(spans)
    assert server.parent is None  # the caller sent no traceparent: the trace starts here
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == 0
    assert server.status.status_code is StatusCode.UNSET
    (http,) = http_spans(spans, traced.sandbox_url)
    assert http.attributes is not None
    assert http.attributes.get("http.status_code", http.attributes.get("http.response.status_code"))
    chain = ancestors(http, spans)
    assert chain[-1] is server, [s.name for s in chain]
    assert {s.context.trace_id for s in [http, *chain]} == {server.context.trace_id}
    # Between them: the application's command and the resilient layer's call, both naming
    # the payment, the provider and the operation.
    assert [s.name for s in chain] == ["provider.authorize", "payment.authorize", CREATE]
    for span in chain[:2]:
        assert span.attributes == {
            "payment.id": created.payment_id,
            "payment.provider": "sandbox",
            "payment.operation": "authorize",
        }


def test_no_secret_or_card_data_is_put_on_any_span(traced: Traced) -> None:
    created = traced.stub.CreatePayment(
        create_request("trace-gb", region="GB", currency="GBP", payment_method="pm_card_visa")
    )
    assert created.status == pb.PAYMENT_STATUS_AUTHORIZED
    spans = traced.spans()
    calls = http_spans(spans, traced.stripe_url)  # create the PaymentIntent, confirm it
    assert len(calls) == 2
    for http in calls:
        assert ancestors(http, spans)[-1] is server_span(spans)
        # Asked to capture every request header, the instrumentation names them, values hidden.
        assert http.attributes is not None
        assert "http.request.header.authorization" in http.attributes, sorted(http.attributes)
    text = json.dumps(
        [
            {
                "name": s.name,
                "attributes": dict(s.attributes or {}),
                "events": [dict(e.attributes or {}) for e in s.events],
                "resource": dict(s.resource.attributes),
            }
            for s in spans
        ],
        default=str,
    )
    for secret in (stripe.SECRET_KEY, "pm_card_visa", "trace-gb"):
        assert secret not in text
    assert created.payment_id in text  # the scan does see span attributes


def test_a_capture_and_a_stream_are_traced_each_in_its_own_trace(traced: Traced) -> None:
    created = traced.stub.CreatePayment(create_request("trace-cap"))
    traced.exporter.clear()
    captured = traced.stub.CapturePayment(
        pb.CapturePaymentRequest(idempotency_key="trace-cap-1", payment_id=created.payment_id)
    )
    assert captured.status == pb.PAYMENT_STATUS_CAPTURED
    events = list(traced.stub.StreamEvents(pb.StreamEventsRequest(follow=False)))
    assert events
    spans = traced.spans()
    capture = server_span(spans, "payments.v1.PaymentOrchestrator/CapturePayment")
    (http,) = http_spans(spans, traced.sandbox_url)
    assert [s.name for s in ancestors(http, spans)] == [
        "provider.capture",
        "payment.capture",
        capture.name,
    ]
    stream = server_span(spans, "payments.v1.PaymentOrchestrator/StreamEvents")
    assert stream.context.trace_id != capture.context.trace_id
    assert stream.attributes is not None
    assert stream.attributes["rpc.grpc.status_code"] == 0


def test_a_failed_provider_call_is_an_error_span_naming_only_the_exceptions_type(
    traced: Traced,
) -> None:
    created = traced.stub.CreatePayment(create_request("trace-down", region="EU"))
    assert created.status == pb.PAYMENT_STATUS_FAILED  # nobody listens: certainly not charged
    spans = traced.spans()
    (call,) = [s for s in spans if s.name == "provider.authorize"]
    assert call.status.status_code is StatusCode.ERROR
    assert call.status.description == "ProviderNotReached"
    assert call.events == ()  # no message, no traceback
    attempts = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert attempts and all(ancestors(a, spans)[0] is call for a in attempts)
    assert all(a.status.status_code is StatusCode.ERROR for a in attempts)
    # each attempt's span names how it failed, as the adapters' logs do
    assert {(a.attributes or {}).get("error.type") for a in attempts} == {"ConnectError"}
    assert {a.status.description for a in attempts} == {"ConnectError"}


def test_the_callers_traceparent_is_honoured(traced: Traced) -> None:
    trace_id, parent_id = "4bf92f3577b34a4e9a3d8f5c2a1e0c11", "00f067aa0ba902b7"
    created = traced.stub.CreatePayment(
        create_request("trace-parent"),
        metadata=[("traceparent", f"00-{trace_id}-{parent_id}-01")],
    )
    spans = traced.spans()
    server = server_span(spans)
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == parent_id
    assert server.parent.is_remote
    (http,) = http_spans(spans, traced.sandbox_url)
    assert format(http.context.trace_id, "032x") == trace_id
    assert created.payment_id


def test_a_refused_call_ends_its_server_span_with_its_status(traced: Traced) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        traced.stub.CreatePayment(create_request("trace-bad", amount=-5))
    assert error_reason(refused.value)[0] is grpc.StatusCode.INVALID_ARGUMENT
    server = server_span(traced.spans())
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == "INVALID_ARGUMENT"


def test_json_log_lines_inside_a_command_carry_its_trace_id(traced: Traced) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("payorch")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        created = traced.stub.CreatePayment(create_request("trace-log"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    trace_id = format(server_span(traced.spans()).context.trace_id, "032x")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    about = [line for line in lines if line.get("payment_id") == created.payment_id]
    assert about, lines
    assert {line.get("trace_id") for line in about} == {trace_id}
    assert all(len(line["span_id"]) == 16 for line in about)


def test_health_checks_are_not_traced(traced: Traced) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{traced.server.port}")
    with channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert traced.spans() == []


# --- a real payorch serve, exporting over OTLP/HTTP ----------------------------------------


class Receiver:
    """An OTLP/HTTP trace receiver: decodes each ExportTraceServiceRequest it is sent."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                received.paths.append(self.path)
                received.requests.append(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def spans(self) -> list[tuple[dict[str, str], Span]]:
        """Each span with its resource's attributes."""
        return [
            ({a.key: a.value.string_value for a in rs.resource.attributes}, span)
            for request in self.requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]


def serve_env(database_url: str, sandbox: SandboxServer, **otel: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        PAYORCH_DATABASE_URL=database_url,
        PAYORCH_SANDBOX_URL=sandbox.url,
        PAYORCH_GRPC_LISTEN="127.0.0.1:0",
        PAYORCH_HTTP_LISTEN="127.0.0.1:0",
        PAYORCH_LOG_FORMAT="json",
        **otel,
    )
    return env


def wait_for_port(log: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            message = json.loads(line).get("message", "") if line.startswith("{") else ""
            if message.startswith("payorch gRPC listening on"):
                return int(message.rsplit(":", 1)[1])
        assert process.poll() is None, log.read_text()
        time.sleep(0.05)
    raise TimeoutError(log.read_text())


def test_payorch_serve_exports_a_create_payment_over_otlp_when_the_variables_say_so(
    database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    receiver = Receiver()
    env = serve_env(
        database_url,
        sandbox,
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
        OTEL_SERVICE_NAME="payorch-test",
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "--log-level", "DEBUG", "serve"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            port = wait_for_port(log, process)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
                created = stub.CreatePayment(create_request("otlp-1"))
            assert created.status == pb.PAYMENT_STATUS_AUTHORIZED
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0, log.read_text()
    # The batch was still queued at SIGTERM (it waits 5 s): serve's shutdown exported it.
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    spans = receiver.spans()
    assert {resource["service.name"] for resource, _ in spans} == {"payorch-test"}
    named = {span.name: span for _, span in spans}
    server, http = named[CREATE], named["POST"]
    assert http.trace_id == server.trace_id
    chain, parent = [], http.parent_span_id
    index = {span.span_id: span for _, span in spans}
    while parent in index:
        chain.append(index[parent].name)
        parent = index[parent].parent_span_id
    assert chain == ["provider.authorize", "payment.authorize", CREATE]
    attributes = {a.key: a.value.string_value for a in named["payment.authorize"].attributes}
    assert attributes["payment.id"] == created.payment_id
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("trace_id") == server.trace_id.hex() for line in lines)


def test_payorch_serve_refuses_an_otlp_protocol_it_cannot_speak(
    database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    refused = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve"],
        env=serve_env(
            database_url,
            sandbox,
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4317",
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
        ),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert b"exports traces only as http/protobuf" in refused.stderr
