"""What the tamper-evident chain costs a save, and what verify costs per event.

Saves small payments (``Requested`` + ``OperationStarted``: the intent a CreatePayment commits
before its provider call) through the real application, once with payorch's chained recorder
and once with eventsourcing's plain process recorder, alternating rounds so that a busy machine
hurts both alike. Then runs ``audit verify`` over what the chained rounds wrote. Prints saves/s
for each and the ratio chained / plain, on SQLite and on PostgreSQL.

  .venv/bin/python bench/chain.py [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from create_payment import fresh_postgres_database

from orchestrator.application import Payments
from orchestrator.audit.verify import verify
from orchestrator.domain.payment import Cause, Payment
from orchestrator.routing import Router
from orchestrator.store import parse_database_url, schema_lock

PLAIN = {
    "sqlite": "eventsourcing.sqlite:SQLiteProcessRecorder",
    "postgres": "eventsourcing.postgres:PostgresProcessRecorder",
}


def app_for(url: str, chained: bool) -> Payments:
    store = parse_database_url(url)
    env = dict(store.env)
    if not chained:
        env["PROCESS_RECORDER_TOPIC"] = PLAIN[store.kind]
    with schema_lock(store):
        return Payments(env=env, router=Router({}, {}))


def intent(n: int) -> Payment:
    cause = Cause("bench", f"chain-{n}-{uuid4()}")
    payment = Payment(
        id=uuid4(), amount=1000, currency="USD", payment_method="pm_card_visa", region="US",
        capture_mode="automatic", reference="", metadata={}, scope=cause.scope,
        idempotency_key=cause.idempotency_key, caused_by=cause.as_data(), account="default",
    )  # fmt: skip
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    payment.start_authorization(provider="sandbox", deadline=deadline, cause=cause)
    return payment


def saves_per_second(app: Payments, threads: int, seconds: float) -> float:
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        while time.monotonic() < stop:
            app.save(intent(i))
            done[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / seconds


def measure(name: str, url: str, threads: int, rounds: int, seconds: float) -> None:
    apps = {True: app_for(url, chained=True), False: app_for(url, chained=False)}
    rates: dict[bool, list[float]] = {True: [], False: []}
    try:
        for _ in range(rounds):
            for chained in (False, True):
                rates[chained].append(saves_per_second(apps[chained], threads, seconds))
        chained_rate = statistics.median(rates[True])
        plain_rate = statistics.median(rates[False])
        print(
            f"{name:<9} {threads:>2} thread(s)  plain {plain_rate:8.1f} saves/s  "
            f"chained {chained_rate:8.1f} saves/s  "
            f"ratio chained/plain {chained_rate / plain_rate:.2f}"
        )
        started = time.perf_counter()
        recorder = apps[True].recorder
        report = verify(recorder, apps[True].mapper)  # type: ignore[arg-type]
        took = time.perf_counter() - started
        print(
            f"{name:<9} verify: {report.events:,} events and {report.links:,} links "
            f"in {took:.1f} s "
            f"= {report.events / took:,.0f} events/s, findings {report.finding_count} "
            "(the plain rounds' events are unchained: they count as insertions)"
        )
    finally:
        for app in apps.values():
            app.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin URL; the bench creates and drops its own database",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    opts = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for threads in (1, 8):
            measure("sqlite", f"sqlite:///{tmp}/chain-{threads}.db", threads, opts.rounds,
                    opts.seconds)  # fmt: skip
    with fresh_postgres_database(opts.postgres_url) as url:
        for threads in (1, 8):
            measure("postgres", url, threads, opts.rounds, opts.seconds)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
