"""``payorch audit show``: one payment's timeline, one row per event, then where it stands."""

from __future__ import annotations

import pytest

from orchestrator.application import Payments
from orchestrator.audit.show import MAX_WIDTH, summary, table
from orchestrator.cli import main
from tests.audit.helpers import a_few_payments


def show(database_url: str, payment_id: str) -> int:
    return main(["audit", "show", payment_id, "--database-url", database_url])


def test_a_payment_shows_one_row_per_event_then_its_status_and_amounts(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manual, _, _ = a_few_payments(app)
    assert show(database_url, str(manual.id)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"payment {manual.id} (reference order-1")
    header = lines[2].split()
    assert header[:2] == ["VERSION", "TIME"]
    rows = [line.split(None, 5) for line in lines[4:11]]
    assert [(r[0], r[3]) for r in rows] == [
        ("1", "Requested"),
        ("2", "OperationStarted"),
        ("3", "Authorized"),
        ("4", "OperationStarted"),
        ("5", "Captured"),
        ("6", "OperationStarted"),
        ("7", "Refunded"),
    ]
    # Each event names the command that caused it; an outcome, the command that asked for it.
    assert [r[4] for r in rows] == [
        *["cmd:manual"] * 3,
        *["cmd:capture-1"] * 2,
        *["cmd:refund-1"] * 2,
    ]
    assert rows[0][5].startswith("amount=1000 USD, region=US, capture_mode=manual")
    assert rows[4][5].startswith("amount=600 USD, provider_reference=sbx_pay_")
    assert rows[5][5].startswith("kind=refund, amount=200 USD, provider=sandbox")
    assert lines[-1] == (
        "status: partially_refunded  amount: 1000 USD  captured: 600 USD  refunded: 200 USD"
    )
    assert all(len(line) <= MAX_WIDTH for line in lines)


def test_a_decline_shows_its_code(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, declined = a_few_payments(app)
    show(database_url, str(declined.id))
    out = capsys.readouterr().out
    assert "OperationDeclined" in out
    assert "decline_code=card_declined" in out
    assert out.splitlines()[-1].startswith("status: declined  amount: 1000 USD")


@pytest.mark.parametrize("payment_id", ["00000000-0000-0000-0000-000000000000", "nope", ""])
def test_an_unknown_payment_exits_1_with_a_message(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str], payment_id: str
) -> None:
    a_few_payments(app)
    assert show(database_url, payment_id) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no payment" in captured.err


def test_a_long_summary_is_cut_to_fit_the_terminal() -> None:
    long = summary({"message": "x" * 300, "amount": 5}, "EUR")
    (_, _, row) = table([("1", "2024-01-01 00:00:00.000", "OperationFailed", "recovery", long)])
    assert len(row) == MAX_WIDTH
    assert row.endswith("...")
    assert "amount=5 EUR, message=xxx" in row


def test_a_message_with_newlines_stays_on_one_row() -> None:
    assert summary({"message": "first\nsecond  third"}, "USD") == "message=first second third"


def test_a_long_provider_event_id_is_cut_to_fit_the_cause_column(app: Payments) -> None:
    from orchestrator.audit.show import CAUSE_WIDTH, timeline
    from orchestrator.domain.payment import ProviderEventCause

    manual, _, _ = a_few_payments(app)
    payment = app.get_payment(manual.id)
    event_id = "evt_" + "f" * 40
    payment.provider_event_received(
        provider="sandbox", event_id=event_id, kind="dispute_opened", effect="noted",
        caused_by=ProviderEventCause("sandbox", event_id),
    )  # fmt: skip
    app.save(payment)
    last = timeline(app, str(manual.id))[-3]
    cause = last.split(None, 5)[4]
    assert cause.startswith("webhook:sandbox/evt_fff")
    assert len(cause) == CAUSE_WIDTH
    assert cause.endswith("...")
