"""What the bulkhead costs a provider call, in this process, without the network: the
resilient path (``ResilientProvider.authorize``) around a provider that answers at once,
with no limits, with limits that admit every call, and the refusal of a call over its limit
(``ProviderBusy``). Also a command's admission (``Bulkhead.admitted``) with the call inside.

    PYTHONPATH=. .venv/bin/python bench/bulkhead.py [--calls N] [--repeat R]

Prints the median of R runs of N calls, in microseconds a call. Noisy on a shared machine:
compare the rows of one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable

from orchestrator.ports import (
    OperationKind,
    OutcomeStatus,
    ProviderOperation,
    ProviderOutcome,
)
from orchestrator.resilience.breaker import CircuitBreaker
from orchestrator.resilience.bulkhead import Bulkhead, BulkheadPolicy, ProviderBusy
from orchestrator.resilience.provider import ResilientProvider

OK = ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference="p")
OP = ProviderOperation(OperationKind.AUTHORIZE, "pay", "pay:1:authorize:1", 100, "USD")


class Instant:
    name = "instant"
    honors_idempotency_keys = True

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return OK


def resilient(policy: BulkheadPolicy) -> ResilientProvider:
    bulkhead = Bulkhead("instant", policy)
    return ResilientProvider(Instant(), CircuitBreaker("instant"), bulkhead=bulkhead)  # type: ignore[arg-type]


def per_call(run: Callable[[], object], calls: int, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            run()
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    unlimited = resilient(BulkheadPolicy())
    limited = resilient(BulkheadPolicy(max_concurrent_calls=1_000_000, max_calls_per_second=1e12))
    full = resilient(BulkheadPolicy(max_concurrent_calls=1))
    full.bulkhead.enter()  # another call holds the only slot

    def refused() -> None:
        with contextlib.suppress(ProviderBusy):
            full.authorize(OP, timeout=1.0)

    def admitted() -> None:
        with limited.bulkhead.admitted():
            limited.authorize(OP, timeout=1.0)

    rows = [
        ("resilient call, no limits", lambda: unlimited.authorize(OP, timeout=1.0)),
        ("resilient call, limits that admit it", lambda: limited.authorize(OP, timeout=1.0)),
        ("admission + resilient call, limits", admitted),
        ("refused: every slot taken (ProviderBusy)", refused),
    ]
    for name, run in rows:
        print(f"{name:44s} {per_call(run, args.calls, args.repeat):8.2f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
