"""``payorch audit export``: the log, in commit order, to a file that loads back unchanged."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from orchestrator.application import Payments
from orchestrator.audit.export import export, load_export
from orchestrator.audit.records import AuditRecord, event_data
from orchestrator.bootstrap import build_payments
from orchestrator.cli import main
from orchestrator.domain.payment import Cause, Payment
from orchestrator.routing import Router
from tests.audit.helpers import a_few_payments


def logged(app: Payments) -> list[AuditRecord]:
    """What ``events_after`` yields, spelled out field by field (not via AuditRecord)."""
    return [
        AuditRecord(
            position=position,
            payment_id=str(event.originator_id),
            version=event.originator_version,
            type=type(event).__name__,
            time=vars(event)["timestamp"].isoformat(),
            data=json.loads(event_data(event)),
        )
        for position, event in app.events_after(0, limit=10_000)
    ]


def run_export(database_url: str, out: Path, fmt: str, *options: str) -> int:
    return main(["audit", "export", "--database-url", database_url, "--format", fmt,
                 "--out", str(out), *options])  # fmt: skip


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_export_loads_back_to_exactly_the_logged_events(
    app: Payments, database_url: str, tmp_path: Path, fmt: str
) -> None:
    a_few_payments(app)
    out = tmp_path / f"events.{fmt}"
    assert run_export(database_url, out, fmt) == 0
    expected = logged(app)
    assert len(expected) == 13  # manual 7, automatic 3, declined 3
    assert list(load_export(out)) == expected
    assert not out.with_name(f"{out.name}.tmp").exists()


def test_records_carry_the_payment_fields_readably(
    app: Payments, database_url: str, tmp_path: Path
) -> None:
    manual, _, _ = a_few_payments(app)
    out = tmp_path / "events.csv"
    run_export(database_url, out, "csv")
    first = next(load_export(out))
    assert (first.payment_id, first.version, first.type) == (str(manual.id), 1, "Requested")
    assert datetime.fromisoformat(first.time).utcoffset() is not None
    assert first.data["amount"] == 1000
    assert first.data["reference"] == "order-1"
    assert out.read_text().splitlines()[0] == "position,payment_id,version,type,time,data"


def test_since_is_inclusive_and_until_exclusive(
    app: Payments, database_url: str, tmp_path: Path
) -> None:
    a_few_payments(app)
    everything = logged(app)
    since, until = everything[3].time, everything[8].time
    out = tmp_path / "window.jsonl"
    assert run_export(database_url, out, "jsonl", "--since", since, "--until", until) == 0
    # One process wrote the events one after the other, so here time order is commit order.
    assert list(load_export(out)) == everything[3:8]


def test_a_window_in_the_future_exports_nothing(
    app: Payments, database_url: str, tmp_path: Path
) -> None:
    a_few_payments(app)
    out = tmp_path / "none.csv"
    assert run_export(database_url, out, "csv", "--since", "2999-01-01") == 0
    assert list(load_export(out)) == []


def test_an_interrupted_export_leaves_the_previous_file_and_no_temporary_one(
    app: Payments, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_few_payments(app)
    out = tmp_path / "events.jsonl"
    out.write_text("the previous export\n")

    def broken(position: int, *, limit: int = 500) -> list[object]:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(app, "events_after", broken)
    with pytest.raises(ConnectionError):
        export(app, out, fmt="jsonl")
    assert out.read_text() == "the previous export\n"
    assert not (tmp_path / "events.jsonl.tmp").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--format", "xml"], "invalid choice: 'xml'"),
        (["--format", "csv", "--since", "last tuesday"], "not an ISO 8601 date or time"),
        (["--format", "csv", "--until", "2024-13-01"], "not an ISO 8601 date or time"),
    ],
)
def test_a_bad_format_or_date_exits_with_a_message_and_writes_nothing(
    sqlite_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exited:
        main(["audit", "export", "--database-url", sqlite_url, "--out", str(out), *options])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_since_after_until_is_refused(sqlite_url: str, tmp_path: Path) -> None:
    Path(sqlite_url.removeprefix("sqlite:///")).touch()
    out = tmp_path / "out.csv"
    options = ["--since", "2024-02-01", "--until", "2024-01-01"]
    assert run_export(sqlite_url, out, "csv", *options) == 2
    assert not out.exists()


def test_a_missing_sqlite_store_is_an_error_not_an_empty_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.db"
    assert run_export(f"sqlite:///{missing}", tmp_path / "out.csv", "csv") == 2
    assert "no SQLite event store" in capsys.readouterr().err
    assert not missing.exists()


def test_the_progress_counter_ends_at_the_last_position_on_its_own_line(
    app: Payments, tmp_path: Path
) -> None:
    a_few_payments(app)
    shown = io.StringIO()
    summary = export(app, tmp_path / "events.csv", fmt="csv", progress=shown)
    assert summary.events == 13
    last = shown.getvalue().split("\r")[-1]
    assert last.startswith("exporting: 100% (position ")
    assert last.endswith(")\n")


def test_without_a_stream_there_is_no_progress_counter(app: Payments, tmp_path: Path) -> None:
    a_few_payments(app)
    assert export(app, tmp_path / "events.csv", fmt="csv").events == 13


# --- 100,000 events in a fixed memory bound: the log is streamed, never held --------------

EVENTS = 100_000
EVENTS_PER_PAYMENT = 5  # Requested, OperationStarted, Authorized, OperationStarted, Captured
BATCH = 1000  # payments per save: one transaction of 5,000 events
ROOT = Path(__file__).resolve().parents[2]


def captured_payment(n: int, deadline: datetime) -> Payment:
    """A payment authorized then captured, made in memory: no provider, only its events."""
    cause = Cause("default", f"bulk-{n}")
    payment = Payment(
        id=uuid4(), amount=1000 + n % 500, currency="USD", payment_method="pm_card_visa",
        region="US", capture_mode="manual", reference=f"order-{n}", metadata={},
        scope="default", idempotency_key=f"bulk-{n}",
        caused_by=cause.as_data(), account="default",
    )  # fmt: skip
    payment.start_authorization(provider="sandbox", deadline=deadline, cause=cause)
    payment.record_success(
        1, provider_reference=f"sbx_pay_{n}", amount=payment.amount, caused_by=cause
    )
    payment.start_capture(None, deadline=deadline, cause=cause)
    payment.record_success(
        2, provider_reference=f"sbx_pay_{n}", amount=payment.amount, caused_by=cause
    )
    return payment


def fill(app: Payments, payments: int) -> None:
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    for start in range(0, payments, BATCH):
        app.save(*(captured_payment(n, deadline) for n in range(start, start + BATCH)))


@pytest.fixture
def big_store(sqlite_url: str) -> Iterator[str]:
    app = build_payments(sqlite_url, Router({}, {}))
    try:
        fill(app, EVENTS // EVENTS_PER_PAYMENT)
    finally:
        app.close()
    yield sqlite_url


def peak_rss_mb(pid: int) -> int:
    """The process's peak resident set so far (VmHWM; 0 once it has exited). Read from /proc,
    not from wait4's ru_maxrss: Linux carries the parent's peak across fork and exec into the
    child's, so that would measure pytest."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024  # kB
    return 0


