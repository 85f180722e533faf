"""The webhook consumer alone: deliveries applied per second, a page per transaction against
one delivery per transaction, on the same stored backlog.

Per backend (``--backends sqlite,postgres``), on a fresh store: ``--payments`` authorized
payments, then ``--deliveries`` stored deliveries about them (round robin, as
``bench/webhooks.py`` sends them), written directly through the application (no HTTP). Then
the same backlog is applied twice from the log's start, by two consumers on two copies of it:
``batch=1`` (each delivery in its own transaction, what the consumer did before pages) and the
default page (one transaction per page). Prints each rate and their ratio; nothing runs
beside the consumer, so the ratio is the consumer's own.

    PYTHONPATH=. .venv/bin/python bench/consumer.py --backends sqlite,postgres
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import psycopg

from orchestrator.bootstrap import build_payments, load_configuration
from orchestrator.domain.payment import Cause, Payment
from orchestrator.domain.webhook import WebhookDelivery, delivery_id
from orchestrator.ports import WebhookKind
from orchestrator.webhooks.processor import WebhookProcessor

CAUSE = Cause("default", "bench")
NOW = datetime.now(UTC)
NOWHERE = "http://127.0.0.1:9"  # no provider is called: applying webhooks calls none


def authorized() -> Payment:
    payment = Payment(
        id=uuid4(), amount=100_000, currency="USD", payment_method="pm_card_visa", region="US",
        capture_mode="manual", reference="bench", metadata={}, scope="default",
        idempotency_key=uuid4().hex, caused_by=CAUSE.as_data(), account="default",
    )  # fmt: skip
    payment.start_authorization(provider="sandbox", deadline=NOW, cause=CAUSE)
    payment.record_success(1, provider_reference=f"sbx_{payment.id.hex}", amount=0, caused_by=CAUSE)
    return payment


def delivery(payment: Payment, n: int) -> WebhookDelivery:
    event_id = f"evt_bench_{n}"
    return WebhookDelivery(
        id=delivery_id("sandbox", event_id), provider="sandbox", verified_by="sandbox",
        event_id=event_id, kind=WebhookKind.AUTHORIZATION_SUCCEEDED.value,
        body=base64.b64encode(b"{}").decode(), received_at=NOW, payment_id=str(payment.id),
        provider_reference=f"sbx_{payment.id.hex}", operation_key="", object_reference="",
        amount=payment.amount, currency="USD", decline_code="", message="",
    )  # fmt: skip


def fill(url: str, payments: int, deliveries: int) -> None:
    app = build_payments(url, load_configuration(None, NOWHERE).router)
    try:
        made = [authorized() for _ in range(payments)]
        app.save(*made)
        for start in range(0, deliveries, 500):
            ns = range(start, min(start + 500, deliveries))
            app.save(*(delivery(made[n % payments], n) for n in ns))
    finally:
        app.close()


def drain(url: str, batch: int) -> tuple[float, int, int]:
    """Applies the whole backlog; returns deliveries per second, pages and fallbacks."""
    app = build_payments(url, load_configuration(None, NOWHERE).router)
    try:
        consumer = WebhookProcessor(app, batch=batch)
        started = time.perf_counter()
        applied = consumer.run_once()
        seconds = time.perf_counter() - started
        return applied / seconds, consumer.stats.pages, consumer.stats.fallbacks
    finally:
        app.close()


def stores(backend: str, tmp: Path, postgres_url: str) -> list[str]:
    """Two fresh stores holding nothing yet."""
    if backend == "sqlite":
        return [f"sqlite:///{tmp / f'{name}.db'}" for name in ("alone", "paged")]
    base = postgres_url.rsplit("/", 1)[0]
    urls = []
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for _ in range(2):
            name = f"payorch_bench_consumer_{uuid.uuid4().hex[:12]}"
            conn.execute(f'CREATE DATABASE "{name}"')
            urls.append(f"{base}/{name}")
    return urls


def drop(urls: list[str], postgres_url: str) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for url in urls:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="sqlite", help="comma-separated: sqlite,postgres")
    parser.add_argument("--payments", type=int, default=300)
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    print(f"$ {' '.join([sys.executable, *sys.argv])}")
    print(f"{args.deliveries:,} deliveries about {args.payments} payments, applied from the start")
    with tempfile.TemporaryDirectory(prefix="payorch-bench-consumer-") as tmp:
        for backend in args.backends.split(","):
            urls = stores(backend, Path(tmp), args.postgres_url)
            try:
                for url in urls:
                    fill(url, args.payments, args.deliveries)
                alone, _, _ = drain(urls[0], batch=1)
                paged, pages, fallbacks = drain(urls[1], batch=200)
            finally:
                if backend == "postgres":
                    drop(urls, args.postgres_url)
            print(
                f"{backend:9} one per transaction {alone:8.1f}/s   a page per transaction "
                f"{paged:8.1f}/s ({pages} pages, {fallbacks} fell back)   ratio {paged / alone:.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
