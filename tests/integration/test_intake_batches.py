"""The intake stores deliveries that arrive together in one transaction, on real stores (an
SQLite file and PostgreSQL). A batch that cannot commit whole (a delivery stored before, or
twice in the batch) stores nothing, and each delivery is then stored alone: every answer is
the one it would have had alone, and every event is stored exactly once."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from adapters.sandbox import new_webhook_secret, sign_standard_webhook
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_configuration, webhook_verifiers
from orchestrator.domain.webhook import WebhookDelivery
from orchestrator.ports import WebhookRejected
from orchestrator.secrets import Secret
from orchestrator.webhooks.intake import Receipt, Request, WebhookIntake
from tests.e2e.test_webhooks import sandbox_event


@dataclass
class Intake:
    app: Payments
    intake: WebhookIntake
    secret: str

    def request(self, event_id: str, *, secret: str | None = None) -> Request:
        payment = {"id": "sbx_pay_b", "reference": "", "amount": 1, "currency": "USD",
                   "status": "authorized", "idempotency_key": "k"}  # fmt: skip
        body = sandbox_event("payment.authorized", payment, event_id=event_id)
        stamp = int(time.time())
        signature = sign_standard_webhook(secret or self.secret, event_id, stamp, body)
        headers = {"webhook-id": event_id, "webhook-timestamp": str(stamp),
                   "webhook-signature": signature}  # fmt: skip
        return Request("sandbox", headers, body)

    def stored(self) -> list[str]:
        """The event ids of the stored deliveries, in commit order."""
        notifications = self.app.recorder.select_notifications(start=1, limit=1000)
        ids = []
        for n in notifications:
            delivery = self.app.repository.get(n.originator_id)
            if isinstance(delivery, WebhookDelivery):
                ids.append(delivery.event_id)
        return ids


@pytest.fixture
def intake(database_url: str) -> Iterator[Intake]:
    secret = new_webhook_secret()
    config = load_configuration(
        None, "http://127.0.0.1:9", sandbox_webhook_secret=Secret(secret, "test")
    )
    app = build_payments(database_url, config.router)
    try:
        yield Intake(app, WebhookIntake(app, webhook_verifiers(config.router)), secret)
    finally:
        app.close()


def test_deliveries_that_arrive_together_are_stored_in_one_transaction(intake: Intake) -> None:
    before = intake.app.recorder.max_notification_id() or 0
    answers = intake.intake.receive_many([intake.request(f"evt_t{i}") for i in range(5)])
    assert answers == [Receipt(1, 0)] * 5
    assert intake.stored() == [f"evt_t{i}" for i in range(5)]
    assert (intake.app.recorder.max_notification_id() or 0) == before + 5


def test_a_batch_with_duplicates_and_a_forgery_answers_each_as_it_would_alone(
    intake: Intake,
) -> None:
    assert intake.intake.receive(*_fields(intake.request("evt_old"))) == Receipt(1, 0)
    answers = intake.intake.receive_many(
        [
            intake.request("evt_new"),
            intake.request("evt_old"),  # stored before: the batch cannot commit whole
            intake.request("evt_twice"),
            intake.request("evt_forged", secret=new_webhook_secret()),
            intake.request("evt_twice"),  # twice in the same batch
        ]
    )
    assert answers[:3] == [Receipt(1, 0), Receipt(0, 1), Receipt(1, 0)]
    assert isinstance(answers[3], WebhookRejected) and answers[3].status == 401
    assert answers[4] == Receipt(0, 1)
    assert sorted(intake.stored()) == ["evt_new", "evt_old", "evt_twice"]


def test_a_batch_is_logged_in_one_line_with_its_counts(
    intake: Intake, caplog: pytest.LogCaptureFixture
) -> None:
    intake.intake.receive(*_fields(intake.request("evt_before")))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="payorch.webhooks"):
        intake.intake.receive_many(
            [intake.request("evt_a"), intake.request("evt_before"), intake.request("evt_b")]
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "payorch.webhooks"]
    assert lines == ["webhook sandbox: 2 stored, 1 duplicate(s), verified by sandbox"]


def test_a_forged_delivery_alone_is_refused_as_before(intake: Intake) -> None:
    with pytest.raises(WebhookRejected):
        intake.intake.receive(*_fields(intake.request("evt_f", secret=new_webhook_secret())))
    assert intake.stored() == []


def _fields(request: Request) -> tuple[str, dict[str, str], bytes]:
    return request.provider, dict(request.headers), request.body
