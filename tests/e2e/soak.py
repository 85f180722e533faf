"""A fault soak: many payments through gRPC against a faulty sandbox, then the invariants
that must hold once recovery has done its work, and the counts worth reporting."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
import httpx

from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from tests.e2e.helpers import create_request

DEFINITE = {pb.PAYMENT_STATUS_AUTHORIZED, pb.PAYMENT_STATUS_DECLINED, pb.PAYMENT_STATUS_FAILED}
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}

Stub = payments_pb2_grpc.PaymentOrchestratorStub


@dataclass
class SoakReport:
    payments: int
    statuses: Counter[str] = field(default_factory=Counter)
    client_retries: int = 0
    in_doubt_after_first_answer: int = 0
    events: Counter[str] = field(default_factory=Counter)
    ledger_authorizations: int = 0
    max_authorizations_per_payment: int = 0
    load_seconds: float = 0.0
    seconds_to_resolve: float = 0.0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"payments {self.payments}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())),
            f"client retries (same key) {self.client_retries}; in doubt after the first answer "
            f"{self.in_doubt_after_first_answer}",
            "events: " + ", ".join(f"{k} {v}" for k, v in sorted(self.events.items())),
            f"ledger authorizations {self.ledger_authorizations}; most per payment "
            f"{self.max_authorizations_per_payment}",
            f"load {self.load_seconds:.1f} s; all definite {self.seconds_to_resolve:.1f} s after",
        ]


def run_soak(
    stub: Callable[[], Stub],
    sandbox_url: str,
    *,
    payments: int,
    concurrency: int = 32,
    prefix: str = "soak",
    on_progress: Callable[[int], None] | None = None,
    resolve_within: float = 60.0,
) -> SoakReport:
    """``stub()`` gives the current stub (it may change when a server is restarted)."""
    report = SoakReport(payments)
    lock = threading.Lock()
    done = 0
    first_answers: dict[str, pb.Payment] = {}

    def one(i: int) -> None:
        nonlocal done
        method = "pm_card_declined" if i % 20 == 0 else "pm_card_visa"
        request = create_request(f"{prefix}-{i}", amount=1000 + i, payment_method=method)
        for attempt in range(200):
            try:
                answer = stub().CreatePayment(request, timeout=10)
                break
            except grpc.RpcError as e:
                if e.code() not in _RETRYABLE:  # type: ignore[attr-defined]
                    raise
                with lock:
                    report.client_retries += 1
                time.sleep(min(0.05 * (attempt + 1), 0.5))
        else:
            raise AssertionError(f"payment {i} never answered")
        with lock:
            first_answers[request.idempotency_key] = answer
            done += 1
            count = done
        if on_progress is not None:
            on_progress(count)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(payments)))
    report.load_seconds = time.monotonic() - started
    report.in_doubt_after_first_answer = sum(
        1 for p in first_answers.values() if p.status not in DEFINITE
    )

    ids = [p.payment_id for p in first_answers.values()]
    finals = _wait_until_definite(stub, ids, resolve_within)
    report.seconds_to_resolve = time.monotonic() - started - report.load_seconds
    _check(report, finals, sandbox_url, stub)
    return report


def _wait_until_definite(
    stub: Callable[[], Stub], ids: list[str], within: float
) -> dict[str, pb.Payment]:
    deadline = time.monotonic() + within
    finals: dict[str, pb.Payment] = {}
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        still = []
        for pid in pending:
            try:
                payment = stub().GetPayment(pb.GetPaymentRequest(payment_id=pid), timeout=5)
            except grpc.RpcError:
                still.append(pid)
                continue
            finals[pid] = payment
            if payment.status not in DEFINITE:
                still.append(pid)
        pending = still
        if pending:
            time.sleep(0.2)
    return finals


def _check(
    report: SoakReport, finals: dict[str, pb.Payment], sandbox_url: str, stub: Callable[[], Stub]
) -> None:
    entries = httpx.get(f"{sandbox_url}/_sandbox/ledger", timeout=30).json()["entries"]
    authorizations = Counter(e["reference"] for e in entries if e["kind"] == "authorization")
    report.ledger_authorizations = sum(authorizations.values())
    report.max_authorizations_per_payment = max(authorizations.values(), default=0)
    for pid, payment in finals.items():
        report.statuses[pb.PaymentStatus.Name(payment.status)] += 1
        events = stub().ListPaymentEvents(pb.ListPaymentEventsRequest(payment_id=pid), timeout=10)
        report.events.update(e.type for e in events.events if e.type not in ("Requested",))
        count = authorizations.get(pid, 0)
        if payment.status not in DEFINITE:
            report.problems.append(f"{pid} is still {pb.PaymentStatus.Name(payment.status)}")
        elif payment.status == pb.PAYMENT_STATUS_AUTHORIZED and count != 1:
            report.problems.append(f"{pid} AUTHORIZED with {count} authorizations in the ledger")
        elif payment.status != pb.PAYMENT_STATUS_AUTHORIZED and count != 0:
            report.problems.append(
                f"{pid} {pb.PaymentStatus.Name(payment.status)} with {count} authorizations"
            )
    unknown = set(authorizations) - set(finals)
    if unknown:
        report.problems.append(f"authorizations for payments we never made: {sorted(unknown)[:5]}")
    if len(finals) != report.payments:
        report.problems.append(f"{report.payments - len(finals)} payments never read back")
