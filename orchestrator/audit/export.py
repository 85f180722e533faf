"""``payorch audit export``: every payment event, in commit order, to a JSONL or CSV file.

The log is read page by page and each page written as it arrives, so memory stays flat on a
log of any length. The file appears under its name only once complete (written to
``FILE.tmp``, then renamed), so nobody ever reads half an export as if it were the whole.
``--out -`` writes to standard output instead, as Unix tools do: a reader of a pipe learns of
a failure from the exit code, not from a missing file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from orchestrator.application import Payments
from orchestrator.audit.progress import Progress
from orchestrator.audit.records import FIELDS, AuditRecord, event_timestamp

FORMATS = ("jsonl", "csv")
PAGE = 1000  # events read per query: large enough to amortise the round trip, small in memory


@dataclass(frozen=True)
class TimeWindow:
    """Events from ``since`` (inclusive) until ``until`` (exclusive); ``None`` is unbounded."""

    since: datetime | None = None
    until: datetime | None = None

    def contains(self, moment: datetime) -> bool:
        if self.since is not None and moment < self.since:
            return False
        return self.until is None or moment < self.until


EVERYTHING = TimeWindow()


@dataclass(frozen=True)
class ExportSummary:
    events: int
    seconds: float


def parse_instant(text: str) -> datetime:
    """An ISO 8601 date or time; without an offset it is taken as UTC, the log's own zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 date or time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def export(
    app: Payments,
    out: Path | TextIO,
    *,
    fmt: str,
    window: TimeWindow = EVERYTHING,
    progress: TextIO | None = None,
) -> ExportSummary:
    """Writes the events in ``window`` to ``out``, a file (replaced atomically) or an open
    stream such as standard output; ``progress`` is where to show a counter."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    started = time.monotonic()
    meter = Progress(int(app.recorder.max_notification_id() or 0), progress)
    records = iter_records(app, window, on_page=meter.update)
    if isinstance(out, Path):
        with atomic_file(out) as file:
            count = _WRITERS[fmt](records, file)
    else:
        count = _WRITERS[fmt](records, out)
        out.flush()
    meter.close()
    return ExportSummary(count, time.monotonic() - started)


def iter_records(
    app: Payments,
    window: TimeWindow,
    *,
    page: int = PAGE,
    on_page: Callable[[int], None] = lambda position: None,
) -> Iterator[AuditRecord]:
    """The log's records in commit order. Commit order is not time order (events are stamped
    before their transaction commits), so the whole log is read whatever the window."""
    position = 0
    for batch in app.event_pages(page=page):
        for position, event in batch:
            if window.contains(event_timestamp(event)):
                yield AuditRecord.from_event(position, event)
        on_page(position)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[TextIO]:
    tmp = path.with_name(f"{path.name}.tmp")
    try:
        # newline="": the csv module writes its own line endings.
        with tmp.open("w", encoding="utf-8", newline="") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())  # on disk before the rename makes it visible
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(records: Iterable[AuditRecord], out: TextIO) -> int:
    count = 0
    for record in records:
        out.write(json.dumps(record.as_json_object()) + "\n")
        count += 1
    return count


def write_csv(records: Iterable[AuditRecord], out: TextIO) -> int:
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    count = 0
    for r in records:
        data = json.dumps(r.data, sort_keys=True)
        writer.writerow([r.position, r.payment_id, r.version, r.type, r.time, data])
        count += 1
    return count


_WRITERS: dict[str, Callable[[Iterable[AuditRecord], TextIO], int]] = {
    "jsonl": write_jsonl,
    "csv": write_csv,
}


def load_export(path: Path | str) -> Iterator[AuditRecord]:
    """Reads an export back, one record at a time; the format is told by the CSV header."""
    with Path(path).open(encoding="utf-8", newline="") as file:
        header = file.readline().rstrip("\r\n")
        file.seek(0)
        if header == ",".join(FIELDS):
            for row in csv.DictReader(file):
                yield _record(row, json.loads(row["data"]))
        else:
            for line in file:
                if line.strip():
                    values = json.loads(line)
                    yield _record(values, values["data"])


def _record(values: Mapping[str, Any], data: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        position=int(values["position"]),
        payment_id=str(values["payment_id"]),
        version=int(values["version"]),
        type=str(values["type"]),
        time=str(values["time"]),
        data=data,
    )
