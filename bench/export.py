"""``payorch audit export`` on PostgreSQL: events per second and peak memory, beside COPY.

For each size (``--sizes``, default 100,000 and 1,000,000 events): a PostgreSQL database
``payorch_bench_export_<size>`` filled through the application (``Payments.save`` of many
in-memory captured payments per transaction, 5 events each), kept for the next run and
reused while it holds exactly that many events of the shape the domain produces today
(``--refill`` forces a new fill, ``--drop`` drops it at the end). Then, in the same run:

1. the floor: ``COPY payments_events TO STDOUT`` (text and binary), and a COPY of the
   export's own query (payment topics, commit order), read to the end by psycopg 3 and
   discarded;
2. ``payorch audit export --format jsonl`` and ``--format csv`` in a child process (the
   console script's ``orchestrator.cli:main``, under a wrapper that prints the process's own
   peak resident set, ``VmHWM``, at exit), timed from spawn to exit; the file's lines are
   counted against the payment events in the table.

An export of an empty store gives the interpreter's own peak, for reference. Prints a table
and writes the raw numbers to bench/results/export-<timestamp>.json. Exit status: 0 when
every check held, 1 when a check failed (counts differ, memory grew with the log), 2 when
the benchmark could not run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

from benchlib import CpuSnapshot, add_machine_arguments, cpu_cores, cpu_snapshot
from create_payment import _PREEXEC as PREEXEC
from create_payment import DEFAULT_POSTGRES_URL as POSTGRES_URL
from create_payment import (
    ROOT,
    BenchError,
    child_env,
    exit_on_sigterm,
    fresh_postgres_database,
    measurable_backends,
    print_verdicts,
    render,
    scratch_dir,
    wait_until_quiet,
    with_dbname,
    write_results,
)
from create_payment import Options as LoadOptions
from create_payment import _n as num

from orchestrator.application import PAYMENT_EVENT_TOPICS, Payments
from orchestrator.bootstrap import build_payments
from orchestrator.domain.payment import Cause, Payment
from orchestrator.routing import Router

SIZES = (100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
FORMATS = ("jsonl", "csv")
EVENTS_PER_PAYMENT = 5  # Requested, OperationStarted, Authorized, OperationStarted, Captured
TABLE = "payments_events"
MARKER = "bench_export_fill"  # one row: what the fill wrote, so a rerun can trust it
DATABASE_PREFIX = "payorch_bench_export_"
MB = 1024 * 1024

# Runs the export as the console script would (same entry point, same argv), then prints
# the process's own peak resident set. VmHWM belongs to the address space, which exec
# replaced, so unlike getrusage's ru_maxrss (which Linux carries over from the forked parent
# through exec) it holds the export's memory alone.
_EXPORT_WRAPPER = """\
import json, sys
from orchestrator.cli import main
status = main(sys.argv[1:])
memory = {}
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            memory[key] = int(value.split()[0])
print(json.dumps({"status": status, **memory}), flush=True)
sys.exit(status)
"""
_WROTE = re.compile(r"wrote ([\d,]+) events to .* in ([\d.]+) s")


@dataclass(frozen=True)
class Options:
    load: LoadOptions  # PostgreSQL URL, quiet machine, noise threshold, temporary files
    sizes: tuple[int, ...]
    formats: tuple[str, ...]
    copy_repeats: int
    batch: int
    refill: bool
    drop: bool
    export_timeout: float
    rss_slack_mb: float


# --- the data: captured payments made in memory, saved through the application ------------


def captured_payment(n: int, deadline: datetime) -> Payment:
    """A manual payment authorized then captured, made in memory: no provider, only its
    events, as tests/audit/test_export.py makes them."""
    key = f"bulk-{n}"
    cause = Cause("default", key)
    payment = Payment(
        id=uuid4(),
        amount=1000 + n % 500,
        currency="USD",
        payment_method="pm_card_visa",
        region="US",
        capture_mode="manual",
        reference=f"order-{n}",
        metadata={},
        scope="default",
        idempotency_key=key,
        caused_by=cause.as_data(),
        account="default",
    )
    payment.start_authorization(provider="sandbox", deadline=deadline, cause=cause)
    reference = f"sbx_pay_{n}"
    payment.record_success(1, provider_reference=reference, amount=payment.amount, caused_by=cause)
    payment.start_capture(None, deadline=deadline, cause=cause)
    payment.record_success(2, provider_reference=reference, amount=payment.amount, caused_by=cause)
    return payment


def event_shape() -> str:
    """Each event's class and field names, as the domain makes them now. A database filled
    with events of another shape (the domain changed since) is filled again, not reused."""
    events = captured_payment(0, datetime.now(UTC)).collect_events()
    return json.dumps([[type(e).__qualname__, sorted(vars(e))] for e in events])


def fill(app: Payments, events: int, batch: int, *, quiet: bool = False) -> float:
    """Saves ``events`` events, ``batch`` payments per transaction; returns the seconds."""
    payments = events // EVENTS_PER_PAYMENT
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    started = last_shown = time.perf_counter()
    for start in range(0, payments, batch):
        app.save(
            *(captured_payment(n, deadline) for n in range(start, min(start + batch, payments)))
        )
        now = time.perf_counter()
        done = min(start + batch, payments) * EVENTS_PER_PAYMENT
        if not quiet and (now - last_shown >= 5 or done == events):
            rate = done / (now - started)
            print(
                f"  fill {events:,}: {done:,} events ({done / events:.0%}), {rate:,.0f} events/s,"
                f" {now - started:.0f} s",
                file=sys.stderr,
            )
            last_shown = now
    return time.perf_counter() - started


def _admin(opts: Options, statement: str) -> None:
    import psycopg

    with psycopg.connect(opts.load.postgres_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(statement)  # names are ours: digits only


def database_name(size: int) -> str:
    return f"{DATABASE_PREFIX}{size}"


def fill_marker(url: str) -> dict[str, Any] | None:
    """What the last complete fill of this database wrote, or None (never filled, or
    interrupted: the marker is written last)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute(
                f"SELECT events, shape, filled_at, fill_seconds FROM {MARKER}"
            ).fetchone()
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return None
    if row is None:
        return None
    return {"events": row[0], "shape": row[1], "filled_at": row[2], "fill_seconds": row[3]}


