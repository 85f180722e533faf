"""The payment aggregate: every change of a payment is an immutable, typed event.

A payment moves money only through provider *operations* (authorize, capture, cancel,
refund). Each operation is recorded as intent (``OperationStarted``, with the provider
idempotency key it will send) before the provider is called, and its outcome after. While an
operation's outcome is not known the payment is ``PROCESSING`` and accepts no other operation.

Event-applying bodies only assign: clocks, keys and provider answers are produced by the caller
before an event is triggered, so replaying the events always rebuilds the same payment.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from orchestrator.domain.errors import OperationInProgress, TransitionNotAllowed


class Status(enum.StrEnum):
    PROCESSING = "processing"
    AUTHORIZED = "authorized"
    CAPTURED = "captured"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    CANCELED = "canceled"
    DECLINED = "declined"
    FAILED = "failed"
    REQUIRES_REVIEW = "requires_review"  # an outcome nobody could learn: a person decides
    DISPUTED = "disputed"  # the cardholder disputes it; the outcome is the card network's
    CHARGED_BACK = "charged_back"  # a dispute was lost: the disputed money went back


TERMINAL = frozenset(
    {Status.DECLINED, Status.FAILED, Status.CANCELED, Status.REFUNDED, Status.CHARGED_BACK}
)


class Kind(enum.StrEnum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    CANCEL = "cancel"
    REFUND = "refund"


class OpStatus(enum.StrEnum):
    PENDING = "pending"  # intent recorded, call under way
    UNKNOWN = "unknown"  # the call ended and we could not learn its outcome
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"


IN_DOUBT = frozenset({OpStatus.PENDING, OpStatus.UNKNOWN})


class CaptureMode(enum.StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


@dataclass(frozen=True)
class Cause:
    """The command on whose behalf something happens: the caller's scope and its key."""

    scope: str
    idempotency_key: str

    def as_data(self) -> dict[str, str]:
        return {"kind": "command", "scope": self.scope, "idempotency_key": self.idempotency_key}


@dataclass(frozen=True)
class ProviderEventCause:
    """A provider's webhook event (its provider and its own id) that told us something."""

    provider: str
    event_id: str

    def as_data(self) -> dict[str, str]:
        return {"kind": "provider_event", "provider": self.provider, "event_id": self.event_id}


@dataclass(frozen=True)
class RecoveryCause:
    """The recovery worker asking the provider about an operation whose outcome was unknown."""

    def as_data(self) -> dict[str, str]:
        return {"kind": "recovery"}


@dataclass(frozen=True)
class OperatorCause:
    """A person who read the provider's dashboard, and the command (scope, key) they sent."""

    operator: str
    scope: str
    idempotency_key: str

    def as_data(self) -> dict[str, str]:
        return {
            "kind": "operator",
            "operator": self.operator,
            "scope": self.scope,
            "idempotency_key": self.idempotency_key,
        }


# Why an event happened. Every payment event records it as ``caused_by`` (a JSON object whose
# ``kind`` is command, provider_event, recovery or operator), so finance can tell who asked.
Origin = Cause | ProviderEventCause | RecoveryCause | OperatorCause


class Resolution(enum.StrEnum):
    """What an operator saw on the provider's dashboard for an operation in review."""

    AUTHORIZED = "authorized"  # the charge exists, authorized and not captured
    CAPTURED = "captured"  # the charge exists and was captured
    DECLINED = "declined"  # the provider declined it
    NOT_FOUND = "not_found"  # the provider has no such charge (or refund): no money moved
    CANCELED = "canceled"  # the authorization was canceled (voided), nothing captured
    REFUNDED = "refunded"  # the refund exists and succeeded


