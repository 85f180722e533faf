"""One payment event as an audit record. The gRPC API, the export and ``audit show`` all
encode events here, so an auditor comparing them sees the same fields spelled the same way."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol

from orchestrator.domain.command import DEFAULT_SCOPE

# Said by the record's own columns (payment id, version, time, type), so not repeated in data.
ENVELOPE = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})
FIELDS = ("position", "payment_id", "version", "type", "time", "data")


def event_fields(event: DomainEventProtocol[UUID]) -> dict[str, Any]:
    """The event's own fields, typed as the domain typed them."""
    return {k: v for k, v in vars(event).items() if k not in ENVELOPE}


def event_data(event: DomainEventProtocol[UUID]) -> str:
    """The event's own fields as a JSON object, ids and times as strings. Keys are sorted so
    that one event always encodes to the same text (exports can be diffed and hashed)."""
    return json.dumps(event_json_fields(event), sort_keys=True)


def event_json_fields(event: DomainEventProtocol[UUID]) -> dict[str, Any]:
    """The event's own fields as JSON values (ids and times as strings), without a round trip
    through JSON text: an export converts every event of the log."""
    return {k: _jsonable(v) for k, v in event_fields(event).items()}


def event_timestamp(event: DomainEventProtocol[UUID]) -> datetime:
    """When the event happened. eventsourcing's protocol leaves the timestamp out, but every
    aggregate event carries one as a field."""
    stamp: datetime = vars(event)["timestamp"]
    return stamp


def event_time(event: DomainEventProtocol[UUID]) -> str:
    """ISO 8601 in UTC, whatever zone the store was configured to stamp events in."""
    return event_timestamp(event).astimezone(UTC).isoformat()


def describe_cause(caused_by: Any) -> str:
    """An event's cause in one word for a terminal: ``cmd:<key>`` (``cmd:<scope>/<key>``
    outside the default scope), ``webhook:<provider>/<event id>``, ``operator:<name>`` or
    ``recovery``."""
    if not isinstance(caused_by, dict):
        return "-"  # an event recorded before events named their cause
    kind = caused_by.get("kind")
    if kind == "command":
        scope, key = caused_by.get("scope"), caused_by.get("idempotency_key")
        return f"cmd:{key}" if scope == DEFAULT_SCOPE else f"cmd:{scope}/{key}"
    if kind == "provider_event":
        return f"webhook:{caused_by.get('provider')}/{caused_by.get('event_id')}"
    if kind == "operator":
        return f"operator:{caused_by.get('operator')}"
    return str(kind)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int):  # bool is an int; no floats near money
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__}")


@dataclass(frozen=True)
class AuditRecord:
    """One line of an export: where the event sits in the log, and what it says."""

    position: int
    payment_id: str
    version: int
    type: str
    time: str  # ISO 8601, UTC
    data: dict[str, Any]  # JSON values: ids and times are strings

    @classmethod
    def from_event(cls, position: int, event: DomainEventProtocol[UUID]) -> AuditRecord:
        return cls(
            position=position,
            payment_id=str(event.originator_id),
            version=event.originator_version,
            type=type(event).__name__,
            time=event_time(event),
            data=event_json_fields(event),
        )

    def as_json_object(self) -> dict[str, Any]:
        # Not dataclasses.asdict: that deep-copies data, and takes half an export's time.
        return {
            "position": self.position,
            "payment_id": self.payment_id,
            "version": self.version,
            "type": self.type,
            "time": self.time,
            "data": self.data,
        }
