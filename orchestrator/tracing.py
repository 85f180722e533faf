"""OpenTelemetry traces: one trace per command, from the gRPC server span through the
application to each provider HTTP call, exported over OTLP. Off unless the standard
``OTEL_*`` variables ask for it.

When it is on (``wanted``), decided once at start-up:

- ``OTEL_SDK_DISABLED=true`` turns it off, whatever else is set;
- ``OTEL_TRACES_EXPORTER=otlp`` turns it on, ``none`` (or unset) leaves it off, any other
  exporter is refused at start-up (exit 2) rather than silently ignored;
- with ``OTEL_TRACES_EXPORTER`` unset, setting ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` turns it on. (The specification's default exporter is
  otlp, which would trace every process by default; we want a deliberate act instead.)

Only OTLP over HTTP/protobuf is supported: ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` of
``grpc`` or ``http/json`` is refused at start-up. Everything else (endpoint, headers,
timeout, compression, certificate, sampler, batch sizes, resource attributes) is read by the
SDK from its own standard variables. ``service.name`` is ``payorch`` unless
``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``) says otherwise.

When off, nothing of OpenTelemetry is imported, no interceptor is installed, and ``span``
and ``client_span`` return shared no-op context managers: the cost is a global read per span
site (bench/metrics.py measures it).

What is put on spans: the gRPC method and status code, ``payment.id``, ``payment.provider``,
``payment.operation``, and for each provider request (``client_span``, a CLIENT span that
sends its ``traceparent`` on to the provider) the method, the URL without its query, the
server's address and port, and the answer's status. Never header values (the request headers
``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST`` names are recorded by name, their
values always redacted), bodies, card data, tokens, provider keys, exception messages or the
caller's gRPC metadata (only ``traceparent`` and ``tracestate`` are read from it).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Final

import grpc

from orchestrator.api.handlers import Behaviour, final_code, rewrapped

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanKind, Tracer

log = logging.getLogger(__name__)

SUPPORTED_PROTOCOL: Final = "http/protobuf"
# Health probes arrive every few seconds from every load balancer: spans of no interest.
UNTRACED_PREFIXES: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_OFF: Final[AbstractContextManager[None]] = nullcontext()
_TRUE = ("true", "1", "yes", "on")
_CAPTURE = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST"
_REDACTED: Final = ("[REDACTED]",)


def _ignore(status: int) -> None:
    pass


_UNTRACED_CALL: Final[AbstractContextManager[Callable[[int], None]]] = nullcontext(_ignore)


class TracingSettingsError(ValueError):
    """The OTEL_* variables ask for something payorch does not do (start-up refuses)."""


def wanted(environ: Mapping[str, str]) -> bool:
    """Whether the standard variables ask for traces (see the module's docstring)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return False
    exporters = [
        e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()
    ]
    if not exporters:
        on = bool(
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        )
    elif exporters == ["none"]:
        return False
    elif exporters == ["otlp"]:
        on = True
    else:
        raise TracingSettingsError(
            f"OTEL_TRACES_EXPORTER={environ['OTEL_TRACES_EXPORTER']!r}: payorch exports traces "
            "only over OTLP (otlp) or not at all (none)"
        )
    if on:
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or SUPPORTED_PROTOCOL
        ).strip()
        if protocol != SUPPORTED_PROTOCOL:
            raise TracingSettingsError(
                f"OTLP protocol {protocol!r}: payorch exports traces only as {SUPPORTED_PROTOCOL}"
            )
    return on


class Tracing:
    """The process's tracer provider and what it installed; ``shutdown`` exports what is
    left and uninstalls it."""

    def __init__(
        self, provider: TracerProvider, tracer: Tracer, captured: re.Pattern[str] | None = None
    ):
        self.provider, self.tracer = provider, tracer
        self.captured = captured  # the request header names put on client spans (redacted)

    def interceptor(self) -> TracingInterceptor:
        return TracingInterceptor(self.tracer)

    def shutdown(self) -> None:
        """Exports the spans still queued (within the exporter's timeout), then stops."""
        if _Process.tracing is self:
            _Process.tracing = None
        self.provider.shutdown()


class _Process:
    """What this process installed: at most one ``Tracing``."""

    tracing: Tracing | None = None


def configure(
    environ: Mapping[str, str] | None = None,
    *,
    exporter: SpanExporter | None = None,
    processor: Callable[[SpanExporter], SpanProcessor] | None = None,
) -> Tracing | None:
    """Sets up tracing for this process when ``environ`` (``os.environ``) asks for it, or
    when an ``exporter`` is given (tests: an in-memory one; ``processor`` then defaults to a
    simple, synchronous one). Returns ``None`` when off."""
    env = os.environ if environ is None else environ
    if exporter is None and not wanted(env):
        return None
    if _Process.tracing is not None:
        raise RuntimeError("tracing is already configured in this process")
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes: dict[str, str] = {}
    named_by_env = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    if not named_by_env:  # Resource.create lets ours override the variables: only as default
        attributes[SERVICE_NAME] = "payorch"
    # Flushed by ``Tracing.shutdown`` where the process stops, not by an atexit hook that
    # would run after logging and the store have closed.
    provider = TracerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # endpoint, headers, timeout: from the OTEL_* variables
        processor = processor or BatchSpanProcessor
    provider.add_span_processor((processor or SimpleSpanProcessor)(exporter))
    tracer = provider.get_tracer("payorch")
    # read from the process's environment, as OpenTelemetry's instrumentations read it
    tracing = Tracing(provider, tracer, _captured(os.environ.get(_CAPTURE, "")))
    _Process.tracing = tracing
    log.info("tracing on: spans exported with %s", type(exporter).__name__)
    return tracing


