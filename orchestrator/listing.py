"""Finding payments: a read model of one row per payment, kept from the event log, and the
query behind ``ListPayments``.

The table (``<events table>_listing``) holds each payment's account, reference, status,
provider, region, amount, currency, creation and last-change times and version. A projector
(``ListingProjector``, in the background of every ``payorch serve``) follows the log from its
own tracked position (``Tracking("listing", ...)`` in the store's tracking table), as the
in-doubt index does (``orchestrator.indoubt``): the rows of a page of events and the position
that page reaches commit in one transaction, so a crash neither loses an event nor applies one
twice. A row only ever moves forward (``version`` grows), so replicas running the projector at
once, or a rebuild racing them, write the same rows whichever commits first.

A row is the payment as its events rebuild it, so its status is the domain's own
(``Payment.status``), never a second reading of the events. A page that holds a payment's
first event rebuilds it from the page alone. Any other payment is moved forward by the page's
events from the state the projector left it in (it keeps the last ``KNOWN`` payments it
projected), so a long payment costs a pass its new events, not its whole history; only a
payment it does not hold at the version just before the page (not yet seen, forgotten, or
moved past what a failed pass recorded) is read from the store, all such in one query.

It is eventually consistent: a payment shows up, or changes, one projector pass after its
event commits (``[listing] interval``, 0.5 s by default, plus the pass itself). ``lag()`` says
how many log positions it is behind.

The position skips to the log's head, safe for the reason ``orchestrator.webhooks.processor``
gives: every id at or below the head is final when the head is read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventsourcing.persistence import IntegrityError
from eventsourcing.utils import get_topic

from orchestrator.domain.errors import InvalidArgument
from orchestrator.domain.payment import Payment, Status
from orchestrator.lru import BoundedMap
from orchestrator.tracked import Bulk, TrackedTable
from orchestrator.worker import BackgroundLoop

if TYPE_CHECKING:
    from orchestrator.application import Payments

TRACKING_NAME = "listing"
# Every payment event (the application's PAYMENT_EVENT_TOPICS, which imports this module).
TOPICS = [
    get_topic(member)
    for member in vars(Payment).values()
    if isinstance(member, type) and issubclass(member, Payment.Event)
]
PAGE = 1000  # events per transaction of the projector
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500  # a larger page_size is served as this many (AIP-158)
MAX_FILTER_LENGTH = 200
DEFAULT_INTERVAL = 0.5  # seconds between projector passes: how far behind the rows may be
KNOWN = 4096  # payments the projector keeps as it last projected them (a few kB each)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# The listing's columns, in order, and what each holds: the payment's id, text or an integer.
_KINDS = (
    ("payment_id", "id"), ("account", "text"), ("reference", "text"), ("status", "text"),
    ("provider", "text"), ("region", "text"), ("amount", "integer"), ("currency", "text"),
    ("created_us", "integer"), ("updated_us", "integer"), ("version", "integer"),
)  # fmt: skip
_COLUMNS = ", ".join(column for column, _ in _KINDS)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch, exactly (no float on the way)."""
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(value: int) -> datetime:
    return _EPOCH + value * _MICROSECOND


@dataclass(frozen=True)
class PaymentRow:
    payment_id: UUID
    account: str
    reference: str
    status: Status
    provider: str
    region: str
    amount: int
    currency: str
    created_at: datetime
    updated_at: datetime
    version: int


@dataclass(frozen=True)
class PaymentFilter:
    """What the caller looks for; empty fields match everything. ``created_from`` is
    inclusive, ``created_before`` exclusive."""

    reference: str = ""
    status: Status | None = None
    provider: str = ""
    region: str = ""
    created_from: datetime | None = None
    created_before: datetime | None = None

    def validated(self) -> PaymentFilter:
        for name in ("reference", "provider", "region"):
            if len(getattr(self, name)) > MAX_FILTER_LENGTH:
                raise InvalidArgument(
                    name,
                    f"{name} is longer than {MAX_FILTER_LENGTH} characters",
                    reason="INVALID_FILTER",
                )
        start, end = self.created_from, self.created_before
        if start is not None and end is not None and start >= end:
            raise InvalidArgument(
                "created_before",
                "created_before must be after created_after",
                reason="INVALID_CREATED_RANGE",
            )
        return self

    def digest(self, account: str) -> str:
        """Names this filter for this account: a page token carries it, so a token cannot be
        replayed with another filter or by another account."""
        parts = [
            account,
            self.reference,
            self.status.value if self.status is not None else "",
            self.provider,
            self.region,
            str(micros(self.created_from)) if self.created_from is not None else "",
            str(micros(self.created_before)) if self.created_before is not None else "",
        ]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ListingPage:
    rows: list[PaymentRow]
    next_page_token: str  # "" on the last page


