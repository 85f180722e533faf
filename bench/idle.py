"""Costs proportional to work, not to the log (issue 9, goal 5), on PostgreSQL and SQLite.

For each backend, on one store:

1. **Empty log.** A ``payorch serve`` (with a sandbox provider process) on the empty store:
   its start-up CPU, then its idle CPU over a window (the server process, and on PostgreSQL
   the backends of its database's sessions, from ``pg_stat_activity`` and ``/proc``).
2. **Templates, through the app.** The same server makes a few real payments over gRPC
   (create, then capture: payments, commands, the sandbox's answers), one payment with about
   500 events (a create and 249 partial captures), and the fresh payments to compare it with.
   Then, the server stopped, the app itself stores ``--matched-deliveries`` webhook deliveries
   that were left unmatched and later re-matched to those payments (``Received``,
   ``Unmatched``, ``Applied``): copied with the rest, about a third of the big log is such
   deliveries, which a start must not read again.
3. **Bulk load.** The server is stopped. The templates' stored events (as the app's mapper
   wrote them: topic and state bytes) are copied, each payment and command under new ids,
   until the log holds ``--events`` events: ``COPY ... FROM STDIN`` on PostgreSQL, one
   multi-row ``executemany`` transaction on SQLite. Bulk rows have no audit-chain links
   (``audit verify`` would list them as insertions); nothing else reads the chain.
   After it, ``--open-deliveries`` deliveries still unmatched (not copied): what a start
   must re-try.
4. **First start on the big log**: the recovery and unmatched indexes and the listing start
   from before the bulk rows, as on a log written before this version: the CPU until the
   positions of ``--positions`` reach the head (all of them, or the restart would finish
   their work and count it as its own). The webhook consumer's position starts after
   them (the copied deliveries were applied when they came), before the open deliveries.
5. **Restart on the big log** (the measured start-up): CPU from spawn to SERVING plus
   ``--settle`` seconds (several recovery and webhook passes); then until a second passes with
   under 0.02 s of CPU (start-up work longer than ``--settle``, such as re-trying every
   delivery ever unmatched, counts in full); then the idle window.
6. **Long payment**: GetPayment and a new capture on the ~500-event payment against a fresh
   payment, interleaved call by call, medians.

Goals: idle CPU on the big log minus the empty log's under 0.01 core (server + database
sessions); restart CPU under 3 s; the long payment's medians within 2x of the fresh one's.

    flock /tmp/bench.lock .venv/bin/python bench/idle.py              # both, 1,000,000 events
    flock /tmp/bench.lock .venv/bin/python bench/idle.py --backends sqlite --events 200000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from benchlib import add_machine_arguments
from create_payment import (
    _PAYORCH_LISTENING,
    ROOT,
    BenchError,
    Child,
    child,
    exit_on_sigterm,
    fresh_postgres_database,
    postgres_problem,
    scratch_dir,
    start_sandbox,
    wait_serving,
)

from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.api._generated import payments_pb2_grpc
from orchestrator.bootstrap import build_payments, load_configuration
from orchestrator.domain.webhook import WebhookDelivery, delivery_id
from orchestrator.ports import WebhookKind

_TICK = 100.0  # USER_HZ
LONG_CAPTURES = 249  # with the create's 3 events and 2 per capture: 501 events
TEMPLATES = 4


def ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float:
    t = ticks(pid)
    if t is None:
        raise BenchError(f"process {pid} is gone")
    return t / _TICK


# --- the store ------------------------------------------------------------------------------


class Store:
    def __init__(self, backend: str, url: str, path: str | None) -> None:
        self.backend, self.url, self.path = backend, url, path

    def _pg(self) -> Any:
        import psycopg

        return psycopg.connect(self.url, connect_timeout=10)

    def head(self) -> int:
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as c:
                return int(c.execute("SELECT MAX(rowid) FROM stored_events").fetchone()[0] or 0)
        with self._pg() as conn:
            return int(
                conn.execute("SELECT MAX(notification_id) FROM payments_events").fetchone()[0] or 0
            )

    def tracking(self) -> dict[str, int]:
        table = "tracking" if self.backend == "sqlite" else "payments_tracking"
        try:
            if self.backend == "sqlite":
                with contextlib.closing(
                    sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
                ) as c:
                    rows = c.execute(
                        f"SELECT application_name, notification_id FROM {table}"
                    ).fetchall()
            else:
                with self._pg() as conn:
                    rows = conn.execute(
                        f"SELECT application_name, notification_id FROM {table}"
                    ).fetchall()
        except Exception:
            return {}
        return {str(name): int(n) for name, n in rows}

    def track(self, name: str, position: int) -> None:
        """Records ``position`` as the tracked position ``name`` (as its consumer would)."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(str(self.path))) as c:
                c.execute("DELETE FROM tracking WHERE application_name = ?", (name,))
                c.execute("INSERT INTO tracking VALUES (?, ?)", (name, position))
                c.commit()
            return
        with self._pg() as conn:
            conn.execute("DELETE FROM payments_tracking WHERE application_name = %s", (name,))
            conn.execute("INSERT INTO payments_tracking VALUES (%s, %s)", (name, position))

    def events(self) -> list[tuple[str, int, str, bytes]]:
        """Every stored event in commit order: (originator id, version, topic, state)."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as c:
                rows = c.execute(
                    "SELECT originator_id, originator_version, topic, state FROM stored_events "
                    "ORDER BY rowid"
                ).fetchall()
            return [(str(r[0]), int(r[1]), str(r[2]), bytes(r[3])) for r in rows]
        with self._pg() as conn:
            rows = conn.execute(
                "SELECT originator_id, originator_version, topic, state FROM payments_events "
                "ORDER BY notification_id"
            ).fetchall()
        return [(str(r[0]), int(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def bulk_insert(self, template: list[tuple[str, int, str, bytes]], total: int) -> float:
        """Copies ``template`` under new ids until ``total`` events are added; returns rows/s."""
        started = time.perf_counter()
        copies = max(1, total // len(template))
        ids = sorted({oid for oid, _, _, _ in template})

        def rows() -> Iterator[tuple[Any, int, str, bytes]]:
            for _ in range(copies):
                fresh = {oid: uuid.uuid4() for oid in ids}
                for oid, version, topic, state in template:
                    new = fresh[oid]
                    yield (new.hex if self.backend == "sqlite" else new), version, topic, state

        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(str(self.path))) as c:
                c.execute("BEGIN")
                c.executemany(
                    "INSERT INTO stored_events (originator_id, originator_version, topic, state) "
                    "VALUES (?, ?, ?, ?)",
                    rows(),
                )
                c.commit()
        else:
            with self._pg() as conn, conn.cursor() as cur:
                with cur.copy(
                    "COPY payments_events (originator_id, originator_version, topic, state) "
                    "FROM STDIN"
                ) as copy:
                    for row in rows():
                        copy.write_row(row)
                conn.commit()
                conn.execute("ANALYZE payments_events")
                conn.commit()
        return copies * len(template) / (time.perf_counter() - started)

    def session_pids(self) -> list[int]:
        if self.backend != "postgres":
            return []
        dbname = self.url.rsplit("/", 1)[1]
        with self._pg() as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchall()
        return [int(r[0]) for r in rows]


# --- the servers ----------------------------------------------------------------------------


@contextlib.contextmanager
def payorch(
    store: Store, sandbox_url: str, log: Path, timeout: float
) -> Iterator[tuple[Child, str, float]]:
    """A ``payorch serve``; yields it, its gRPC target and the wall seconds to SERVING."""
    argv = [
        sys.executable, "-m", "orchestrator.cli", "serve", "--grpc-listen=127.0.0.1:0",
        "--http-listen=127.0.0.1:0", f"--database-url={store.url}", f"--sandbox-url={sandbox_url}",
    ]  # fmt: skip
    started = time.perf_counter()
    with child("payorch serve", argv, log) as server:
        target = server.wait_for(_PAYORCH_LISTENING, timeout)[1]
        wait_serving(target, timeout)
        yield server, target, time.perf_counter() - started


def idle_cpu(server: Child, store: Store, window: float) -> dict[str, float]:
    """Cores used over ``window`` seconds by the server and its database sessions."""
    sessions = store.session_pids()
    before = {pid: ticks(pid) for pid in sessions}
    server_before = cpu_seconds(server.pid)
    started = time.perf_counter()
    time.sleep(window)
    wall = time.perf_counter() - started
    server_after = cpu_seconds(server.pid)
    db = 0
    for pid, t0 in before.items():
        t1 = ticks(pid)
        if t0 is not None and t1 is not None:
            db += t1 - t0
    return {
        "server_cores": round((server_after - server_before) / wall, 4),
        "db_cores": round(db / _TICK / wall, 4),
        "db_sessions": len(sessions),
        "window_s": round(wall, 1),
    }


def create(stub: Any, key: str, amount: int) -> str:
    answer = stub.CreatePayment(
        pb.CreatePaymentRequest(
            idempotency_key=key, amount=amount, currency="USD", payment_method="pm_card_visa",
            region="US", capture_mode=pb.CAPTURE_MODE_MANUAL, reference="bench-idle",
        ),
        timeout=30,
    )  # fmt: skip
    if answer.status != pb.PAYMENT_STATUS_AUTHORIZED:
        raise BenchError(f"payment {key} is {answer.status}, not AUTHORIZED")
    return str(answer.payment_id)


def capture(stub: Any, payment_id: str, key: str, amount: int | None = None) -> float:
    request = pb.CapturePaymentRequest(idempotency_key=key, payment_id=payment_id)
    if amount is not None:
        request.amount = amount
    started = time.perf_counter()
    stub.CapturePayment(request, timeout=30)
    return time.perf_counter() - started


def get(stub: Any, payment_id: str) -> float:
    started = time.perf_counter()
    stub.GetPayment(pb.GetPaymentRequest(payment_id=payment_id), timeout=30)
    return time.perf_counter() - started


def store_deliveries(
    store: Store, sandbox_url: str, payment_ids: list[str], count: int, *, matched: bool
) -> None:
    """``count`` verified deliveries, as the intake stores them, that the consumer left
    unmatched (their payment unknown when they came); ``matched``: re-matched since, to one of
    ``payment_ids`` each. Stored by the app itself (its mapper, its settings), server stopped."""
    app = build_payments(store.url, load_configuration(None, sandbox_url).router)
    try:
        for i in range(count):
            event_id = f"evt_bench_{uuid.uuid4().hex[:16]}"
            payment_id = payment_ids[i % len(payment_ids)] if matched else str(uuid.uuid4())
            delivery = WebhookDelivery(
                id=delivery_id("sandbox", event_id), provider="sandbox", verified_by="sandbox",
                event_id=event_id, kind=WebhookKind.CAPTURE_SUCCEEDED.value,
                payment_id=payment_id, provider_reference="", operation_key="",
                object_reference="", amount=5000, currency="USD", decline_code="", message="",
                body="e30=", received_at=datetime.now(UTC),
            )  # fmt: skip
            delivery.unmatched(f"no payment {payment_id} (provider reference ?)")
            if matched:
                app.save(delivery)
                delivery.applied(
                    payment_id=uuid.UUID(payment_id), payment_version=1,
                    effect="operation 2 already succeeded: unchanged",
                )  # fmt: skip
            app.save(delivery)
    finally:
        app.close()


def quiet_cpu(server: Child, timeout: float) -> float:
    """The server's CPU seconds once a second passes in which it used under 0.02 s."""
    deadline = time.monotonic() + timeout
    before = cpu_seconds(server.pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cpu_seconds(server.pid)
        if now - before < 0.02:
            return now
        before = now
    raise BenchError(f"the server was still busy {timeout:.0f} s after SERVING")


def wait_positions(store: Store, head: int, names: list[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        tracked = store.tracking()
        if min(tracked.get(name, 0) for name in names) >= head:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"positions {tracked} did not reach {head} in {timeout:.0f} s")
        time.sleep(0.2)


# --- one backend ----------------------------------------------------------------------------


def run_backend(opts: argparse.Namespace, backend: str, tmp: Path) -> dict[str, Any]:
    work = tmp / backend
    work.mkdir()
    out: dict[str, Any] = {"backend": backend}
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            path = str(work / "payorch.db")
            store = Store("sqlite", f"sqlite:///{path}", path)
        else:
            store = Store(
                "postgres", stack.enter_context(fresh_postgres_database(opts.postgres_url)), None
            )
        _, sandbox_url = start_sandbox(stack, work, opts.startup_timeout)

        # 1. the empty log; 2. the templates, the long payment and the fresh ones
        with payorch(store, sandbox_url, work / "empty.log", opts.startup_timeout) as (
            server,
            target,
            _,
        ):
            time.sleep(opts.settle)
            out["empty_start_cpu_s"] = round(cpu_seconds(server.pid), 2)
            out["empty_idle"] = idle_cpu(server, store, opts.window)
            print(f"{backend}: empty log idle {out['empty_idle']}", flush=True)
            with grpc.insecure_channel(target) as channel:
                stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
                paid = []
                for i in range(TEMPLATES):
                    paid.append(create(stub, f"template-{i}", 5000))
                    capture(stub, paid[-1], f"template-{i}-capture")
                template = store.events()
                long_id = create(stub, "long", 1_000_000)
                for i in range(LONG_CAPTURES):
                    capture(stub, long_id, f"long-capture-{i}", amount=1)
                fresh = [create(stub, f"fresh-{i}", 1000) for i in range(opts.captures + 1)]
        stored = len(store.events())
        store_deliveries(store, sandbox_url, paid, opts.matched_deliveries, matched=True)
        template += store.events()[stored:]  # the deliveries, the last events stored
        out["template_events"] = len(template)

        # 3. the bulk load
        rate = store.bulk_insert(template, opts.events)
        head = store.head()
        # The copied deliveries were applied when they came (their Applied is in the log): the
        # webhook consumer is past them, as on a real log; the indexes start before them.
        store.track("webhooks", head)
        store_deliveries(store, sandbox_url, [], opts.open_deliveries, matched=False)
        head = store.head()
        out["bulk_rows_per_s"] = round(rate)
        out["log_events"] = head
        print(f"{backend}: log of {head:,} events ({rate:,.0f} rows/s bulk)", flush=True)

        # 4. first start on the big log: positions from before the bulk rows
        with payorch(store, sandbox_url, work / "first.log", opts.startup_timeout) as (
            server,
            target,
            _,
        ):
            if opts.baseline:  # code before the index: no position to wait for
                time.sleep(opts.first_start_timeout)
            else:
                wait_positions(store, head, opts.positions.split(","), opts.first_start_timeout)
            out["first_start_cpu_s"] = round(cpu_seconds(server.pid), 2)
        print(f"{backend}: first start on the big log {out['first_start_cpu_s']} s CPU", flush=True)

        # 5. the restart, the idle window; 6. the long payment against a fresh one
        with payorch(store, sandbox_url, work / "restart.log", opts.startup_timeout) as (
            server,
            target,
            serving,
        ):
            out["restart_serving_wall_s"] = round(serving, 2)
            time.sleep(opts.settle)
            out["restart_cpu_s"] = round(cpu_seconds(server.pid), 2)
            out["restart_quiet_cpu_s"] = round(quiet_cpu(server, opts.first_start_timeout), 2)
            out["big_idle"] = idle_cpu(server, store, opts.window)
            print(
                f"{backend}: restart {out['restart_cpu_s']} s CPU; idle {out['big_idle']}",
                flush=True,
            )
            with grpc.insecure_channel(target) as channel:
                stub = payments_pb2_grpc.PaymentOrchestratorStub(channel)
                reference = fresh[-1]
                get(stub, long_id), get(stub, reference)  # the first reads fill the cache
                long_gets, fresh_gets = [], []
                for _ in range(opts.gets):
                    long_gets.append(get(stub, long_id))
                    fresh_gets.append(get(stub, reference))
                long_caps, fresh_caps = [], []
                for i in range(opts.captures):
                    long_caps.append(capture(stub, long_id, f"long-more-{i}", amount=1))
                    fresh_caps.append(capture(stub, fresh[i], f"fresh-capture-{i}"))
        out["long_events"] = 3 + 2 * LONG_CAPTURES
        out["get_ms"] = {"long": _ms(long_gets), "fresh": _ms(fresh_gets)}
        out["capture_ms"] = {"long": _ms(long_caps), "fresh": _ms(fresh_caps)}
    return out


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def report(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        b = r["backend"]
        empty = r["empty_idle"]["server_cores"] + r["empty_idle"]["db_cores"]
        big = r["big_idle"]["server_cores"] + r["big_idle"]["db_cores"]
        get_ratio = r["get_ms"]["long"] / r["get_ms"]["fresh"]
        cap_ratio = r["capture_ms"]["long"] / r["capture_ms"]["fresh"]
        lines += [
            f"{b}: log of {r['log_events']:,} events ({r['template_events']} template events "
            f"copied at {r['bulk_rows_per_s']:,} rows/s)",
            f"{b}:   idle cores, empty log: server {r['empty_idle']['server_cores']:.4f} + db "
            f"{r['empty_idle']['db_cores']:.4f} ({r['empty_idle']['db_sessions']} sessions)",
            f"{b}:   idle cores, big log:   server {r['big_idle']['server_cores']:.4f} + db "
            f"{r['big_idle']['db_cores']:.4f} ({r['big_idle']['db_sessions']} sessions)",
            f"{b}:   idle, big minus empty: {big - empty:+.4f} cores (goal < 0.01)",
            f"{b}:   start-up CPU: empty {r['empty_start_cpu_s']} s; restart on the big log "
            f"{r['restart_cpu_s']} s (SERVING {r['restart_serving_wall_s']} s after spawn, CPU "
            f"taken after --settle more; goal < 3 s), {r['restart_quiet_cpu_s']} s once quiet; "
            "first start after the bulk load (positions from before it) "
            f"{r['first_start_cpu_s']} s",
            f"{b}:   GetPayment p50 ms: {r['long_events']}-event payment {r['get_ms']['long']} vs "
            f"fresh {r['get_ms']['fresh']}: {get_ratio:.2f}x (goal <= 2)",
            f"{b}:   CapturePayment p50 ms: on it {r['capture_ms']['long']} vs fresh "
            f"{r['capture_ms']['fresh']}: {cap_ratio:.2f}x (goal <= 2)",
        ]
    return lines


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--events", type=int, default=1_000_000, help="bulk events to add")
    parser.add_argument("--window", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument("--settle", type=float, default=4.0, help="after SERVING, seconds")
    parser.add_argument("--gets", type=int, default=300)
    parser.add_argument("--captures", type=int, default=40)
    parser.add_argument("--first-start-timeout", type=float, default=900.0)
    parser.add_argument(
        "--matched-deliveries", type=int, default=8,
        help="webhook deliveries, unmatched then re-matched, per template (copied in bulk)",
    )  # fmt: skip
    parser.add_argument(
        "--open-deliveries", type=int, default=3,
        help="webhook deliveries still unmatched, stored after the bulk load",
    )  # fmt: skip
    parser.add_argument(
        "--positions", default="webhooks,recovery-index,unmatched-index,listing",
        help="the tracked positions a first start waits for (code before the unmatched "
        "index: webhooks,recovery-index,listing)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="for code from before the recovery index (run from a checkout of it): the first "
        "start lasts --first-start-timeout seconds instead of waiting for positions",
    )
    add_machine_arguments(parser, postgres_default="postgresql://postgres@127.0.0.1:5432/postgres")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    exit_on_sigterm()
    results = []
    with scratch_dir("payorch-bench-idle-", keep=opts.keep_tmp, interrupted="stopped") as tmp:
        for backend in opts.backends.split(","):
            if backend == "postgres" and (problem := postgres_problem(opts.postgres_url)):
                print(f"postgres skipped: {problem}")
                continue
            try:
                results.append(run_backend(opts, backend, tmp))
            except BenchError as e:
                print(f"{backend}: could not run: {e}", file=sys.stderr)
                return 2
    print("\n".join(report(results)))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = ROOT / "bench" / "results" / f"idle-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"options": vars(opts), "results": results}, indent=2))
    print(f"raw numbers: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