def table_counts(url: str) -> dict[str, int]:
    """Rows in the events table, payment events among them, and its size on disk."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute(
            f"SELECT count(*), count(*) FILTER (WHERE topic = ANY(%s)),"
            f" pg_total_relation_size('{TABLE}') FROM {TABLE}",
            (PAYMENT_EVENT_TOPICS,),
        ).fetchone()
    assert row is not None
    return {"rows": row[0], "payment_events": row[1], "bytes": row[2]}


def store_profile(url: str) -> dict[str, Any]:
    """The application's tables (columns and types) and the rows in each."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name <> %s"
            " ORDER BY table_name, ordinal_position",
            (MARKER,),
        ).fetchall()
        rows = {}
        for name in sorted({c[0] for c in columns}):
            found = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()
            rows[name] = found[0] if found else 0
    return {"columns": [list(c) for c in columns], "rows": rows}


def reference_profile(opts: Options) -> dict[str, Any]:
    """What the application writes today for a small fill: its tables, and rows per event in
    each (the events table, and whatever else a save writes, such as a chain of links)."""
    events = 2 * EVENTS_PER_PAYMENT
    with fresh_postgres_database(opts.load.postgres_url) as url:
        app = build_payments(url, Router({}, {}))
        try:
            empty = store_profile(url)  # eventsourcing records its schema's version
            fill(app, events, opts.batch, quiet=True)
        finally:
            app.close()
        filled = store_profile(url)
    return {
        "columns": filled["columns"],
        "rows_when_empty": empty["rows"],
        "rows_per_event": {
            t: (n - empty["rows"].get(t, 0)) / events for t, n in filled["rows"].items()
        },
    }