def _resolved_status(kind: Kind, outcome: Resolution) -> OpStatus | None:
    """What ``outcome`` means for an operation of ``kind``: it succeeded, was declined, or
    certainly moved nothing (failed). ``None`` when the outcome cannot describe the result of
    such an operation (a refund says nothing of an authorization, say)."""
    if outcome is Resolution.DECLINED:
        return OpStatus.DECLINED
    if outcome is Resolution.NOT_FOUND:
        return OpStatus.FAILED
    # The charge exists, authorized or captured: what that says of each kind of operation.
    table = {
        (Kind.AUTHORIZE, Resolution.AUTHORIZED): OpStatus.SUCCEEDED,
        (Kind.AUTHORIZE, Resolution.CAPTURED): OpStatus.SUCCEEDED,
        (Kind.CAPTURE, Resolution.CAPTURED): OpStatus.SUCCEEDED,
        (Kind.CAPTURE, Resolution.AUTHORIZED): OpStatus.FAILED,  # not captured
        (Kind.CAPTURE, Resolution.CANCELED): OpStatus.FAILED,  # voided, never captured
        (Kind.CANCEL, Resolution.CANCELED): OpStatus.SUCCEEDED,
        (Kind.CANCEL, Resolution.AUTHORIZED): OpStatus.FAILED,  # still authorized
        (Kind.REFUND, Resolution.REFUNDED): OpStatus.SUCCEEDED,
        (Kind.REFUND, Resolution.CAPTURED): OpStatus.FAILED,  # still captured
    }
    return table.get((kind, outcome))


@dataclass(frozen=True)
class Operation:
    """One provider call of the payment, as recorded."""

    sequence: int
    kind: Kind
    amount: int
    provider: str
    provider_key: str
    attempt: int
    deadline: datetime  # after this the caller no longer waits for the call's answer
    status: OpStatus = OpStatus.PENDING
    reason: str = ""
    provider_reference: str = ""
    decline_code: str = ""
    failure_message: str = ""
    scope: str = ""  # the command that started it: scope and idempotency key
    idempotency_key: str = ""
    lookups: int = 0  # lookups that found nothing so far
    last_checked: datetime | None = None
    review_required: bool = False

    def __deepcopy__(self, memo: dict[int, Any]) -> Operation:
        # Frozen, and every field immutable: a copy of a payment (the aggregate cache hands
        # out deep copies) may share its operations. Copying each one made reading a payment
        # of hundreds of operations cost 30 times more than the rest of the read.
        return self


def provider_key(payment_id: UUID, sequence: int, kind: Kind, attempt: int) -> str:
    """The idempotency key sent to the provider for one attempt of one operation.

    Derived, never random: every retry of the attempt (after a timeout, a crash, a restart)
    computes the same key, so a provider that honours keys cannot move money twice.
    At most 64 characters, the strictest provider limit (Adyen)."""
    return f"{payment_id}:{sequence}:{kind.value}:{attempt}"


