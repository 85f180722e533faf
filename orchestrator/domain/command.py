"""Commands as aggregates: the idempotency key is the command's identity.

A ``Command`` is created with a deterministic id derived from the caller's scope and key, in
the same transaction as the first events it causes. The event store's unique
(originator_id, originator_version) then lets exactly one execution of a command exist across
every thread, process and replica; a duplicate's save fails and it reads the winner instead.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate, event

_COMMANDS = UUID("0b6f3f55-64c1-4c1e-9f5c-2f1c8a0f4a10")
_PAYMENTS = UUID("5c1e4d3a-8f0b-4e8e-a2c7-93d6f1b0e7a2")

DEFAULT_SCOPE = "default"


def command_id(scope: str, idempotency_key: str) -> UUID:
    # The unit separator cannot appear in a key (printable ASCII only), so no two
    # (scope, key) pairs share an id.
    return uuid5(_COMMANDS, f"{scope}\x1f{idempotency_key}")


def payment_id_for(command: UUID) -> UUID:
    """The id of the payment a CreatePayment command creates: fixed by the command, so
    concurrent duplicates collide on the payment as well as on the command."""
    return uuid5(_PAYMENTS, str(command))


def fingerprint(name: str, parameters: dict[str, Any]) -> str:
    """A digest of what was asked, to refuse a key reused with other parameters."""
    canonical = json.dumps([name, parameters], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Command(Aggregate):
    """One client command, its owner's lease, and where its result is recorded."""

    class Accepted(Aggregate.Created):
        scope: str
        idempotency_key: str
        name: str
        fingerprint: str
        payment_id: UUID
        owner: str
        lease_until: datetime

    class Completed(Aggregate.Event):
        payment_version: int
        in_doubt: bool

    class OutcomeLearned(Aggregate.Event):
        """The outcome that was in doubt when the command answered became known (recovery or
        a webhook): from now on the command's result is the payment as of then."""

        payment_version: int

    class LeaseExtended(Aggregate.Event):
        """The owner moved on to another provider: its answer will take longer."""

        lease_until: datetime

    @event(Accepted)
    def __init__(
        self,
        *,
        id: UUID,  # the caller derives it: see command_id() and payment_id_for()
        scope: str,
        idempotency_key: str,
        name: str,
        fingerprint: str,
        payment_id: UUID,
        owner: str,
        lease_until: datetime,
    ) -> None:
        self.scope = scope
        self.idempotency_key = idempotency_key
        self.name = name
        self.fingerprint = fingerprint
        self.payment_id = payment_id
        self.owner = owner
        self.lease_until = lease_until
        self.payment_version: int | None = None
        self.in_doubt = False

    @property
    def completed(self) -> bool:
        return self.payment_version is not None

    def complete(self, *, payment_version: int, in_doubt: bool) -> None:
        """The command's result is the payment as of ``payment_version``; ``in_doubt`` when
        its provider outcome is not known yet, so a replay shows the payment as it is now."""
        if not self.completed:
            self._completed(payment_version=payment_version, in_doubt=in_doubt)

    def learn_outcome(self, *, payment_version: int) -> bool:
        """Fixes the result of a command that answered "in doubt" at the version where its
        outcome became known, so every later replay answers the same, whatever happens to
        the payment afterwards. Returns whether anything changed."""
        if not (self.completed and self.in_doubt):
            return False
        self._outcome_learned(payment_version=payment_version)
        return True

    def extend_lease(self, until: datetime) -> None:
        if until > self.lease_until:
            self._lease_extended(lease_until=until)

    @event(LeaseExtended)
    def _lease_extended(self, *, lease_until: datetime) -> None:
        self.lease_until = lease_until

    @event(Completed)
    def _completed(self, *, payment_version: int, in_doubt: bool) -> None:
        self.payment_version = payment_version
        self.in_doubt = in_doubt

    @event(OutcomeLearned)
    def _outcome_learned(self, *, payment_version: int) -> None:
        self.payment_version = payment_version
        self.in_doubt = False
