"""When the OTEL_* variables turn tracing on, and that nothing of it runs when they do not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from orchestrator import tracing

ENDPOINT = "http://127.0.0.1:4318"


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "payorch"}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": " OTLP "}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ENDPOINT + "/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "TRUE"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_SDK_DISABLED": "false"}, True),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            True,
        ),
    ],
)
def test_the_standard_variables_decide_whether_traces_are_on(
    environ: dict[str, str], on: bool
) -> None:
    assert tracing.wanted(environ) is on


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp,console"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
    ],
)
def test_what_payorch_cannot_export_is_refused_not_ignored(environ: dict[str, str]) -> None:
    with pytest.raises(tracing.TracingSettingsError):
        tracing.wanted(environ)


def test_off_by_default_nothing_of_opentelemetry_is_loaded_or_installed() -> None:
    """In a fresh interpreter that loads everything ``payorch serve`` runs: no tracer, the
    shared no-op span, no trace ids for logs, and no OpenTelemetry module imported (so httpx
    is not instrumented and no interceptor can exist)."""
    probe = (
        "import sys\n"
        "import orchestrator.cli\n"
        "from orchestrator import tracing\n"
        "assert tracing.configure({}) is None\n"
        "assert tracing.span('x', {}) is tracing.span('y', {'a': 'b'})\n"
        "assert tracing.current_ids() is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert ran.stdout.strip() == "[]"


def test_service_name_is_payorch_unless_the_variables_name_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    for variables, expected in (
        ({}, "payorch"),
        ({"OTEL_SERVICE_NAME": "payorch-eu"}, "payorch-eu"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=pay-2,deployment.environment=test"}, "pay-2"),
    ):
        with monkeypatch.context() as env:
            env.delenv("OTEL_SERVICE_NAME", raising=False)
            env.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
            for name, value in variables.items():
                env.setenv(name, value)
            setup = tracing.configure(dict(os.environ), exporter=InMemorySpanExporter())
            assert setup is not None
            try:
                assert setup.provider.resource.attributes["service.name"] == expected
            finally:
                setup.shutdown()
