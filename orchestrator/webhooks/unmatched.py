"""Which webhook deliveries are still unmatched: a small table next to the event log, so that
the consumer's re-match and the operator's listing read the open ones and nothing else.

The table (``<events table>_unmatched``) holds one row per delivery whose last event is
``WebhookDelivery.Unmatched``, with that event's place in the log (oldest first). It follows the
log from its own tracked position (``Tracking("unmatched-index", ...)``, kept as
``orchestrator.tracked`` keeps every such table): a page's ``Unmatched`` events add rows, its
``Applied`` events remove them (a delivery applied once its payment became known: re-matched),
and the rows and the position that page reaches commit in one transaction. Within a page the
delivery's last event decides, and the domain records ``Applied`` at most once and never an
``Unmatched`` after it, so a row once removed never comes back.

Every delivery records an ``Applied`` (or ``Unmatched``), so following these topics reads one
event per delivery stored since the last pass: proportional to the webhooks received, never to
the log. A first start on a log written before this table reads the log once by these topics,
and no delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.utils import get_topic

from orchestrator.domain.webhook import WebhookDelivery
from orchestrator.tracked import Bulk, TrackedTable

TRACKING_NAME = "unmatched-index"
_OPEN = get_topic(WebhookDelivery.Unmatched)
TOPICS = sorted({_OPEN, get_topic(WebhookDelivery.Applied)})


class UnmatchedIndex(TrackedTable):
    """The table and its position, on the application's own recorder (SQLite or PostgreSQL)."""

    tracking_name = TRACKING_NAME
    ddl_lock_key = 0x706179756E6D  # "payunm"

    def __init__(self, recorder: Any) -> None:
        super().__init__(recorder, "unmatched")
        name = self.name
        # Table names come from eventsourcing's settings, never from input (noqa S608).
        self.insert = Bulk(
            f"INSERT INTO {name} SELECT * FROM unnest(%s::uuid[], %s::bigint[]) "  # noqa: S608
            "ON CONFLICT (delivery_id) DO NOTHING",
            f"INSERT INTO {name} VALUES (?, ?) ON CONFLICT (delivery_id) DO NOTHING",  # noqa: S608
        )
        self.delete = Bulk(
            f"DELETE FROM {name} WHERE delivery_id = ANY(%s::uuid[])",  # noqa: S608
            f"DELETE FROM {name} WHERE delivery_id = ?",  # noqa: S608
        )

    def ddl(self) -> list[str]:
        uuid, integer = self.id_and_integer_types
        return [
            f"CREATE TABLE IF NOT EXISTS {self.name} "
            f"(delivery_id {uuid} PRIMARY KEY, notification_id {integer} NOT NULL)"
        ]

    def catch_up(self, head: int, *, stopping: Callable[[], bool] = lambda: False) -> int:
        """Follows the deliveries' ``Unmatched`` and ``Applied`` events up to ``head`` (the log's
        largest id, read by the caller); returns the position reached, at or past ``head``
        unless ``stopping`` (a first start on a long log reads it once, page by page)."""
        return self.follow(head, TOPICS, self._write, stopping=stopping)

    def _write(self, cursor: Any, page: Sequence[Any]) -> None:
        last: dict[Any, tuple[str, int]] = {}  # delivery -> (its last topic, where)
        for n in page:  # in commit order
            last[self.key(n.originator_id)] = (n.topic, n.id)
        opened = [(key, place) for key, (topic, place) in last.items() if topic == _OPEN]
        applied = [(key,) for key, (topic, _) in last.items() if topic != _OPEN]
        self.many(cursor, self.insert, opened)
        self.many(cursor, self.delete, applied)

    def delivery_ids(self) -> list[UUID]:
        """The deliveries still unmatched as far as the position, oldest first."""
        sql = f"SELECT delivery_id FROM {self.name} ORDER BY notification_id"  # noqa: S608
        return self.uuids(sql, "delivery_id")

    def count(self) -> int:
        """The rows: deliveries unmatched as far as the position (metrics)."""
        return self.scalar(f"SELECT count(*) FROM {self.name}")  # noqa: S608