def _unlike(reference: dict[str, Any], found: dict[str, Any], size: int) -> str | None:
    """Why the database does not hold what a fill of ``size`` events writes today, if so."""
    if found["columns"] != reference["columns"]:
        return "its tables differ from the ones payorch creates today"
    for name, per_event in reference["rows_per_event"].items():
        expected = reference["rows_when_empty"].get(name, 0) + round(per_event * size)
        if found["rows"][name] != expected:
            return f"{name} holds {found['rows'][name]:,} rows, not {expected:,}"
    return None


def prepare_store(opts: Options, size: int, reference: dict[str, Any]) -> dict[str, Any]:
    """The database for ``size`` events: reused if it holds a complete fill of what the
    application writes today, otherwise dropped, created and filled."""
    import psycopg

    name = database_name(size)
    url = with_dbname(opts.load.postgres_url, name)
    shape = event_shape()
    marker = None if opts.refill else fill_marker(url)
    why = "--refill" if opts.refill else "no complete fill"
    if marker is not None:
        unlike = _unlike(reference, store_profile(url), size)
        if marker["shape"] != shape:
            why = "the domain's events changed shape since the fill"
        elif marker["events"] != size or unlike is not None:
            why = unlike or f"the fill was of {marker['events']:,} events"
        else:
            filled = f"{marker['filled_at']:%Y-%m-%d %H:%M} UTC"
            print(f"{size:,}: reusing {name} (filled {filled})", file=sys.stderr)
            return {"database": url, "reused": True, **marker}
    print(f"{size:,}: filling {name} ({why})", file=sys.stderr)
    _admin(opts, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(opts, f'CREATE DATABASE "{name}"')
    app = build_payments(url, Router({}, {}))
    try:
        seconds = fill(app, size, opts.batch)
    finally:
        app.close()
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        # Settle the tables before measuring: without this, the first reads set hint bits
        # (writing pages) and autovacuum may start on the fresh rows during a measurement.
        conn.execute("VACUUM (ANALYZE)")
        conn.execute(
            f"CREATE TABLE {MARKER} (events bigint, shape text,"
            " filled_at timestamptz DEFAULT now(), fill_seconds double precision)"
        )
        conn.execute(
            f"INSERT INTO {MARKER} (events, shape, fill_seconds) VALUES (%s, %s, %s)",
            (size, shape, seconds),
        )
    unlike = _unlike(reference, store_profile(url), size)
    if unlike is not None:
        raise BenchError(f"{name} after the fill: {unlike}")
    return {"database": url, "reused": False, "events": size, "fill_seconds": seconds}


# --- the floor: COPY ----------------------------------------------------------------------


def _cores(before: CpuSnapshot, after: CpuSnapshot, child_cpu: float = 0.0) -> dict[str, float]:
    """Cores used over the span (benchlib's accounting), with the export child, which is
    gone by the end and so not watched by pid, taken out of ``other``."""
    cores = cpu_cores(before, after, own_label="bench")
    if child_cpu:
        cores["export"] = round(child_cpu / (after.wall - before.wall), 3)
        cores["other"] = round(cores["other"] - cores["export"], 3)
    return cores


def copy_out(url: str, statement: str, params: Sequence[Any] | None = None) -> dict[str, Any]:
    """One COPY ... TO STDOUT read to its end by psycopg 3, the bytes discarded."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        cursor = conn.cursor()
        before = cpu_snapshot({}, {"postgres": "postgres"})
        started = time.perf_counter()
        size = 0
        with cursor.copy(statement, params) as copy:
            for data in copy:
                size += len(data)
        seconds = time.perf_counter() - started
        after = cpu_snapshot({}, {"postgres": "postgres"})
        rows = cursor.rowcount  # from the server's "COPY n"
    return {
        "rows": rows,
        "bytes": size,
        "seconds": round(seconds, 4),
        "rows_per_s": round(rows / seconds, 1),
        "cpu_cores": _cores(before, after),
    }


def copy_floor(opts: Options, url: str, size: int) -> dict[str, Any]:
    """The median of ``--copy-repeats`` runs of each COPY, every run kept in the JSON."""
    statements: dict[str, tuple[str, Sequence[Any] | None]] = {
        "text": (f"COPY {TABLE} TO STDOUT", None),
        "binary": (f"COPY {TABLE} TO STDOUT (FORMAT binary)", None),
        # What the export asks for, in one statement instead of pages of 1,000.
        "export_query": (
            f"COPY (SELECT * FROM {TABLE} WHERE topic = ANY(%s) ORDER BY notification_id)"
            " TO STDOUT",
            (PAYMENT_EVENT_TOPICS,),
        ),
    }
    results: dict[str, Any] = {}
    for name, (statement, params) in statements.items():
        quiet = wait_until_quiet(opts.load, f"COPY {name} of {size:,}")
        runs = [copy_out(url, statement, params) for _ in range(opts.copy_repeats)]
        middle = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        results[name] = {**middle, "quiet": quiet, "runs": runs}
        print(
            f"  COPY {name}: {middle['rows']:,} rows in {middle['seconds']:.2f} s"
            f" ({middle['rows_per_s']:,.0f} rows/s; median of {len(runs)})",
            file=sys.stderr,
        )
    return results


# --- the export, in a child process -------------------------------------------------------


def _vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass  # it exited, or was between exec and its first page
    return 0


def _seen(postgres: dict[int, int], snapshot: CpuSnapshot) -> CpuSnapshot:
    """Keeps the last ticks of every postgres process seen, and puts them in ``snapshot``:
    the backend that served the export has exited by the end, and its CPU with it."""
    postgres.update(snapshot.comms["postgres"])
    snapshot.comms["postgres"] = dict(postgres)
    return snapshot


def count_lines(path: Path) -> int:
    lines = 0
    with path.open("rb") as file:
        while chunk := file.read(MB):
            lines += chunk.count(b"\n")
    return lines


def run_export(opts: Options, url: str, fmt: str, out: Path) -> dict[str, Any]:
    """``payorch audit export`` to ``out``, timed from spawn to exit, with its peak memory
    (its own VmHWM at exit; also polled from here every 20 ms as a cross-check)."""
    argv = [
        sys.executable,
        "-c",
        _EXPORT_WRAPPER,
        "audit",
        "export",
        "--database-url",
        url,
        "--format",
        fmt,
        "--out",
        str(out),
    ]
    stdout_path = out.with_name(f"{out.name}.stdout")
    stderr_path = out.with_name(f"{out.name}.stderr")
    polled_kb = 0
    before = cpu_snapshot({}, {"postgres": "postgres"})
    postgres: dict[int, int] = {}  # ticks last seen of every postgres process
    started = next_look = time.perf_counter()
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=PREEXEC,  # noqa: PLW1509 (no threads here; set before exec)
        )
        try:
            deadline = started + opts.export_timeout
            while True:
                # wait4, not Popen.wait: it also returns the child's CPU time.
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    process.returncode = os.waitstatus_to_exitcode(status)
                    break
                polled_kb = max(polled_kb, _vm_hwm_kb(process.pid))
                if time.perf_counter() >= next_look:
                    _seen(postgres, cpu_snapshot({}, {"postgres": "postgres"}))
                    next_look += 0.25
                if time.perf_counter() >= deadline:
                    raise BenchError(f"export {fmt} not done after {opts.export_timeout:.0f} s")
                time.sleep(0.02)
        finally:
            if process.returncode is None:
                process.kill()
                process.wait(10)
    wall = time.perf_counter() - started
    after = _seen(postgres, cpu_snapshot({}, {"postgres": "postgres"}))
    errors = stderr_path.read_text(errors="replace")
    lines = stdout_path.read_text().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise BenchError(f"export {fmt} exited with {process.returncode}:\n{errors[-3000:]}")
    own = json.loads(lines[-1])
    wrote = _WROTE.search(errors)
    if wrote is None:
        raise BenchError(f"export {fmt}: no 'wrote N events' line:\n{errors[-3000:]}")
    lines_in_file = count_lines(out)
    exported = lines_in_file - (1 if fmt == "csv" else 0)  # the CSV header
    child_cpu = usage.ru_utime + usage.ru_stime
    result = {
        "events_in_file": exported,
        "events_reported": int(wrote[1].replace(",", "")),
        "bytes": out.stat().st_size,
        "wall_s": round(wall, 3),
        "own_timer_s": float(wrote[2]),
        "events_per_s": round(exported / wall, 1),
        "cpu_s": round(child_cpu, 3),
        "peak_rss_kb": own["VmHWM"],
        "rss_at_exit_kb": own["VmRSS"],
        "peak_rss_polled_kb": polled_kb,
        # Not the export's own: Linux carries the forked parent's peak into it (see above).
        "wait4_ru_maxrss_kb": usage.ru_maxrss,
        "cpu_cores": _cores(before, after, child_cpu),
    }
    out.unlink()  # up to a few hundred MB each; the counts are taken
    return result


def export_all(opts: Options, url: str, label: str, tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for fmt in opts.formats:
        quiet = wait_until_quiet(opts.load, f"export {fmt} of {label}")
        result = run_export(opts, url, fmt, tmp / f"{label}.{fmt}")
        results[fmt] = {**result, "quiet": quiet}
        print(
            f"  export {fmt}: {result['events_in_file']:,} events in {result['wall_s']:.2f} s"
            f" ({result['events_per_s']:,.0f}/s), peak RSS {result['peak_rss_kb'] / 1024:.1f} MB",
            file=sys.stderr,
        )
    return results


def empty_store_exports(opts: Options, tmp: Path) -> dict[str, Any]:
    """The same exports of an empty store: the interpreter's and the imports' own memory,
    and the start-up time inside every wall time."""
    with fresh_postgres_database(opts.load.postgres_url) as url:
        build_payments(url, Router({}, {})).close()  # the tables, as payorch creates them
        return export_all(opts, url, "empty", tmp)


# --- the report ---------------------------------------------------------------------------


def _mb(kb: float) -> str:
    return f"{kb / 1024:,.1f} MB"


def checks(run: dict[str, Any], opts: Options) -> list[str]:
    failed = []
    for size in opts.sizes:
        r = run["sizes"][str(size)]
        events = r["table"]["payment_events"]
        if events != size:
            failed.append(f"{size:,}: the table holds {events:,} payment events")
        for name, c in r["copy"].items():
            expected = events if name == "export_query" else r["table"]["rows"]
            if any(x["rows"] != expected for x in c["runs"]):
                failed.append(f"{size:,}: COPY {name} copied {c['rows']:,} rows, not {expected:,}")
        for fmt, e in r["export"].items():
            if not e["events_in_file"] == e["events_reported"] == events:
                failed.append(
                    f"{size:,} {fmt}: {e['events_in_file']:,} lines in the file,"
                    f" {e['events_reported']:,} reported, {events:,} payment events in the table"
                )
    smallest, largest = min(opts.sizes), max(opts.sizes)
    if smallest != largest:
        for fmt in opts.formats:
            small = run["sizes"][str(smallest)]["export"][fmt]["peak_rss_kb"]
            large = run["sizes"][str(largest)]["export"][fmt]["peak_rss_kb"]
            if (large - small) / 1024 > opts.rss_slack_mb:
                failed.append(
                    f"export {fmt}: peak RSS grew with the log: {_mb(small)} at {smallest:,}"
                    f" events, {_mb(large)} at {largest:,} (limit +{opts.rss_slack_mb:g} MB)"
                )
    return failed


# CPU is counted in clock ticks (10 ms): over a shorter window a tick or two decides.
MIN_CPU_WINDOW = 1.0  # seconds


def noise_warnings(run: dict[str, Any], noise_cores: float) -> list[str]:
    warnings = []

    def look(what: str, cores: dict[str, float], seconds: float) -> None:
        if seconds >= MIN_CPU_WINDOW and cores.get("other", 0) > noise_cores:
            warnings.append(
                f"{what}: {cores['other']:.2f} cores used outside the measured processes"
                " (another job on the machine, or kernel I/O threads)"
            )

    for fmt, e in run["empty"].items():
        look(f"empty-store export {fmt}", e["cpu_cores"], e["wall_s"])
    for size, r in run["sizes"].items():
        for name, c in r["copy"].items():
            for i, one in enumerate(c["runs"], 1):
                look(f"{int(size):,} COPY {name} #{i}", one["cpu_cores"], one["seconds"])
        for fmt, e in r["export"].items():
            look(f"{int(size):,} export {fmt}", e["cpu_cores"], e["wall_s"])
    return warnings


def table(run: dict[str, Any], opts: Options) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("events", "metric", "value", "reference", "ratio")]
    for fmt, e in run["empty"].items():
        rows.append(
            (
                "0",
                f"export {fmt}: wall / peak RSS",
                f"{e['wall_s']:.2f} s / {_mb(e['peak_rss_kb'])}",
                "",
                "empty store: start-up and imports",
            )
        )
    smallest = str(min(opts.sizes))
    for size in opts.sizes:
        r = run["sizes"][str(size)]
        s, t = f"{size:,}", r["table"]
        copy_rate = r["copy"]["text"]["rows_per_s"]
        fill = r["store"]
        filled = "reused; the fill ran at" if fill["reused"] else "filled now at"
        rows += [
            ("", "", "", "", ""),
            (
                s,
                "rows in table / payment events",
                f"{t['rows']:,} / {t['payment_events']:,}",
                f"{t['bytes'] / MB:,.0f} MB on disk",
                f"{filled} {size / fill['fill_seconds']:,.0f} events/s",
            ),
        ]
        for name, label in (
            ("text", "COPY TO STDOUT"),
            ("binary", "  (FORMAT binary)"),
            ("export_query", "  COPY (export's query)"),
        ):
            c = r["copy"][name]
            ratio = "" if name == "text" else f"{c['rows_per_s'] / copy_rate:.2f} of COPY text"
            rows.append(
                (
                    s,
                    f"{label} rows/s",
                    num(c["rows_per_s"], 0),
                    f"{c['rows']:,} rows in {c['seconds']:.2f} s",
                    ratio,
                )
            )
        for fmt, e in r["export"].items():
            base = run["sizes"][smallest]["export"][fmt]["peak_rss_kb"]
            empty = run["empty"][fmt]["peak_rss_kb"]
            cores = e["cpu_cores"]
            growth = (
                f"{e['peak_rss_kb'] / base:.2f}x of {int(smallest):,}"
                if str(size) != smallest
                else f"+{(e['peak_rss_kb'] - empty) / 1024:.1f} MB on empty"
            )
            counts = f"{e['events_in_file']:,} / {e['events_reported']:,}"
            ok = (
                "ok"
                if e["events_in_file"] == e["events_reported"] == t["payment_events"]
                else "FAILED"
            )
            rows += [
                (
                    s,
                    f"audit export {fmt} events/s",
                    num(e["events_per_s"], 0),
                    f"{num(copy_rate, 0)} COPY rows/s",
                    f"{e['events_per_s'] / copy_rate:.3f} of COPY text",
                ),
                (s, "  peak RSS", _mb(e["peak_rss_kb"]), f"{_mb(empty)} empty store", growth),
                (
                    s,
                    "  wall / own timer / CPU",
                    f"{e['wall_s']:.1f} / {e['own_timer_s']:.1f} / {e['cpu_s']:.1f} s",
                    f"cores: export {cores.get('export', 0):.2f},"
                    f" postgres {cores.get('postgres', 0):.2f}",
                    f"{e['bytes'] / MB:,.0f} MB file",
                ),
                (
                    s,
                    "  lines in file / reported",
                    counts,
                    f"{t['payment_events']:,} payment events",
                    ok,
                ),
            ]
    return rows


def ratio_lines(run: dict[str, Any], opts: Options) -> list[str]:
    lines = ["export events/s / COPY (text) rows/s, same table, same run:"]
    for fmt in opts.formats:
        parts = []
        for size in opts.sizes:
            r = run["sizes"][str(size)]
            ratio = r["export"][fmt]["events_per_s"] / r["copy"]["text"]["rows_per_s"]
            parts.append(f"{ratio:.3f} at {size:,}")
        lines.append(f"  {fmt:5}  {', '.join(parts)}")
    smallest, largest = min(opts.sizes), max(opts.sizes)
    if smallest != largest:
        lines.append(f"peak RSS of the export, {largest:,} events vs {smallest:,}:")
        for fmt in opts.formats:
            small = run["sizes"][str(smallest)]["export"][fmt]["peak_rss_kb"]
            large = run["sizes"][str(largest)]["export"][fmt]["peak_rss_kb"]
            empty = run["empty"][fmt]["peak_rss_kb"]
            lines.append(
                f"  {fmt:5}  {_mb(large)} vs {_mb(small)} ({(large - small) / 1024:+.1f} MB,"
                f" {large / small:.2f}x); empty store {_mb(empty)}"
            )
    return lines


def cpu_lines(run: dict[str, Any]) -> list[str]:
    order = ["export", "postgres", "bench", "other", "steal", "machine"]

    def fmt(cores: dict[str, float], seconds: float) -> str:
        # "other" is a difference of samples: show a rounding -0.01 as 0
        used = ", ".join(f"{k} {max(0.0, cores[k]):.2f}" for k in order if k in cores)
        rough = " (too short to count)" if seconds < MIN_CPU_WINDOW else ""
        return f"{seconds:6.2f} s: {used}{rough}"

    lines = [
        f"CPU cores used (of {os.cpu_count()}) over each timed window; 'bench' is this script"
        " reading the COPY, or polling the export:"
    ]
    for size, r in run["sizes"].items():
        for name, c in r["copy"].items():
            lines.append(f"  {int(size):>9,} COPY {name:13} {fmt(c['cpu_cores'], c['seconds'])}")
        for f, e in r["export"].items():
            lines.append(f"  {int(size):>9,} export {f:11} {fmt(e['cpu_cores'], e['wall_s'])}")
    return lines


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- main ---------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        help="events per database, comma-separated (100000,1000000; 10000,100000 --quick)",
    )
    parser.add_argument("--formats", default=",".join(FORMATS), help="export formats")
    parser.add_argument(
        "--copy-repeats", type=int, help="runs of each COPY, median kept (3; 1 --quick)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: smaller sizes, one COPY each"
    )
    parser.add_argument("--batch", type=int, default=1000, help="payments per save when filling")
    parser.add_argument(
        "--refill", action="store_true", help="fill again even if a database is reusable"
    )
    parser.add_argument("--drop", action="store_true", help="drop the filled databases at the end")
    parser.add_argument("--export-timeout", type=float, default=1800.0, help="seconds per export")
    parser.add_argument(
        "--rss-slack-mb",
        type=float,
        default=16.0,
        help="check: largest size's peak RSS at most this above the smallest's",
    )
    add_machine_arguments(parser, postgres_default=POSTGRES_URL)
    args = parser.parse_args(argv)

    try:
        sizes = (
            tuple(int(s.replace("_", "")) for s in args.sizes.split(","))
            if args.sizes
            else (QUICK_SIZES if args.quick else SIZES)
        )
    except ValueError:
        parser.error("--sizes takes comma-separated integers")
    if not sizes or any(s <= 0 or s % EVENTS_PER_PAYMENT for s in sizes):
        parser.error(f"--sizes: positive multiples of {EVENTS_PER_PAYMENT} (events per payment)")
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    if not formats or any(f not in FORMATS for f in formats):
        parser.error(f"--formats takes a comma-separated subset of {','.join(FORMATS)}")
    repeats = args.copy_repeats if args.copy_repeats is not None else (1 if args.quick else 3)
    if repeats < 1 or args.batch < 1:
        parser.error("--copy-repeats >= 1, --batch >= 1")
    return Options(
        load=LoadOptions(
            backends=("postgres",),
            concurrency=0,  # not used here, nor the window and workers below
            warmup=0.0,
            duration=0.0,
            runs=1,
            commit_threads=0,
            server_workers=0,
            call_timeout=0.0,
            postgres_url=args.postgres_url,
            quiet_threshold=args.quiet_threshold,
            quiet_wait=args.quiet_wait,
            noise_cores=args.noise_cores,
            startup_timeout=args.startup_timeout,
            keep_tmp=args.keep_tmp,
        ),
        sizes=tuple(sorted(set(sizes))),
        formats=formats,
        copy_repeats=repeats,
        batch=args.batch,
        refill=args.refill,
        drop=args.drop,
        export_timeout=args.export_timeout,
        rss_slack_mb=args.rss_slack_mb,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse_options(argv)
    command = shlex.join([sys.executable, *sys.argv])
    started = datetime.now(UTC)
    load_at_start = _load()
    print(f"load average at start: {load_at_start}", file=sys.stderr)

    exit_on_sigterm()
    _, skipped = measurable_backends(["postgres"], opts.load.postgres_url)
    if skipped:
        return 2

    run: dict[str, Any] = {"sizes": {}}
    try:
        with scratch_dir(
            "payorch-bench-export-",
            keep=opts.load.keep_tmp,
            interrupted="export stopped, temporary files removed",
        ) as tmp:
            print("empty store", file=sys.stderr)
            run["empty"] = empty_store_exports(opts, tmp)
            reference = reference_profile(opts)
            run["reference_store"] = reference
            for size in opts.sizes:
                store = prepare_store(opts, size, reference)
                url = store["database"]
                result: dict[str, Any] = {"store": store, "table": table_counts(url)}
                result["copy"] = copy_floor(opts, url, size)
                result["export"] = export_all(opts, url, str(size), tmp)
                run["sizes"][str(size)] = result
    except BenchError as e:
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 2
    finally:
        if opts.drop:
            for size in opts.sizes:
                _admin(opts, f'DROP DATABASE IF EXISTS "{database_name(size)}" WITH (FORCE)')
    load_at_end = _load()

    failed = checks(run, opts)
    noisy = noise_warnings(run, opts.load.noise_cores)
    print(f"$ {command}")
    print(
        f"{started:%Y-%m-%d %H:%M:%S} UTC, {os.cpu_count()} CPUs (export, PostgreSQL and this"
        f" script share them), PostgreSQL {', '.join(f'{s:,}' for s in opts.sizes)} events,"
        f" COPY median of {opts.copy_repeats}"
    )
    print(f"load average (1, 5, 15 min) at start: {load_at_start}")
    print()
    print(render(table(run, opts)))
    print()
    print("\n".join(ratio_lines(run, opts)))
    print()
    print("\n".join(cpu_lines(run)))
    print(f"load average (1, 5, 15 min) at end: {load_at_end}")
    kept = "dropped (--drop)" if opts.drop else "kept for the next run (--drop to drop)"
    print(f"databases {', '.join(database_name(s) for s in opts.sizes)}: {kept}")
    print_verdicts({}, noisy, failed)
    body = {
        "load_average": {"start": load_at_start, "end": load_at_end},
        "checks_failed": failed,
        "noise_warnings": noisy,
        "run": run,
    }
    write_results("export-", started, command, asdict(opts), body)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