def issue_page_token(after: PaymentRow, digest: str) -> str:
    """Opaque to callers: the last row's (created, id), the filter's digest, and a checksum
    over both, so that an edited token is refused rather than read."""
    body = f"{micros(after.created_at)}.{after.payment_id.hex}.{digest}"
    check = hashlib.sha256(body.encode()).hexdigest()[:16]
    return base64.urlsafe_b64encode(f"{body}.{check}".encode()).decode().rstrip("=")


def read_page_token(token: str, digest: str) -> tuple[int, UUID]:
    """The (created microseconds, payment id) after which the page starts."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        created, pid, token_digest, check = text.split(".")
        body = f"{created}.{pid}.{token_digest}"
        if not hmac.compare_digest(check, hashlib.sha256(body.encode()).hexdigest()[:16]):
            raise ValueError("checksum")
        position = (int(created), UUID(hex=pid))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidArgument(
            "page_token", "page_token is not a token this service issued",
            reason="INVALID_PAGE_TOKEN",
        ) from None  # fmt: skip
    if not hmac.compare_digest(token_digest, digest):
        raise InvalidArgument(
            "page_token",
            "page_token was issued for another filter: send the same filter, or no token",
            reason="INVALID_PAGE_TOKEN",
        )
    return position


def page_size_of(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument(
            "page_size", "page_size cannot be negative", reason="INVALID_PAGE_SIZE"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


class PaymentListing(TrackedTable):
    """The table and its position, on the application's own recorder (SQLite or PostgreSQL)."""

    tracking_name = TRACKING_NAME
    ddl_lock_key = 0x7061796C7374  # "paylst"

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder, "listing")
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in ("status", "provider", "updated_us", "version")
        )
        on_conflict = (
            f"ON CONFLICT (payment_id) DO UPDATE SET {updates} WHERE t.version < excluded.version"
        )
        postgres = {"id": "uuid", "text": "text", "integer": "bigint"}
        # Table names come from eventsourcing's settings, never from input (noqa S608).
        self.upsert = Bulk(
            f"INSERT INTO {self.name} AS t ({_COLUMNS}) SELECT * FROM unnest("  # noqa: S608
            f"{', '.join(f'%s::{postgres[kind]}[]' for _, kind in _KINDS)}) {on_conflict}",
            f"INSERT INTO {self.name} AS t ({_COLUMNS}) "  # noqa: S608
            f"VALUES ({', '.join('?' * len(_KINDS))}) {on_conflict}",
        )

    def ddl(self) -> list[str]:
        uuid, integer = self.id_and_integer_types
        types = {"id": uuid, "text": "text" if self.postgres else "TEXT", "integer": integer}
        (key, key_kind), *others = _KINDS
        columns = ", ".join(f"{column} {types[kind]} NOT NULL" for column, kind in others)
        statements = [
            f"CREATE TABLE IF NOT EXISTS {self.name} "
            f"({key} {types[key_kind]} PRIMARY KEY, {columns})"
        ]
        index = f'"{self.table}_by' if self.postgres else f"{self.table}_by"
        quote = '"' if self.postgres else ""
        # Newest first within an account; the status and reference filters have their own.
        for suffix, indexed in (
            ("created", "account, created_us DESC, payment_id DESC"),
            ("status", "account, status, created_us DESC, payment_id DESC"),
            ("reference", "account, reference, created_us DESC, payment_id DESC"),
        ):
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {index}_{suffix}{quote} ON {self.name} ({indexed})"
            )
        return statements

    def lag(self) -> int:
        """How many log positions the rows are behind the log's head (0: caught up)."""
        head: int = self.recorder.max_notification_id() or 0
        return max(head - self.position(), 0)

    def record(self, rows: Sequence[PaymentRow], reached: int | None) -> None:
        """The rows and the position they reach, in one transaction. Raises IntegrityError if
        the position is already at or past ``reached`` (another replica's pass). Without
        ``reached``, the rows alone (a rebuild behind the position)."""
        # One row per payment, its newest: a statement may change a row only once.
        newest = {row.payment_id: row for row in sorted(rows, key=lambda r: r.version)}
        values = [self._values(newest[pid]) for pid in sorted(newest)]
        self.commit(reached, lambda cursor: self.many(cursor, self.upsert, values))

    def clear(self) -> None:
        """Forgets every row and the position, together: the next pass rebuilds from the log."""
        self.create_table()
        # eventsourcing's SQLite recorder names its tracking table "tracking", always.
        tracking = getattr(self.recorder, "tracking_table_name", "tracking")
        if self.postgres:
            tracking = f'"{self.datastore.schema}"."{tracking}"'
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(f"DELETE FROM {self.name}")  # noqa: S608
            cursor.execute(
                f"DELETE FROM {tracking} WHERE application_name = {self.mark}",  # noqa: S608
                (TRACKING_NAME,),
            )

    def rows(self) -> list[PaymentRow]:
        """Every row, by payment id (for tests and the rebuild's check)."""
        sql = f"SELECT {_COLUMNS} FROM {self.name} ORDER BY payment_id"  # noqa: S608
        return [self._row(r) for r in self.fetch(sql)]

    def count(self, status: Status) -> int:
        """Payments of every account with ``status`` (the status index's range; metrics)."""
        sql = f"SELECT count(*) FROM {self.name} WHERE status = {self.mark}"  # noqa: S608
        return self.scalar(sql, (status.value,))

    def search(
        self, account: str, where: PaymentFilter, *, page_size: int = 0, page_token: str = ""
    ) -> ListingPage:
        """The account's payments that match, newest first (then by id), one page."""
        where = where.validated()
        size = page_size_of(page_size)
        digest = where.digest(account)
        conditions, params = ["account = {m}"], list[Any]([account])
        for column in ("reference", "provider", "region"):
            if value := getattr(where, column):
                conditions.append(f"{column} = {{m}}")
                params.append(value)
        if where.status is not None:
            conditions.append("status = {m}")
            params.append(where.status.value)
        if where.created_from is not None:
            conditions.append("created_us >= {m}")
            params.append(micros(where.created_from))
        if where.created_before is not None:
            conditions.append("created_us < {m}")
            params.append(micros(where.created_before))
        if page_token:
            created, pid = read_page_token(page_token, digest)
            conditions.append("(created_us, payment_id) < ({m}, {m})")
            params.extend([created, self.key(pid)])
        sql = (
            f"SELECT {_COLUMNS} FROM {self.name} WHERE "  # noqa: S608
            + " AND ".join(conditions).format(m=self.mark)
            + f" ORDER BY created_us DESC, payment_id DESC LIMIT {size + 1}"
        )
        found = [self._row(r) for r in self.fetch(sql, params)]
        more = len(found) > size
        found = found[:size]
        return ListingPage(found, issue_page_token(found[-1], digest) if more else "")

    def _values(self, row: PaymentRow) -> tuple[Any, ...]:
        return (
            self.key(row.payment_id), row.account, row.reference, row.status.value,
            row.provider, row.region, row.amount, row.currency, micros(row.created_at),
            micros(row.updated_at), row.version,
        )  # fmt: skip

    def _row(self, r: Any) -> PaymentRow:
        v = [r[k] for k in _COLUMNS.split(", ")] if isinstance(r, dict) else list(r)
        return PaymentRow(
            UUID(str(v[0])), v[1], v[2], Status(v[3]), v[4], v[5], int(v[6]), v[7],
            from_micros(int(v[8])), from_micros(int(v[9])), int(v[10]),
        )  # fmt: skip


