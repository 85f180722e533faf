"""``ListPayments`` latency at 100,000 payments on PostgreSQL, and how fast the listing's
projector builds its rows from the log.

The fill goes through the application: ``Payments.save`` of ``--batch`` payments made in
memory per transaction (no provider), 3 to 5 events each, of mixed outcomes (captured,
authorized, declined, refunded, and 1% requiring review), over 1,000 references and three
regions. Every payment belongs to one account, the worst case for the account's index (an
account sees all 100,000). Then, in one run:

1. the projector (``ListingProjector.catch_up``) builds the listing from the whole log: the
   same code ``payorch serve`` runs in the background and ``payorch admin rebuild-listing``
   runs once; rows per second;
2. a real gRPC server on loopback (``create_server``, no TLS, no auth) and one client calling
   ``ListPayments`` back to back, ``--calls`` calls per query after 20 warm-up calls:
   the first page, a page 10,000 rows deep (by its token), filters by status, reference,
   region and status, and a created-at window. Prints p50, p99 and max in milliseconds.

Run it alone (the machine is shared): ``flock /tmp/bench.lock .venv/bin/python
bench/listing.py``. The database ``payorch_bench_listing_<n>`` is dropped at the end unless
``--keep``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
import psycopg
from benchlib import nearest_rank
from google.protobuf.timestamp_pb2 import Timestamp

from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.api.server import create_server
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments
from orchestrator.domain.payment import Cause, Payment
from orchestrator.listing import ListingProjector
from orchestrator.routing import Router

REGIONS = ("US", "EU", "IN")


def payment(n: int, deadline: datetime) -> Payment:
    key = f"bulk-{n}"
    cause = Cause("default", key)
    made = Payment(
        id=uuid4(),
        amount=1000 + n % 500,
        currency="USD",
        payment_method="pm_card_visa",
        region=REGIONS[n % 3],
        capture_mode="manual",
        reference=f"order-{n % 1000}",
        metadata={},
        scope="default",
        idempotency_key=key,
        caused_by=cause.as_data(),
        account="default",
    )
    made.start_authorization(provider="sandbox", deadline=deadline, cause=cause)
    kind = n % 100
    if kind == 0:
        made.record_unknown(1, message="timeout", caused_by=cause)
        made.require_review(1, message="nobody knows", caused_by=cause)
        return made
    if kind < 10:
        made.record_decline(1, decline_code="card_declined", message="declined", caused_by=cause)
        return made
    ref = f"sbx_pay_{n}"
    made.record_success(1, provider_reference=ref, amount=made.amount, caused_by=cause)
    if kind < 40:
        return made  # authorized
    made.start_capture(None, deadline=deadline, cause=cause)
    made.record_success(2, provider_reference=ref, amount=made.amount, caused_by=cause)
    return made


def fill(app: Payments, payments: int, batch: int) -> float:
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    started = time.perf_counter()
    for start in range(0, payments, batch):
        app.save(*(payment(n, deadline) for n in range(start, min(start + batch, payments))))
        if (start // batch) % 40 == 0:
            print(f"  fill: {start + batch:,} payments", file=sys.stderr)
    return time.perf_counter() - started


def latency(call: Callable[[], object], calls: int) -> tuple[float, float, float]:
    for _ in range(20):
        call()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return nearest_rank(times, 50), nearest_rank(times, 99), times[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "PAYORCH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--payments", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--keep", action="store_true")
    opts = parser.parse_args()
    name = f"payorch_bench_listing_{opts.payments}"
    url = f"{opts.postgres_url.rsplit('/', 1)[0]}/{name}"
    with psycopg.connect(opts.postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    app = build_payments(url, Router({}, {}))
    try:
        seconds = fill(app, opts.payments, opts.batch)
        head = app.recorder.max_notification_id() or 0
        print(f"fill: {opts.payments:,} payments, {head:,} events in {seconds:.1f} s")
        started = time.perf_counter()
        ListingProjector(app).catch_up(head)
        built = time.perf_counter() - started
        rows = len(app.listing.rows())
        print(f"projector: {rows:,} rows from {head:,} events in {built:.1f} s "
              f"({rows / built:,.0f} rows/s, {head / built:,.0f} events/s)")  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE)")
        server = create_server("127.0.0.1:0", app)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)  # type: ignore[no-untyped-call]
        token = ""
        for _ in range(20):  # 20 pages of 500: the token of the page 10,000 rows deep
            token = stub.ListPayments(
                pb.ListPaymentsRequest(page_size=500, page_token=token)
            ).next_page_token
        everything = stub.ListPayments(pb.ListPaymentsRequest(page_size=500)).payments
        middle = everything[250].created_at.ToDatetime(tzinfo=UTC)
        start, end = Timestamp(), Timestamp()
        start.FromDatetime(middle - timedelta(seconds=1))
        end.FromDatetime(middle + timedelta(seconds=1))
        queries = {
            "first page (50)": pb.ListPaymentsRequest(),
            "page 10,000 rows deep (50)": pb.ListPaymentsRequest(page_token=token),
            "status REQUIRES_REVIEW (1%)": pb.ListPaymentsRequest(
                status=pb.PAYMENT_STATUS_REQUIRES_REVIEW
            ),
            "reference (100 match)": pb.ListPaymentsRequest(reference="order-7"),
            "region EU + status DECLINED": pb.ListPaymentsRequest(
                region="EU", status=pb.PAYMENT_STATUS_DECLINED
            ),
            "created-at window (2 s)": pb.ListPaymentsRequest(
                created_after=start, created_before=end
            ),
            "page of 500": pb.ListPaymentsRequest(page_size=500),
        }
        print(f"ListPayments over loopback gRPC, {opts.calls} calls each, ms:")
        print(f"  {'query':<30} {'rows':>5} {'p50':>7} {'p99':>7} {'max':>7}")
        for label, request in queries.items():
            found = len(stub.ListPayments(request).payments)
            p50, p99, worst = latency(lambda r=request: stub.ListPayments(r), opts.calls)
            print(f"  {label:<30} {found:>5} {p50:>7.2f} {p99:>7.2f} {worst:>7.2f}")
        channel.close()
        server.stop(1)
    finally:
        app.close()
        if not opts.keep:
            with psycopg.connect(opts.postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
