"""The command record: where a command's result is, for every replay of its key."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from orchestrator.domain.command import Command


def accepted() -> Command:
    return Command(
        id=uuid4(), scope="shop", idempotency_key="order-1", name="CreatePayment",
        fingerprint="f", payment_id=uuid4(), owner="o", lease_until=datetime.now(UTC),
    )  # fmt: skip


def test_a_command_answered_in_doubt_has_its_result_fixed_when_the_outcome_is_learnt() -> None:
    command = accepted()
    command.complete(payment_version=3, in_doubt=True)

    assert command.learn_outcome(payment_version=5)

    assert (command.payment_version, command.in_doubt) == (5, False)
    assert isinstance(command.collect_events()[-1], Command.OutcomeLearned)


def test_a_definite_result_is_never_moved() -> None:
    command = accepted()
    command.complete(payment_version=4, in_doubt=False)

    assert not command.learn_outcome(payment_version=9)
    assert not accepted().learn_outcome(payment_version=9)  # not even answered yet

    assert command.payment_version == 4