def row_of(app: Payments, payment: Payment) -> PaymentRow:
    return PaymentRow(
        payment.id, app.owner(payment), payment.reference, payment.status, payment.provider,
        payment.region, payment.amount, payment.currency, payment.created_on,
        payment.modified_on, payment.version,
    )  # fmt: skip


class ListingProjector(BackgroundLoop):
    """Brings the listing up to the log's head, a page of events per transaction."""

    name = "listing"

    def __init__(self, app: Payments, *, interval: float = DEFAULT_INTERVAL) -> None:
        super().__init__(interval=interval)
        self.app = app
        self.listing = app.listing
        self.behind = 0  # log positions behind the head after the last pass
        # Each payment as the last page of it left it, by ``UUID.int``; moved on in place.
        self.known: BoundedMap[int, Payment] = BoundedMap(KNOWN)

    def run_once(self) -> int:
        """One pass up to the head read now; returns how many rows it wrote."""
        head = self.app.recorder.max_notification_id() or 0
        written = self.catch_up(head)
        self.behind = max((self.app.recorder.max_notification_id() or 0) - head, 0)
        return written

    def catch_up(self, head: int, *, rebuilding: bool = False) -> int:
        """Applies every payment event after the position up to ``head``; returns how many
        rows it wrote. ``rebuilding`` starts from the log's first event whatever the position
        says: a replica's pass begun before the rebuild cleared the table may commit its
        position after it, past rows it never wrote, and the rebuild must write those."""
        self.listing.create_table()
        position, written = 0 if rebuilding else self.listing.position(), 0
        while position < head and not self.stopping:
            page = self.app.recorder.select_notifications(
                start=position, limit=PAGE, stop=head, topics=TOPICS,
                inclusive_of_start=False,
            )  # fmt: skip
            reached = page[-1].id if len(page) == PAGE else head
            events: dict[UUID, list[Any]] = {}
            for n in page:  # in commit order, so each payment's versions ascend
                event = self.app.mapper.to_domain_event(n)
                events.setdefault(event.originator_id, []).append(event)
            rows = [row_of(self.app, payment) for payment in self._project(events)]
            try:
                self.listing.record(rows, reached)
                written += len(rows)
                position = reached
            except IntegrityError:
                if rebuilding:  # the position is past this stretch: its rows still count
                    self.listing.record(rows, None)
                    written += len(rows)
                    position = reached
                    continue
                # Another replica recorded this stretch (or more) meanwhile: its rows are ours.
                position = self.listing.position()
                if position < reached:
                    raise
        return written

    def _project(self, events: dict[UUID, list[Any]]) -> list[Payment]:
        """Each payment of the page after the page's events of it."""
        start: dict[UUID, Payment | None] = {}
        for pid, evs in events.items():
            first = evs[0].originator_version
            known = self.known.get(pid.int)
            if first == 1:
                start[pid] = None
            elif known is not None and known.version == first - 1:
                start[pid] = known
        before = self._before({pid: evs for pid, evs in events.items() if pid not in start})
        payments = []
        for pid, evs in events.items():
            payment = start[pid] if pid in start else self._replay(pid, None, before[pid])
            payment = self._replay(pid, payment, evs)
            self.known.put(pid.int, payment)
            payments.append(payment)
        return payments

    def _before(self, events: dict[UUID, list[Any]]) -> dict[UUID, list[Any]]:
        """Each payment's events before the page's first of it, read for them all in one
        query (not a read of each payment at its version: a round trip each)."""
        older = {pid: evs[0].originator_version for pid, evs in events.items()}
        recorder: Any = self.app.recorder
        stored = recorder.select_events_after(dict.fromkeys(older, 0)) if older else []
        before: dict[UUID, list[Any]] = {pid: [] for pid in older}
        for event in stored:
            if event.originator_version < older[event.originator_id]:
                before[event.originator_id].append(self.app.mapper.to_domain_event(event))
        return before

    @staticmethod
    def _replay(payment_id: UUID, payment: Any, events: list[Any]) -> Payment:
        """``payment`` (``None``: none yet) after ``events``, moved on in place."""
        for event in events:
            payment = event.mutate(payment)
        if not isinstance(payment, Payment):
            raise TypeError(f"{payment_id} is not a payment")
        return payment


def rebuild(app: Payments) -> int:
    """Forgets the listing and builds it again from the whole log; returns the rows written.
    Safe while servers run: their projectors start over too and write the same rows."""
    app.listing.clear()
    projector = ListingProjector(app)
    return projector.catch_up(app.recorder.max_notification_id() or 0, rebuilding=True)
