"""Prometheus metrics, served at ``GET /metrics`` on the HTTP listener.

One endpoint per process: each ``payorch serve`` counts what it did, in its own registry,
and Prometheus scrapes every process (and sums across them with ``sum by``). Chosen over
prometheus-client's multiprocess mode because the processes are independent servers, not
workers forked by one parent: multiprocess mode needs a directory shared by all of them,
wiped before they start, and gives up live gauges (breaker state) and custom collectors.
The gauges read from the store (payments in doubt, requiring review, lags) are the same
whichever process is asked: they describe the shared log, not the process.

Everything here lives around the domain, never in it: a gRPC server interceptor, hooks the
resilient provider, the breaker, the group commit and the webhook side call, and a
collector that reads indexes at scrape time. ``PAYORCH_METRICS=off`` leaves all of it out
(to measure what it costs).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from orchestrator.api.handlers import Behaviour, WrappedByMethod, final_code, rewrapped
from orchestrator.resilience.breaker import State
from orchestrator.resilience.bulkhead import Bulkhead

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: calls answered from memory take under a millisecond, provider calls up to seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_STATE_VALUE = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}


def enabled() -> bool:
    """``PAYORCH_METRICS=off`` (or 0, false): no metrics, no interceptor, no hooks."""
    return os.environ.get("PAYORCH_METRICS", "on").lower() not in ("off", "0", "false", "no")


class Metrics:
    """The process's metrics and the hooks that feed them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.grpc_calls = Counter(
            "payorch_grpc_calls", "gRPC calls answered, by method and status code",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.grpc_seconds = Histogram(
            "payorch_grpc_call_seconds", "gRPC call latency, by method",
            ["method"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.provider_calls = Counter(
            "payorch_provider_calls",
            "Provider calls (retries included), by provider, operation and outcome "
            "(succeeded, declined, failed, unknown, not_reached)",
            ["provider", "operation", "outcome"], registry=r,
        )  # fmt: skip
        self.provider_seconds = Histogram(
            "payorch_provider_call_seconds", "Provider call latency, retries included",
            ["provider", "operation"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "payorch_provider_retries", "Provider attempts retried", ["provider"], registry=r
        )
        self.breaker_transitions = Counter(
            "payorch_breaker_transitions", "Circuit breaker state changes",
            ["provider", "from_state", "to_state"], registry=r,
        )  # fmt: skip
        self.webhook_deliveries = Counter(
            "payorch_webhook_deliveries",
            "Webhook deliveries received, by provider and result "
            "(stored, duplicate, refused_<status>, error)",
            ["provider", "result"], registry=r,
        )  # fmt: skip
        self.webhooks_processed = Counter(
            "payorch_webhooks_processed", "Stored deliveries applied by the consumer, by result",
            ["result"], registry=r,
        )  # fmt: skip
        self.store_seconds = Histogram(
            "payorch_store_transaction_seconds", "Event store write transaction latency",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "payorch_store_batch_size", "Saves committed in one event store transaction",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.head_guesses = Counter(
            "payorch_store_head_guesses", "PostgreSQL transactions sent in one round trip on "
            "the chain head this process last wrote, by result (hit, miss: another wrote since)",
            ["result"], registry=r,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # --- hooks (orchestrator.resilience.provider.CallObserver and the rest) ------------------

    def provider_call(self, provider: str, operation: str, outcome: str, seconds: float) -> None:
        self.provider_calls.labels(provider, operation, outcome).inc()
        self.provider_seconds.labels(provider, operation).observe(seconds)

    def retry(self, provider: str) -> None:
        self.retries.labels(provider).inc()

    def breaker_changed(self, provider: str, old: State, new: State) -> None:
        self.breaker_transitions.labels(provider, old.value, new.value).inc()

    def webhook_delivery(self, provider: str, result: str) -> None:
        self.webhook_deliveries.labels(provider, result).inc()

    def webhook_processed(self, result: str) -> None:
        self.webhooks_processed.labels(_result_kind(result)).inc()

    def store_transaction(self, saves: int, seconds: float) -> None:
        self.store_seconds.observe(seconds)
        self.batch_size.observe(saves)

    def head_guess(self, result: str) -> None:
        self.head_guesses.labels(result).inc()

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)


def _result_kind(result: str) -> str:
    """The processor's result is a sentence (``WebhookProcessor.process``); its label one of
    a few: applied (the payment changed), unmatched, elsewhere (another consumer), unchanged."""
    if result.startswith(("resolved", "reversed", "dispute opened", "dispute closed")):
        return "applied"
    if result.startswith("unmatched"):
        return "unmatched"
    if result.startswith("processed by another"):
        return "elsewhere"
    return "unchanged"


class StateCollector(Collector):
    """Read when scraped: each breaker's state, each bulkhead's refusals (its own counts),
    the payments in doubt (the in-doubt index's rows) and requiring review (the listing's),
    the webhook deliveries still unmatched (the unmatched index's rows), and how far the
    webhook consumer and the listing are behind the log. Each is one indexed query or a
    field; none scans the log."""

    def __init__(
        self,
        breakers: Callable[[], Iterable[tuple[str, State]]],
        bulkheads: Callable[[], Iterable[Bulkhead]],
        *,
        in_doubt: Callable[[], int],
        requiring_review: Callable[[], int],
        unmatched: Callable[[], int],
        webhook_lag: Callable[[], int],
        listing_lag: Callable[[], int],
    ) -> None:
        self._breakers = breakers
        self._bulkheads = bulkheads
        self._values = {
            "payorch_payments_in_doubt": ("Payments with an operation in doubt", in_doubt),
            "payorch_payments_requiring_review": (
                "Payments flagged REQUIRES_REVIEW (from the listing)", requiring_review,
            ),
            "payorch_webhooks_unmatched": (
                "Webhook deliveries still unmatched (the unmatched index's rows)", unmatched,
            ),
            "payorch_webhook_consumer_lag": (
                "Log positions the webhook consumer is behind the head", webhook_lag,
            ),
            "payorch_listing_lag": ("Log positions the listing is behind the head", listing_lag),
        }  # fmt: skip

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "payorch_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            labels=["provider"],
        )  # fmt: skip
        for name, current in self._breakers():
            state.add_metric([name], _STATE_VALUE[current])
        yield state
        refusals = CounterMetricFamily(
            "payorch_bulkhead_refusals",
            "Provider calls refused by the bulkhead: slots (none free), rate (no token)",
            labels=["provider", "reason"],
        )  # fmt: skip
        for bulkhead in self._bulkheads():
            refusals.add_metric([bulkhead.name, "slots"], bulkhead.refused_slots)
            refusals.add_metric([bulkhead.name, "rate"], bulkhead.refused_rate)
        yield refusals
        for name, (text, read) in self._values.items():
            yield GaugeMetricFamily(name, text, value=read())


# --- gRPC ---------------------------------------------------------------------------------


class MetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Counts each call by method and final status code and times it. First in the chain, so
    calls refused by authentication are counted too."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._wrapped = WrappedByMethod(self._wrap)
        # Each method's labelled children, looked up once (labels() takes a lock and builds
        # a tuple on every call); the children live as long as their metric.
        self._seconds: dict[str, Histogram] = {}
        self._calls: dict[tuple[str, str], Counter] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(details)
        if handler is None:
            return None
        return self._wrapped(details.method, handler)

    def _wrap(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        return rewrapped(
            handler,
            unary=lambda behaviour: self._unary(method, behaviour),
            streamed=lambda behaviour: self._streamed(method, behaviour),
        )

    def _done(self, method: str, context: grpc.ServicerContext, started: float, ok: bool) -> None:
        code = final_code(context, ok).name
        calls = self._calls.get((method, code))
        if calls is None:
            calls = self._calls[(method, code)] = self.metrics.grpc_calls.labels(method, code)
        calls.inc()
        seconds = self._seconds.get(method)
        if seconds is None:
            seconds = self._seconds[method] = self.metrics.grpc_seconds.labels(method)
        seconds.observe(time.perf_counter() - started)

    def _unary(self, method: str, behaviour: Behaviour) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            ok = False
            try:
                response = behaviour(request, context)
                ok = True
                return response
            finally:
                self._done(method, context, started, ok)

        return run

    def _streamed(self, method: str, behaviour: Behaviour) -> Behaviour:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            ok = False
            try:
                yield from behaviour(request, context)
                ok = True
            finally:
                self._done(method, context, started, ok)

        return run
