"""Log lines as text (the default) or as one JSON object a line (``--log-format json``,
``PAYORCH_LOG_FORMAT=json``), each carrying the payment and operation being worked on.

The payment and operation come from a context variable the application sets around a
command (``working_on``), read by a logging filter: no call site passes them, and a line
logged from a worker thread of the same command (an adapter, the resilient layer) carries
them too. Only identifiers are put there: never card data, tokens or secrets; the message
itself is the call site's, which already keeps secrets out (tests/e2e/test_no_secret_in_logs).
With tracing on (orchestrator/tracing.py), a JSON line logged inside a span carries its
``trace_id`` and ``span_id``, to find the trace of a line and the lines of a trace.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from orchestrator.tracing import current_ids

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

_working_on: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "payorch_working_on", default=None
)


@contextmanager
def working_on(payment_id: str, operation: str) -> Iterator[None]:
    """Log lines inside carry ``payment_id`` and ``operation``."""
    token = _working_on.set((payment_id, operation))
    try:
        yield
    finally:
        _working_on.reset(token)


class ContextFilter(logging.Filter):
    """Puts the payment and operation being worked on, and the current span's trace and
    span ids, if any, on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _working_on.get()
        record.payment_id, record.operation = current if current is not None else ("", "")
        ids = current_ids()
        record.trace_id, record.span_id = ids if ids is not None else ("", "")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, and payment_id
    and operation when known, trace_id and span_id inside a span; an exception's traceback
    as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payment_id = getattr(record, "payment_id", "")
        if payment_id:
            line["payment_id"] = payment_id
            line["operation"] = getattr(record, "operation", "")
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            line["trace_id"] = trace_id
            line["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, fmt: str) -> None:
    """Logging for a payorch process, to standard error, as ``fmt`` (text or json)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (known: {', '.join(FORMATS)})")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