class Payment(Aggregate):
    """A payment and its operations. Amounts are integers in minor units of ``currency``."""

    class Requested(Aggregate.Created):
        amount: int
        currency: str
        payment_method: str
        region: str
        capture_mode: str
        reference: str
        metadata: dict[str, str]
        scope: str
        idempotency_key: str
        caused_by: dict[str, str]
        account: str  # since version 2; "" names no account: see Payment.account

        class_version = 2

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            # Stored before payments belonged to accounts: the application's default
            # account owns it, whichever that is configured to be.
            state["account"] = ""

    class OperationStarted(Aggregate.Event):
        sequence: int
        kind: str
        amount: int
        provider: str
        provider_key: str
        attempt: int
        deadline: datetime
        scope: str
        idempotency_key: str
        reason: str
        caused_by: dict[str, str]

    class Authorized(Aggregate.Event):
        sequence: int
        provider_reference: str
        captured_amount: int
        caused_by: dict[str, str]

    class Captured(Aggregate.Event):
        sequence: int
        amount: int
        provider_reference: str
        caused_by: dict[str, str]

    class Canceled(Aggregate.Event):
        sequence: int
        provider_reference: str
        caused_by: dict[str, str]

    class Refunded(Aggregate.Event):
        sequence: int
        amount: int
        provider_reference: str
        caused_by: dict[str, str]

    class OperationDeclined(Aggregate.Event):
        sequence: int
        decline_code: str
        message: str
        caused_by: dict[str, str]

    class OperationFailed(Aggregate.Event):
        sequence: int
        message: str
        caused_by: dict[str, str]

    class OutcomeUnknown(Aggregate.Event):
        sequence: int
        message: str
        caused_by: dict[str, str]

    class FailedOver(Aggregate.Event):
        """The attempt certainly moved nothing; a new attempt goes to the next provider."""

        sequence: int
        attempt: int
        provider: str
        provider_key: str
        deadline: datetime
        message: str
        caused_by: dict[str, str]

    class StillUnknown(Aggregate.Event):
        """A lookup at the provider found nothing yet."""

        sequence: int
        checked_at: datetime
        message: str
        caused_by: dict[str, str]

    class CaptureReversed(Aggregate.Event):
        """A capture the provider first accepted failed later (asynchronous providers)."""

        sequence: int
        amount: int
        message: str
        caused_by: dict[str, str]

    class RefundReversed(Aggregate.Event):
        """A refund the provider first accepted failed later: the money stayed captured."""

        sequence: int
        amount: int
        message: str
        caused_by: dict[str, str]

    class DisputeOpened(Aggregate.Event):
        dispute_reference: str
        amount: int
        reason: str
        caused_by: dict[str, str]

    class DisputeClosed(Aggregate.Event):
        dispute_reference: str
        won: bool
        amount: int
        caused_by: dict[str, str]

    class ProviderEventReceived(Aggregate.Event):
        """A provider's webhook about this payment, and what it changed (maybe nothing)."""

        provider: str
        event_id: str
        kind: str
        effect: str
        caused_by: dict[str, str]

    class ReviewRequired(Aggregate.Event):
        """The schedule of lookups ran out: flagged for a person, never failed by guessing."""

        sequence: int
        message: str
        caused_by: dict[str, str]

    class ResolvedByOperator(Aggregate.Event):
        """An operator settled an operation in review with what the provider's dashboard
        shows; it settles the operation as the provider's answer would have."""

        sequence: int
        outcome: str  # a Resolution
        status: str  # the operation's OpStatus it implies
        provider_reference: str
        captured_amount: int  # what an authorization captured
        note: str
        caused_by: dict[str, str]

    @event(Requested)
    def __init__(
        self,
        *,
        id: UUID,  # the caller derives it: see command_id() and payment_id_for()
        amount: int,
        currency: str,
        payment_method: str,
        region: str,
        capture_mode: str,
        reference: str,
        metadata: dict[str, str],
        scope: str,
        idempotency_key: str,
        caused_by: dict[str, str],  # Cause(scope, idempotency_key).as_data()
        account: str,
    ) -> None:
        # The account whose callers may see and change it. "" (payments created before
        # accounts existed) is the application's configured default account.
        self.account = account
        self.amount = amount
        self.currency = currency
        self.payment_method = payment_method
        self.region = region
        self.capture_mode = CaptureMode(capture_mode)
        self.reference = reference
        self.metadata = dict(metadata)
        self.provider = ""
        self.provider_reference = ""
        self.authorized = False
        self.closed_as: Status | None = None  # DECLINED, FAILED or CANCELED once final
        self.captured_amount = 0
        self.refunded_amount = 0
        self.decline_code = ""
        self.failure_message = ""
        self.operations: list[Operation] = []
        self.disputes: dict[str, int] = {}  # open disputes: reference -> amount
        self.closed_disputes: dict[str, tuple[bool, int]] = {}  # reference -> (won, amount)
        self.charged_back_amount = 0
        self.provider_events = 0

    # --- what the payment is now -------------------------------------------------------

    @property
    def status(self) -> Status:
        in_doubt = self.operation_in_doubt
        if in_doubt is not None:
            return Status.REQUIRES_REVIEW if in_doubt.review_required else Status.PROCESSING
        if self.closed_as is not None:
            return self.closed_as
        return self._money_status()

    def _money_status(self) -> Status:
        if self.disputes:
            return Status.DISPUTED
        if self.charged_back_amount:
            return Status.CHARGED_BACK
        if not self.authorized:
            return Status.PROCESSING
        if self.refunded_amount:
            full = self.refunded_amount == self.captured_amount
            return Status.REFUNDED if full else Status.PARTIALLY_REFUNDED
        return Status.CAPTURED if self.captured_amount else Status.AUTHORIZED

    @property
    def operation_in_doubt(self) -> Operation | None:
        """The operation whose outcome is not known, if any (there is at most one)."""
        last = self.operations[-1] if self.operations else None
        return last if last is not None and last.status in IN_DOUBT else None

    @property
    def capturable_amount(self) -> int:
        return self.amount - self.captured_amount

    @property
    def refundable_amount(self) -> int:
        return self.captured_amount - self.refunded_amount

    def operation(self, sequence: int) -> Operation:
        return self.operations[sequence - 1]

    # --- commands: check the state, then record intent ---------------------------------

    def start_authorization(self, *, provider: str, deadline: datetime, cause: Cause) -> Operation:
        if self.operations:
            raise TransitionNotAllowed("the payment's authorization was already started")
        return self._start(
            Kind.AUTHORIZE, self.amount, provider=provider, deadline=deadline, cause=cause
        )

    def start_capture(self, amount: int | None, *, deadline: datetime, cause: Cause) -> Operation:
        self._check_no_operation_in_doubt()
        status = self.status
        if status not in (Status.AUTHORIZED, Status.CAPTURED):
            raise TransitionNotAllowed(
                f"a {status.value} payment cannot be captured", metadata={"status": status.value}
            )
        amount = self.capturable_amount if amount is None else amount
        if amount <= 0 or amount > self.capturable_amount:
            raise TransitionNotAllowed(
                f"capture of {amount} exceeds the capturable amount {self.capturable_amount}",
                reason="AMOUNT_EXCEEDS_CAPTURABLE",
                metadata={"capturableAmount": str(self.capturable_amount)},
            )
        return self._start(
            Kind.CAPTURE, amount, provider=self.provider, deadline=deadline, cause=cause
        )

    def start_cancel(self, *, deadline: datetime, cause: Cause) -> Operation:
        self._check_no_operation_in_doubt()
        status = self.status
        if status is not Status.AUTHORIZED:
            raise TransitionNotAllowed(
                f"a {status.value} payment cannot be canceled: only an authorization of which "
                "nothing was captured can be voided",
                metadata={"status": status.value},
            )
        return self._start(
            Kind.CANCEL, self.amount, provider=self.provider, deadline=deadline, cause=cause
        )

    def start_refund(
        self, amount: int | None, *, reason: str, deadline: datetime, cause: Cause
    ) -> Operation:
        self._check_no_operation_in_doubt()
        status = self.status
        if status not in (Status.CAPTURED, Status.PARTIALLY_REFUNDED):
            raise TransitionNotAllowed(
                f"a {status.value} payment cannot be refunded", metadata={"status": status.value}
            )
        amount = self.refundable_amount if amount is None else amount
        if amount <= 0 or amount > self.refundable_amount:
            raise TransitionNotAllowed(
                f"refund of {amount} exceeds the refundable amount {self.refundable_amount}",
                reason="AMOUNT_EXCEEDS_REFUNDABLE",
                metadata={"refundableAmount": str(self.refundable_amount)},
            )
        return self._start(
            Kind.REFUND,
            amount,
            provider=self.provider,
            deadline=deadline,
            cause=cause,
            reason=reason,
        )

    def _check_no_operation_in_doubt(self) -> None:
        if self.operation_in_doubt is not None:
            raise OperationInProgress(str(self.id), retry_after=1.0)

    def _start(
        self,
        kind: Kind,
        amount: int,
        *,
        provider: str,
        deadline: datetime,
        cause: Cause,
        reason: str = "",
    ) -> Operation:
        sequence = len(self.operations) + 1
        self._operation_started(
            sequence=sequence,
            kind=kind.value,
            amount=amount,
            provider=provider,
            provider_key=provider_key(self.id, sequence, kind, 1),
            attempt=1,
            deadline=deadline,
            scope=cause.scope,
            idempotency_key=cause.idempotency_key,
            reason=reason,
            caused_by=cause.as_data(),
        )
        return self.operations[-1]

    @event(OperationStarted)
    def _operation_started(
        self,
        *,
        sequence: int,
        kind: str,
        amount: int,
        provider: str,
        provider_key: str,
        attempt: int,
        deadline: datetime,
        scope: str,
        idempotency_key: str,
        reason: str,
        caused_by: dict[str, str],
    ) -> None:
        self.operations.append(
            Operation(
                sequence=sequence,
                kind=Kind(kind),
                amount=amount,
                provider=provider,
                provider_key=provider_key,
                attempt=attempt,
                deadline=deadline,
                reason=reason,
                scope=scope,
                idempotency_key=idempotency_key,
            )
        )
        self.provider = provider
        self.failure_message = ""

    # --- outcomes: what the provider said ----------------------------------------------

    def record_success(
        self, sequence: int, *, provider_reference: str, amount: int, caused_by: Origin
    ) -> None:
        """The provider confirmed the operation. ``amount`` is what it captured (authorize)
        or what it moved (capture, refund)."""
        op = self._in_doubt(sequence)
        if op.kind is Kind.AUTHORIZE:
            captured = amount if self.capture_mode is CaptureMode.AUTOMATIC else 0
            self._authorized(
                sequence=sequence,
                provider_reference=provider_reference,
                captured_amount=captured,
                caused_by=caused_by.as_data(),
            )
        elif op.kind is Kind.CAPTURE:
            self._captured(
                sequence=sequence,
                amount=op.amount,
                provider_reference=provider_reference,
                caused_by=caused_by.as_data(),
            )
        elif op.kind is Kind.CANCEL:
            self._canceled(
                sequence=sequence,
                provider_reference=provider_reference,
                caused_by=caused_by.as_data(),
            )
        else:
            self._refunded(
                sequence=sequence,
                amount=op.amount,
                provider_reference=provider_reference,
                caused_by=caused_by.as_data(),
            )

    def record_decline(
        self, sequence: int, *, decline_code: str, message: str, caused_by: Origin
    ) -> None:
        self._in_doubt(sequence)
        self._operation_declined(
            sequence=sequence,
            decline_code=decline_code,
            message=message,
            caused_by=caused_by.as_data(),
        )

    def record_failure(self, sequence: int, *, message: str, caused_by: Origin) -> None:
        """The provider certainly did not move money for this operation, and will not."""
        self._in_doubt(sequence)
        self._operation_failed(sequence=sequence, message=message, caused_by=caused_by.as_data())

    def record_unknown(self, sequence: int, *, message: str, caused_by: Origin) -> None:
        """The call ended without an outcome we can know; it stays in doubt until resolved."""
        op = self._in_doubt(sequence)
        if op.status is OpStatus.PENDING:
            self._outcome_unknown(sequence=sequence, message=message, caused_by=caused_by.as_data())

    def fail_over(
        self, sequence: int, *, provider: str, deadline: datetime, message: str, caused_by: Origin
    ) -> Operation:
        """Moves an authorization whose attempt certainly did not charge to another provider.
        Never while its outcome is in doubt: only a pending attempt the caller knows was not
        processed may move, and only an authorization (follow-ups stay with their provider)."""
        op = self._in_doubt(sequence)
        if op.kind is not Kind.AUTHORIZE or op.status is not OpStatus.PENDING:
            raise TransitionNotAllowed(
                f"operation {sequence} cannot move to another provider",
                reason="FAILOVER_NOT_ALLOWED",
            )
        attempt = op.attempt + 1
        self._failed_over(
            sequence=sequence,
            attempt=attempt,
            provider=provider,
            provider_key=provider_key(self.id, sequence, op.kind, attempt),
            deadline=deadline,
            message=message,
            caused_by=caused_by.as_data(),
        )
        return self.operation(sequence)

    def record_still_unknown(
        self, sequence: int, *, checked_at: datetime, message: str, caused_by: Origin
    ) -> None:
        self._in_doubt(sequence)
        self._still_unknown(
            sequence=sequence, checked_at=checked_at, message=message, caused_by=caused_by.as_data()
        )

    def require_review(self, sequence: int, *, message: str, caused_by: Origin) -> None:
        if not self._in_doubt(sequence).review_required:
            self._review_required(sequence=sequence, message=message, caused_by=caused_by.as_data())

    def resolve_by_operator(
        self,
        outcome: Resolution,
        *,
        note: str,
        caused_by: OperatorCause,
        sequence: int | None = None,
        provider_reference: str = "",
    ) -> Operation:
        """Settles the operation in review (``sequence``: the one in doubt) with what the
        provider's dashboard shows. Only an operation that is in doubt and flagged for review:
        an operation with a definite outcome is never contradicted, and one whose schedule has
        not run out is still the recovery worker's."""
        in_doubt = self.operation_in_doubt
        if sequence is None:
            if in_doubt is None:
                raise TransitionNotAllowed(
                    f"the payment ({self.status.value}) has no operation in doubt",
                    reason="NOTHING_TO_RESOLVE",
                    metadata={"status": self.status.value},
                )
            sequence = in_doubt.sequence
        if not 0 < sequence <= len(self.operations):
            raise TransitionNotAllowed(
                f"the payment has no operation {sequence}", reason="NOTHING_TO_RESOLVE"
            )
        op = self.operation(sequence)
        if op.status not in IN_DOUBT:
            raise TransitionNotAllowed(
                f"operation {sequence} already ended as {op.status.value}: "
                "a definite outcome is never overruled",
                reason="OUTCOME_ALREADY_KNOWN",
                metadata={"operationStatus": op.status.value, "sequence": str(sequence)},
            )
        if not op.review_required:
            raise TransitionNotAllowed(
                f"operation {sequence} is still being resolved by asking the provider",
                reason="NOT_IN_REVIEW",
                metadata={"sequence": str(sequence)},
            )
        status = _resolved_status(op.kind, outcome)
        if status is None:
            raise TransitionNotAllowed(
                f"{outcome.value} is no outcome of a {op.kind.value}",
                reason="OUTCOME_NOT_APPLICABLE",
                metadata={"kind": op.kind.value, "outcome": outcome.value},
            )
        captured = 0
        if op.kind is Kind.AUTHORIZE and outcome is Resolution.CAPTURED:
            captured = op.amount
        self._resolved_by_operator(
            sequence=sequence,
            outcome=outcome.value,
            status=status.value,
            provider_reference=provider_reference,
            captured_amount=captured,
            note=note,
            caused_by=caused_by.as_data(),
        )
        return self.operation(sequence)

    def operation_by_key(self, provider_key: str) -> Operation | None:
        return next((op for op in self.operations if op.provider_key == provider_key), None)

    def reverse(self, sequence: int, *, message: str, caused_by: Origin) -> bool:
        """A capture or refund recorded as succeeded failed at the provider afterwards.
        Returns whether anything changed (a reversal is recorded once)."""
        op = self.operation(sequence)
        if op.status is not OpStatus.SUCCEEDED:
            return False
        if op.kind is Kind.CAPTURE and op.amount <= self.captured_amount - self.refunded_amount:
            self._capture_reversed(
                sequence=sequence, amount=op.amount, message=message, caused_by=caused_by.as_data()
            )
            return True
        if op.kind is Kind.REFUND and op.amount <= self.refunded_amount:
            self._refund_reversed(
                sequence=sequence, amount=op.amount, message=message, caused_by=caused_by.as_data()
            )
            return True
        return False

    def open_dispute(self, reference: str, *, amount: int, reason: str, caused_by: Origin) -> bool:
        """Returns whether it changed anything: a dispute opens once, and never after it
        closed (providers deliver out of order)."""
        if reference in self.disputes or reference in self.closed_disputes:
            return False
        if not self.captured_amount:
            return False
        self._dispute_opened(
            dispute_reference=reference,
            amount=min(amount, self.captured_amount),
            reason=reason,
            caused_by=caused_by.as_data(),
        )
        return True

    def close_dispute(self, reference: str, *, won: bool, amount: int, caused_by: Origin) -> bool:
        """Closes a dispute, even one whose opening has not arrived yet (``amount`` is then
        the provider's figure for it)."""
        closed = self.closed_disputes.get(reference)
        if closed is not None and closed[0] is won:
            return False  # the same outcome again
        if closed is not None:
            amount = closed[1]  # decided again (a second chargeback, a reversal)
        else:
            amount = self.disputes.get(reference, min(amount, self.captured_amount))
        self._dispute_closed(
            dispute_reference=reference, won=won, amount=amount, caused_by=caused_by.as_data()
        )
        return True

    def provider_event_received(
        self, *, provider: str, event_id: str, kind: str, effect: str, caused_by: Origin
    ) -> None:
        self._provider_event_received(
            provider=provider,
            event_id=event_id,
            kind=kind,
            effect=effect,
            caused_by=caused_by.as_data(),
        )

    def _in_doubt(self, sequence: int) -> Operation:
        if not 0 < sequence <= len(self.operations):
            raise TransitionNotAllowed(f"the payment has no operation {sequence}")
        op = self.operation(sequence)
        if op.status not in IN_DOUBT:
            raise TransitionNotAllowed(
                f"operation {sequence} already ended as {op.status.value}",
                reason="OPERATION_ALREADY_RESOLVED",
            )
        return op

    def _settle(self, sequence: int, **changes: Any) -> None:
        self.operations[sequence - 1] = replace(self.operations[sequence - 1], **changes)

    @event(Authorized)
    def _authorized(
        self,
        *,
        sequence: int,
        provider_reference: str,
        captured_amount: int,
        caused_by: dict[str, str],
    ) -> None:
        self._settle(sequence, status=OpStatus.SUCCEEDED, provider_reference=provider_reference)
        self.authorized = True
        self.provider_reference = provider_reference
        self.captured_amount = captured_amount

    @event(Captured)
    def _captured(
        self, *, sequence: int, amount: int, provider_reference: str, caused_by: dict[str, str]
    ) -> None:
        self._settle(sequence, status=OpStatus.SUCCEEDED, provider_reference=provider_reference)
        self.captured_amount += amount

    @event(Canceled)
    def _canceled(
        self, *, sequence: int, provider_reference: str, caused_by: dict[str, str]
    ) -> None:
        self._settle(sequence, status=OpStatus.SUCCEEDED, provider_reference=provider_reference)
        self.closed_as = Status.CANCELED

    @event(Refunded)
    def _refunded(
        self, *, sequence: int, amount: int, provider_reference: str, caused_by: dict[str, str]
    ) -> None:
        self._settle(sequence, status=OpStatus.SUCCEEDED, provider_reference=provider_reference)
        self.refunded_amount += amount

    @event(OperationDeclined)
    def _operation_declined(
        self, *, sequence: int, decline_code: str, message: str, caused_by: dict[str, str]
    ) -> None:
        self._settle(
            sequence, status=OpStatus.DECLINED, decline_code=decline_code, failure_message=message
        )
        self.decline_code = decline_code
        self.failure_message = message
        if self.operation(sequence).kind is Kind.AUTHORIZE:
            self.closed_as = Status.DECLINED

    @event(OperationFailed)
    def _operation_failed(self, *, sequence: int, message: str, caused_by: dict[str, str]) -> None:
        self._settle(sequence, status=OpStatus.FAILED, failure_message=message)
        self.failure_message = message
        if self.operation(sequence).kind is Kind.AUTHORIZE:
            self.closed_as = Status.FAILED

    @event(OutcomeUnknown)
    def _outcome_unknown(self, *, sequence: int, message: str, caused_by: dict[str, str]) -> None:
        self._settle(sequence, status=OpStatus.UNKNOWN, failure_message=message)

    @event(FailedOver)
    def _failed_over(
        self,
        *,
        sequence: int,
        attempt: int,
        provider: str,
        provider_key: str,
        deadline: datetime,
        message: str,
        caused_by: dict[str, str],
    ) -> None:
        self._settle(
            sequence,
            attempt=attempt,
            provider=provider,
            provider_key=provider_key,
            deadline=deadline,
            failure_message=message,
        )
        self.provider = provider

    @event(StillUnknown)
    def _still_unknown(
        self, *, sequence: int, checked_at: datetime, message: str, caused_by: dict[str, str]
    ) -> None:
        op = self.operation(sequence)
        self._settle(
            sequence,
            status=OpStatus.UNKNOWN,
            lookups=op.lookups + 1,
            last_checked=checked_at,
            failure_message=message,
        )

    @event(CaptureReversed)
    def _capture_reversed(
        self, *, sequence: int, amount: int, message: str, caused_by: dict[str, str]
    ) -> None:
        self._settle(sequence, status=OpStatus.FAILED, failure_message=message)
        self.captured_amount -= amount
        self.failure_message = message

    @event(RefundReversed)
    def _refund_reversed(
        self, *, sequence: int, amount: int, message: str, caused_by: dict[str, str]
    ) -> None:
        self._settle(sequence, status=OpStatus.FAILED, failure_message=message)
        self.refunded_amount -= amount
        self.failure_message = message

    @event(DisputeOpened)
    def _dispute_opened(
        self, *, dispute_reference: str, amount: int, reason: str, caused_by: dict[str, str]
    ) -> None:
        self.disputes[dispute_reference] = amount

    @event(DisputeClosed)
    def _dispute_closed(
        self, *, dispute_reference: str, won: bool, amount: int, caused_by: dict[str, str]
    ) -> None:
        self.disputes.pop(dispute_reference, None)
        before = self.closed_disputes.get(dispute_reference)
        if before is not None and not before[0]:
            self.charged_back_amount -= amount  # a lost dispute later won back
        self.closed_disputes[dispute_reference] = (won, amount)
        if not won:
            self.charged_back_amount += amount

    @event(ProviderEventReceived)
    def _provider_event_received(
        self, *, provider: str, event_id: str, kind: str, effect: str, caused_by: dict[str, str]
    ) -> None:
        self.provider_events += 1

    @event(ResolvedByOperator)
    def _resolved_by_operator(
        self,
        *,
        sequence: int,
        outcome: str,
        status: str,
        provider_reference: str,
        captured_amount: int,
        note: str,
        caused_by: dict[str, str],
    ) -> None:
        op = self.operation(sequence)
        settled = OpStatus(status)
        reference = provider_reference or op.provider_reference
        self._settle(sequence, status=settled, provider_reference=reference, failure_message=note)
        if settled is OpStatus.SUCCEEDED:
            if op.kind is Kind.AUTHORIZE:
                self.authorized = True
                self.provider_reference = reference
                self.captured_amount = captured_amount
            elif op.kind is Kind.CAPTURE:
                self.captured_amount += op.amount
            elif op.kind is Kind.CANCEL:
                self.closed_as = Status.CANCELED
            elif op.kind is Kind.REFUND:
                self.refunded_amount += op.amount
            return
        if settled is OpStatus.DECLINED:
            self.decline_code = "declined"
        self.failure_message = note
        if op.kind is Kind.AUTHORIZE:
            self.closed_as = Status.DECLINED if settled is OpStatus.DECLINED else Status.FAILED

    @event(ReviewRequired)
    def _review_required(self, *, sequence: int, message: str, caused_by: dict[str, str]) -> None:
        self._settle(sequence, review_required=True, failure_message=message)
