"""Event writes per second: payorch's writer (chain + group commit) beside eventsourcing's
default process recorder, in the same run, on SQLite and PostgreSQL.

Each writer thread saves payment intents (``Requested`` + ``OperationStarted``, what a
CreatePayment commits before its provider call) through the real application, as fast as it
can. Three recorders, each on its own fresh store, in alternating rounds so that a busy
machine hurts all alike:
- ``plain``: eventsourcing's ``SQLiteProcessRecorder`` / ``PostgresProcessRecorder`` (no
  chain, one transaction per save): the reference;
- ``chained``: payorch's chained recorder with group commit off (PAYORCH_GROUP_COMMIT=off);
- ``grouped``: payorch's default, the chained recorder with group commit.

Prints saves/s (median of the rounds), per-save latency, saves per write transaction, the
cores used by this process and by PostgreSQL, and each rate as a ratio of ``plain``. Then
runs ``audit verify`` over the chained stores: every finding fails the run (exit 1).

  .venv/bin/python bench/writes.py [--writers 1,8] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from benchlib import cpu_cores, cpu_snapshot, machine_busy_fraction, nearest_rank
from chain import intent
from create_payment import fresh_postgres_database

from orchestrator.application import Payments
from orchestrator.audit.verify import verify
from orchestrator.batching import GroupCommit
from orchestrator.routing import Router
from orchestrator.store import parse_database_url, schema_lock

VARIANTS = ("plain", "chained", "grouped")
PLAIN = {
    "sqlite": "eventsourcing.sqlite:SQLiteProcessRecorder",
    "postgres": "eventsourcing.postgres:PostgresProcessRecorder",
}


def app_for(url: str, variant: str) -> Payments:
    store = parse_database_url(url, group_commit=variant == "grouped")
    env = dict(store.env)
    if variant == "plain":
        env["PROCESS_RECORDER_TOPIC"] = PLAIN[store.kind]
        # eventsourcing's default: no ping per checkout (payorch's recorders ping only a
        # connection whose socket says it is broken, see orchestrator.store)
        env.pop("POSTGRES_PRE_PING", None)
    with schema_lock(store):
        return Payments(env=env, router=Router({}, {}))


@dataclass
class Window:
    rate: float
    p50_ms: float
    p99_ms: float
    saves: int
    cores: dict[str, float]
    transactions: int | None = None  # write transactions of the window, where counted


@dataclass
class Results:
    windows: dict[tuple[str, int, str], list[Window]] = field(default_factory=dict)

    def add(self, backend: str, writers: int, variant: str, window: Window) -> None:
        self.windows.setdefault((backend, writers, variant), []).append(window)

    def median_rate(self, backend: str, writers: int, variant: str) -> float:
        return statistics.median(w.rate for w in self.windows[(backend, writers, variant)])


def transactions(app: Payments, kind: str) -> int | None:
    """Write transactions so far: PostgreSQL's distinct xmin of the (insert-only) events;
    on SQLite, the group commit's own count (the unbatched recorders write one per save)."""
    if kind == "postgres":
        with app.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            table = app.recorder.events_table_name  # type: ignore[attr-defined]
            row = conn.execute(f"SELECT count(DISTINCT xmin::text) AS n FROM {table}").fetchone()
            return int(row["n"])
    group: GroupCommit | None = getattr(app.recorder, "group", None)
    if group is None:
        return None
    return group.stats.transactions


def window(app: Payments, kind: str, writers: int, warmup: float, seconds: float) -> Window:
    stop = threading.Event()
    opened = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(writers)]
    done = [0] * writers

    def work(i: int) -> None:
        while not stop.is_set():
            payment = intent(0)
            started = time.perf_counter()
            app.save(payment)
            if opened.is_set():
                latencies[i].append(time.perf_counter() - started)
                done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    xacts_before = transactions(app, kind)
    before = cpu_snapshot({}, {"postgres": "postgres"})
    opened.set()
    time.sleep(seconds)
    stop.set()
    after = cpu_snapshot({}, {"postgres": "postgres"})
    for t in threads:
        t.join()
    xacts_after = transactions(app, kind)
    elapsed = after.wall - before.wall
    ordered = sorted(x for per in latencies for x in per)
    saves = sum(done)
    cores = cpu_cores(before, after, own_label="bench")
    xacts = None
    if xacts_before is not None and xacts_after is not None:
        xacts = xacts_after - xacts_before
    return Window(
        rate=saves / elapsed,
        p50_ms=nearest_rank(ordered, 50) * 1000 if ordered else 0.0,
        p99_ms=nearest_rank(ordered, 99) * 1000 if ordered else 0.0,
        saves=saves,
        cores=cores,
        transactions=xacts,
    )


