"""A fail-over that loses a race: while the command's owner moves its authorization to the
next provider, the first provider's webhook settles the attempt and completes the command.
The owner's answer must then be the command's recorded result, the one every replay gives.
Found by the simulator (seed 1583 at the time); here the race is forced, on a real store."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments
from orchestrator.commands import CreatePayment
from orchestrator.ports import (
    OutcomeStatus,
    ProviderNotReached,
    ProviderOperation,
    ProviderOutcome,
    WebhookKind,
)
from orchestrator.routing import Route, Router
from tests.integration.test_webhook_attribution import deliver


class Provider:
    """A provider port of the test's own: ``answer`` says what an authorization does."""

    honors_idempotency_keys = True

    def __init__(self, name: str, answer: Callable[[ProviderOperation], ProviderOutcome]) -> None:
        self.name = name
        self.answer = answer

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        return self.answer(operation)

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        return None

    capture = cancel = refund = authorize


@pytest.fixture
def app(database_url: str) -> Iterator[Payments]:
    def first(operation: ProviderOperation) -> ProviderOutcome:
        # The attempt's success reaches payorch as a webhook, applied while this call is
        # still to answer; the call itself then fails as "not processed".
        deliver(
            payments, "alpha", WebhookKind.AUTHORIZATION_SUCCEEDED,
            payment_id=operation.payment_id, operation_key=operation.provider_key,
            provider_reference="alpha_ch_1", amount=operation.amount,
        )  # fmt: skip
        raise ProviderNotReached("alpha: 503, not processed")

    def second(operation: ProviderOperation) -> ProviderOutcome:
        return ProviderOutcome(OutcomeStatus.SUCCEEDED, provider_reference="beta_ch_1")

    routes = {
        "alpha": Route(Provider("alpha", first), timeout=2.0, kind="alpha"),
        "beta": Route(Provider("beta", second), timeout=2.0, kind="beta"),
    }
    payments = build_payments(database_url, Router(routes, {"*": ["alpha", "beta"]}))
    try:
        yield payments
    finally:
        payments.close()


def test_a_fail_over_that_loses_the_race_answers_what_every_replay_answers(app: Payments) -> None:
    request = CreatePayment(
        idempotency_key="order-1", amount=1000, currency="USD",
        payment_method="pm_card_visa", region="US", capture_mode="manual",
    )  # fmt: skip

    first = app.create_payment(request, scope="default")
    again = app.create_payment(request, scope="default")

    assert (first.version, first.status, first.provider) == (
        again.version,
        again.status,
        again.provider,
    )
    assert first.provider == "alpha"  # the attempt the webhook settled; beta was never asked