def export_measured(database_url: str, out: Path) -> tuple[int, float, str]:
    """Runs the export in its own process: (peak RSS in MB, seconds, stderr)."""
    command = [sys.executable, "-m", "orchestrator.cli", "--log-level", "WARNING", "audit",
               "export", "--database-url", database_url, "--format", "jsonl", "--out", str(out)]  # fmt: skip
    errors = out.with_name(f"{out.name}.stderr")
    peak = 0
    started = time.monotonic()
    with errors.open("w") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        # VmHWM only grows, so the last reading before exit is the peak, but for the last
        # few milliseconds (interpreter shutdown, which frees memory rather than taking it).
        while process.poll() is None:
            with contextlib.suppress(OSError):  # it may exit while we read
                peak = max(peak, peak_rss_mb(process.pid))
            time.sleep(0.02)
    seconds = time.monotonic() - started
    assert process.returncode == 0, errors.read_text()
    assert peak > 0, "the export ended before its memory could be read"
    return peak, seconds, errors.read_text()


def test_an_export_of_100k_events_stays_within_a_fixed_memory_bound(
    big_store: str, tmp_path: Path
) -> None:
    empty_store = f"sqlite:///{tmp_path / 'empty.db'}"
    build_payments(empty_store, Router({}, {})).close()
    baseline_mb, _, _ = export_measured(empty_store, tmp_path / "empty.jsonl")

    out = tmp_path / "events.jsonl"
    peak_mb, seconds, stderr = export_measured(big_store, out)
    print(f"\n100k export: peak RSS {peak_mb} MB (empty store: {baseline_mb} MB), {seconds:.1f} s")

    assert f"wrote {EVENTS:,} events" in stderr
    with out.open() as file:
        assert sum(1 for _ in file) == EVENTS
    assert sum(1 for _ in load_export(out)) == EVENTS
    # Measured: ~45 MB for the interpreter and its imports on an empty store, ~50 MB for
    # 100k events streamed; the same export holding its records in a list peaks at ~185 MB.
    # So: at most 30 MB above the empty-store run (one page of events is well under 10 MB),
    # and under 100 MB in all, far below what holding the log would take.
    assert peak_mb - baseline_mb < 30
    assert peak_mb < 100