def wait_for_quiet(threshold: float, limit: float) -> None:
    deadline = time.monotonic() + limit
    while machine_busy_fraction() > threshold:
        if time.monotonic() > deadline:
            print(f"  (machine still busier than {threshold:.0%}: measuring anyway)")
            return


@contextmanager
def stores(backend: str, postgres_url: str, tmp: Path) -> Iterator[dict[str, str]]:
    """One fresh store per variant."""
    if backend == "sqlite":
        yield {v: f"sqlite:///{tmp}/{v}.db" for v in VARIANTS}
        return
    with ExitStack() as stack:
        yield {v: stack.enter_context(fresh_postgres_database(postgres_url)) for v in VARIANTS}


def run_backend(
    backend: str, urls: dict[str, str], opts: argparse.Namespace, results: Results
) -> int:
    findings = 0
    apps = {v: app_for(urls[v], v) for v in VARIANTS}
    try:
        for writers in opts.writers:
            for _ in range(opts.rounds):
                for variant in VARIANTS:
                    wait_for_quiet(opts.quiet_threshold, opts.quiet_wait)
                    w = window(apps[variant], backend, writers, opts.warmup, opts.seconds)
                    results.add(backend, writers, variant, w)
        for variant in ("chained", "grouped"):
            started = time.perf_counter()
            report = verify(apps[variant].recorder, apps[variant].mapper)  # type: ignore[arg-type]
            took = time.perf_counter() - started
            findings += report.finding_count
            print(
                f"{backend:<9} {variant:<8} audit verify: {report.events:,} events, "
                f"{report.links:,} links in {took:.1f} s, findings {report.finding_count}"
            )
    finally:
        for app in apps.values():
            app.close()
    return findings


def print_table(results: Results, backends: list[str], writers_list: list[int]) -> None:
    print()
    print(
        f"{'store':<9} {'writers':>7} {'recorder':<8} {'saves/s':>9} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'saves/txn':>9}  cores (median window)"
    )
    for backend in backends:
        for writers in writers_list:
            plain = results.median_rate(backend, writers, "plain")
            for variant in VARIANTS:
                ws = results.windows[(backend, writers, variant)]
                rate = results.median_rate(backend, writers, variant)
                mid = sorted(ws, key=lambda w: w.rate)[len(ws) // 2]
                per_txn = "1.00" if variant != "grouped" and backend == "sqlite" else "-"
                if mid.transactions:
                    per_txn = f"{mid.saves / mid.transactions:.2f}"
                cores = ", ".join(
                    f"{k} {mid.cores.get(k, 0):.2f}" for k in ("bench", "postgres", "other")
                )
                print(
                    f"{backend:<9} {writers:>7} {variant:<8} {rate:>9,.0f} {rate / plain:>6.2f} "
                    f"{mid.p50_ms:>7.2f} {mid.p99_ms:>7.2f} {per_txn:>9}  {cores}"
                )
    print()
    for backend in backends:
        for writers in writers_list:
            plain = results.median_rate(backend, writers, "plain")
            grouped = results.median_rate(backend, writers, "grouped")
            rates = ", ".join(
                f"{results.median_rate(backend, writers, v) / plain:.2f}x"
                for v in ("chained", "grouped")
            )
            print(
                f"{backend} {writers} writer(s): chained, grouped = {rates} of eventsourcing's "
                f"default writer ({grouped:,.0f} vs {plain:,.0f} saves/s)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "PAYORCH_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="an admin URL; the bench creates and drops its own databases",
    )
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--writers", default="1,8", help="writer threads, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quiet-threshold", type=float, default=0.10)
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    opts = parser.parse_args()
    opts.writers = [int(w) for w in opts.writers.split(",")]
    backends = opts.backends.split(",")
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC, {os.cpu_count()} CPUs, "
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    results = Results()
    findings = 0
    with tempfile.TemporaryDirectory(prefix="payorch-bench-writes-") as tmp:
        for backend in backends:
            with stores(backend, opts.postgres_url, Path(tmp)) as urls:
                findings += run_backend(backend, urls, opts, results)
    print_table(results, backends, opts.writers)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if findings:
        print(f"CHECK FAILED: audit verify found {findings} finding(s)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