def span(name: str, attributes: Mapping[str, str]) -> AbstractContextManager[Any]:
    """A span named ``name``, current inside the block, child of the current one; the shared
    no-op when tracing is off. Attributes: identifiers only, never secrets or card data."""
    tracing = _Process.tracing
    if tracing is None:
        return _OFF
    return _recording(tracing.tracer, name, attributes)


@contextmanager
def _recording(
    tracer: Tracer, name: str, attributes: Mapping[str, Any], kind: SpanKind | None = None
) -> Iterator[Span]:
    """A span (INTERNAL unless ``kind`` says) whose failure is told by its name alone
    (``failure``): the SDK's default would record the message and traceback, which are not
    ours to export."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    with tracer.start_as_current_span(
        name, kind=kind or SpanKind.INTERNAL, attributes=dict(attributes),
        record_exception=False, set_status_on_exception=False,
    ) as current:  # fmt: skip
        try:
            yield current
        except BaseException as e:
            current.set_status(Status(StatusCode.ERROR, failure(e)))
            raise


def failure(e: BaseException) -> str:
    """What a span calls a failure: the exception's ``error_type`` if it names one (a provider
    request's ``ConnectError``, ``ReadTimeout``...), else its type's name."""
    return getattr(e, "error_type", None) or type(e).__name__


def client_span(
    method: str, url: str, headers: dict[str, str]
) -> AbstractContextManager[Callable[[int], None]]:
    """A CLIENT span around one provider request to ``url`` (the span takes no query), child of
    the current one; its ``traceparent`` is added to ``headers``, which are about to be sent.
    Yields what to call with the answer's status. The shared no-op when tracing is off."""
    tracing = _Process.tracing
    if tracing is None:
        return _UNTRACED_CALL
    return _client_call(tracing, method, url, headers)


@contextmanager
def _client_call(
    tracing: Tracing, method: str, url: str, headers: dict[str, str]
) -> Iterator[Callable[[int], None]]:
    from urllib.parse import urlsplit

    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parts = urlsplit(url)
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.full": url.split("?", 1)[0],
        "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
    }
    if tracing.captured is not None:
        for name in headers:
            if tracing.captured.fullmatch(name):
                attributes[f"http.request.header.{name.lower()}"] = _REDACTED
    with _recording(tracing.tracer, method, attributes, SpanKind.CLIENT) as current:
        TraceContextTextMapPropagator().inject(headers)

        def answered(status: int) -> None:
            current.set_attribute("http.response.status_code", status)
            if status >= 400:
                current.set_status(Status(StatusCode.ERROR))

        try:
            yield answered
        except BaseException as e:
            current.set_attribute("error.type", failure(e))
            raise


def _captured(names: str) -> re.Pattern[str] | None:
    """The header names ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST`` asks for
    (comma-separated, each a regular expression, case-insensitive), as one pattern."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        return None
    return re.compile("|".join(f"(?:{n})" for n in wanted), re.IGNORECASE)


def payment_attributes(payment_id: str, provider: str, operation: str) -> dict[str, str]:
    return {"payment.id": payment_id, "payment.provider": provider, "payment.operation": operation}


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids (hex, as W3C writes them), if tracing is on and
    a span is current: what a log line carries to be found beside its trace."""
    if _Process.tracing is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


class TracingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """A server span per call, child of the caller's ``traceparent`` if it sent one; its
    status is the call's final gRPC code. Ours rather than opentelemetry-instrumentation-grpc's,
    which records status code 0 (OK) when a call ends by ``abort_with_status`` (how every
    refusal of ours ends) and takes W3C baggage from any caller (then sent on to providers)."""

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry.propagators.textmap import DefaultGetter
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.tracer = tracer
        self._propagator = TraceContextTextMapPropagator()
        self._getter = DefaultGetter()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(UNTRACED_PREFIXES):
            return handler
        return rewrapped(
            handler,
            unary=lambda behaviour: self._unary(method, behaviour),
            streamed=lambda behaviour: self._streamed(method, behaviour),
        )

    def _start(self, method: str, context: grpc.ServicerContext) -> AbstractContextManager[Span]:
        from opentelemetry.trace import SpanKind

        carrier = {
            key: value
            for key, value in context.invocation_metadata()
            if key in ("traceparent", "tracestate") and isinstance(value, str)
        }
        parent = self._propagator.extract(carrier, getter=self._getter) if carrier else None
        service, _, name = method.lstrip("/").partition("/")
        return self.tracer.start_as_current_span(
            method.lstrip("/"),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,  # an exception's message is not ours to export
            set_status_on_exception=False,
        )

    @staticmethod
    def _end(span: Span, context: grpc.ServicerContext, ok: bool) -> None:
        from opentelemetry.trace import Status, StatusCode

        code = final_code(context, ok)
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))

    def _unary(self, method: str, behaviour: Behaviour) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            with self._start(method, context) as span:
                ok = False
                try:
                    response = behaviour(request, context)
                    ok = True
                    return response
                finally:
                    self._end(span, context, ok)

        return run

    def _streamed(self, method: str, behaviour: Behaviour) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self._start(method, context) as span:
                ok = False
                try:
                    yield from behaviour(request, context)
                    ok = True
                finally:
                    self._end(span, context, ok)

        return run
