"""``payorch audit reconcile``: payments made through the application against the real sandbox
(and our Stripe adapter against the Stripe emulator), reconciled with the provider's own
statement: the sandbox's ledger fetched over HTTP, and a balance transactions CSV written in
the layout of Stripe's itemized balance report from what the emulator holds."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.sandbox import SandboxServer, new_webhook_secret
from adapters.stripe import StripeAdapter
from adapters.stripe.transformers import from_stripe_amount
from orchestrator.application import Payments
from orchestrator.audit.reconcile import our_movements, reconcile
from orchestrator.audit.statements import (
    Kind,
    Movement,
    Statement,
    StatementError,
    minor_units,
    read_stripe_balance_transactions,
)
from orchestrator.bootstrap import (
    build_payments,
    load_configuration,
    resilient_route,
    webhook_verifiers,
)
from orchestrator.cli import main
from orchestrator.commands import CancelPayment, CreatePayment
from orchestrator.domain.money import CURRENCIES
from orchestrator.domain.payment import Resolution, Status
from orchestrator.resilience.provider import Stats
from orchestrator.routing import DEFAULT_ROUTE, Router
from orchestrator.secrets import Secret
from orchestrator.webhooks.http import HttpServer
from orchestrator.webhooks.intake import WebhookIntake
from orchestrator.webhooks.processor import WebhookProcessor
from tests.audit.helpers import capture, create, refund
from tests.emulators.stripe import SECRET_KEY, StripeEmulator

Output = pytest.CaptureFixture[str]


def reconcile_cli(
    output: Output, database_url: str, statement: Path, provider: str = "sandbox"
) -> tuple[int, list[str], str]:
    """The exit code, the lines printed and what went to stderr."""
    code = main(
        ["audit", "reconcile", "--provider", provider, "--statement", str(statement),
         "--database-url", database_url]
    )  # fmt: skip
    captured = output.readouterr()
    return code, captured.out.splitlines(), captured.err


def line_after(lines: list[str], heading: str) -> str:
    return lines[lines.index(heading) + 1]


def totals_row(lines: list[str], currency: str, side: str) -> list[str]:
    return next(line.split() for line in lines if line.split()[:2] == [currency, side])


def create_in(app: Payments, key: str, amount: int, currency: str) -> None:
    request = CreatePayment(key, amount, currency, "pm_card_visa", "US", "automatic")
    app.create_payment(request, scope="default")


def some_payments(app: Payments) -> None:
    """Money moved every common way: a capture in two parts, a partial refund, an automatic
    capture, a yen payment; and ways it did not (a decline, a void)."""
    manual = create(app, "manual", 1000, capture_mode="manual", reference="order-1")
    capture(app, "capture-1", manual, 300)
    capture(app, "capture-2", manual, 300)
    refund(app, "refund-1", manual, 200, "customer asked")
    create(app, "automatic", 2500)
    create_in(app, "yen", 5000, "JPY")
    create(app, "declined", method="pm_card_declined")
    voided = create(app, "voided", 400, capture_mode="manual")
    app.cancel_payment(CancelPayment("cancel-1", str(voided.id)), scope="default")


def sandbox_ledger(sandbox: SandboxServer) -> dict[str, Any]:
    response = httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=5)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def write_json(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(json.dumps(body))
    return path


# --- the sandbox ------------------------------------------------------------------------


def test_a_statement_that_matches_exits_0_with_totals_per_currency(
    app: Payments, sandbox: SandboxServer, database_url: str, tmp_path: Path, capsys: Output
) -> None:
    some_payments(app)
    statement = write_json(tmp_path / "ledger.json", sandbox_ledger(sandbox))

    code, lines, err = reconcile_cli(capsys, database_url, statement)

    assert (code, err) == (0, "")
    assert "matched: 5" in lines  # two captures, a refund, an automatic capture, the yen
    assert "missing at the provider (in our log, not in the statement): 0" in lines
    assert "missing in our log (in the statement, not in our log): 0" in lines
    assert "amount or currency differs: 0" in lines
    assert "not reconciled (type authorization): 4" in lines
    assert "not reconciled (type void): 1" in lines
    table = lines[lines.index("totals per currency:") + 1 :]
    assert table[0].split() == [
        "currency",
        "side",
        "captured",
        "refunded",
        "charged",
        "back",
        "net",
    ]
    assert [line.split() for line in table[1:5]] == [
        ["JPY", "ours", "5000", "0", "0", "5000"],
        ["JPY", "statement", "5000", "0", "0", "5000"],
        ["USD", "ours", "31.00", "2.00", "0.00", "29.00"],
        ["USD", "statement", "31.00", "2.00", "0.00", "29.00"],
    ]
    assert lines[-1] == "all movements match"


def test_a_movement_missing_from_the_statement_is_missing_at_the_provider(
    app: Payments, sandbox: SandboxServer, database_url: str, tmp_path: Path, capsys: Output
) -> None:
    some_payments(app)
    ledger = sandbox_ledger(sandbox)
    second_capture = [e for e in ledger["entries"] if e["kind"] == "capture"][1]
    ledger["entries"].remove(second_capture)
    statement = write_json(tmp_path / "ledger.json", ledger)

    code, lines, _ = reconcile_cli(capsys, database_url, statement)

    assert code == 1
    assert "missing at the provider (in our log, not in the statement): 1" in lines
    finding = line_after(lines, "missing at the provider (in our log, not in the statement): 1")
    assert finding.startswith(f"  capture 3.00 USD  reference {second_capture['payment']}")
    assert f"key {second_capture['idempotency_key']}, payment " in finding
    assert "missing in our log (in the statement, not in our log): 0" in lines
    assert totals_row(lines, "USD", "ours")[2:] == ["31.00", "2.00", "0.00", "29.00"]
    assert totals_row(lines, "USD", "statement")[2:] == ["28.00", "2.00", "0.00", "26.00"]
    assert lines[-1] == "1 finding"


def test_an_extra_movement_in_the_statement_is_missing_in_our_log(
    app: Payments, sandbox: SandboxServer, database_url: str, tmp_path: Path, capsys: Output
) -> None:
    some_payments(app)
    ledger = sandbox_ledger(sandbox)
    refunded = next(e for e in ledger["entries"] if e["kind"] == "refund")
    extra = {**refunded, "id": "sbx_led_extra", "amount": 150, "idempotency_key": None}
    ledger["entries"].append(extra)
    statement = write_json(tmp_path / "ledger.json", ledger)

    code, lines, _ = reconcile_cli(capsys, database_url, statement)

    assert code == 1
    assert "missing in our log (in the statement, not in our log): 1" in lines
    assert line_after(lines, "missing in our log (in the statement, not in our log): 1") == (
        f"  refund 1.50 USD  reference {refunded['payment']}, payment {refunded['reference']}"
        f"  (entry {len(ledger['entries'])})"
    )
    assert "missing at the provider (in our log, not in the statement): 0" in lines
    assert totals_row(lines, "USD", "statement")[2:] == ["31.00", "3.50", "0.00", "27.50"]


def test_a_different_amount_is_a_difference_with_both_amounts(
    app: Payments, sandbox: SandboxServer, database_url: str, tmp_path: Path, capsys: Output
) -> None:
    some_payments(app)
    ledger = sandbox_ledger(sandbox)
    automatic = next(e for e in ledger["entries"] if e["kind"] == "capture" and e["amount"] == 2500)
    automatic["amount"] = 2499
    statement = write_json(tmp_path / "ledger.json", ledger)

    code, lines, _ = reconcile_cli(capsys, database_url, statement)

    assert code == 1
    assert "amount or currency differs: 1" in lines
    difference = line_after(lines, "amount or currency differs: 1")
    assert difference.startswith(f"  capture {automatic['payment']}: ours 25.00 USD (log position ")
    assert difference.endswith(f"theirs 24.99 USD (entry {ledger['entries'].index(automatic) + 1})")
    assert "matched: 4" in lines
    assert "missing at the provider (in our log, not in the statement): 0" in lines
    assert "missing in our log (in the statement, not in our log): 0" in lines


def test_disputes_lost_and_won_reconcile_as_chargebacks_and_a_reversal(
    database_url: str, sandbox: SandboxServer, tmp_path: Path, capsys: Output
) -> None:
    # Disputes reach our log only by the sandbox's signed webhooks: the real intake and
    # processor record them, in whatever order they arrive.
    secret = new_webhook_secret()
    config = load_configuration(None, sandbox.url, sandbox_webhook_secret=Secret(secret, "test"))
    app = build_payments(database_url, config.router)
    intake = WebhookIntake(app, webhook_verifiers(config.router))
    http = HttpServer("127.0.0.1:0", intake, ready=lambda: True).start()
    sandbox.configure_webhooks(
        f"http://127.0.0.1:{http.port}/webhooks/sandbox", secret, initial_delay_ms=50
    )
    processor = WebhookProcessor(app, interval=0.05).start()
    try:
        lost, won = create(app, "lost", 1000), create(app, "won", 2000)
        for payment, outcome in ((lost, "lost"), (won, "won")):
            dispute = httpx.post(
                f"{sandbox.url}/_sandbox/payments/{payment.provider_reference}/dispute", json={}
            ).json()
            httpx.post(
                f"{sandbox.url}/_sandbox/disputes/{dispute['id']}/close", json={"outcome": outcome}
            ).raise_for_status()
        deadline = time.monotonic() + 10
        while not (
            app.get_payment(lost.id).status is Status.CHARGED_BACK
            and app.get_payment(won.id).closed_disputes
        ):
            assert time.monotonic() < deadline, "the dispute webhooks were never applied"
            time.sleep(0.05)
    finally:
        processor.stop()
        sandbox.disable_webhooks()
        http.stop()
        app.close()
    statement = write_json(tmp_path / "ledger.json", sandbox_ledger(sandbox))

    code, lines, _ = reconcile_cli(capsys, database_url, statement)

    assert code == 0, "\n".join(lines)
    assert "matched: 5" in lines  # two captures, two chargebacks, one reversal
    assert totals_row(lines, "USD", "ours")[2:] == ["30.00", "0.00", "10.00", "20.00"]
    assert totals_row(lines, "USD", "statement")[2:] == ["30.00", "0.00", "10.00", "20.00"]


# --- bad input --------------------------------------------------------------------------


ITEMIZED_HEADER = (
    "balance_transaction_id,currency,gross,reporting_category,source_id,payment_intent_id"
)


@pytest.mark.parametrize(
    ("provider", "content", "message"),
    [
        ("sandbox", "{not json", "ledger.json: not JSON (Expecting property name"),
        ("sandbox", '{"data": []}', 'not a sandbox ledger: expected {"entries": [...]}'),
        ("sandbox",
         '{"entries": [{"kind": "capture", "payment": "p", "amount": 1.5, "currency": "USD"}]}',
         "ledger.json entry 1: amount must be an integer of minor units >= 0"),
        ("sandbox", b"\xff\xfe", "not UTF-8 text"),
        ("stripe", f"{ITEMIZED_HEADER}\ntxn_1,eur,\"60,00\",charge,ch_1,pi_1\n",
         "ledger.json line 2: amount '60,00' is not a decimal in major units"),
        ("stripe", f"{ITEMIZED_HEADER}\ntxn_1,xyz,1.00,charge,ch_1,pi_1\n",
         "line 2: currency 'XYZ' is not a known ISO 4217 code"),
        ("stripe", f"{ITEMIZED_HEADER}\ntxn_1,usd,1.00,charge\n",
         "line 2: 4 fields, the header has 6"),
        ("stripe", "", "ledger.json: empty, expected a header row"),
    ],
)  # fmt: skip
def test_a_malformed_statement_exits_2_with_a_one_line_message(
    app: Payments,
    database_url: str,
    tmp_path: Path,
    capsys: Output,
    provider: str,
    content: str | bytes,
    message: str,
) -> None:
    statement = tmp_path / "ledger.json"
    if isinstance(content, bytes):
        statement.write_bytes(content)
    else:
        statement.write_text(content)

    code, lines, err = reconcile_cli(capsys, database_url, statement, provider)

    assert (code, lines) == (2, [])
    assert err.startswith("payorch audit reconcile: ")
    assert message in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_a_missing_statement_or_an_unknown_provider_exits_2(
    app: Payments, database_url: str, tmp_path: Path, capsys: Output
) -> None:
    code, _, err = reconcile_cli(capsys, database_url, tmp_path / "nowhere.json")
    assert code == 2
    assert "cannot read" in err
    assert "nowhere.json" in err

    code, _, err = reconcile_cli(capsys, database_url, tmp_path / "nowhere.json", provider="adyen")
    assert code == 2
    assert "no statement format for provider 'adyen': use sandbox or stripe" in err


# --- Stripe -----------------------------------------------------------------------------

# The itemized "Balance change from activity" report's columns (Reporting API report type
# balance_change_from_activity.itemized.3), amounts as decimals in major units.
ITEMIZED_COLUMNS = [
    "balance_transaction_id", "created_utc", "available_on_utc", "currency", "gross", "fee",
    "net", "reporting_category", "source_id", "description", "customer_facing_amount",
    "customer_facing_currency", "charge_id", "payment_intent_id",
]  # fmt: skip


@pytest.fixture
def stripe() -> Iterator[StripeEmulator]:
    emulator = StripeEmulator()
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def stripe_app(database_url: str, stripe: StripeEmulator) -> Iterator[Payments]:
    adapter = StripeAdapter(Secret(SECRET_KEY, "test"), name="stripe", base_url=stripe.url)
    route = resilient_route("stripe", "stripe", adapter, {}, Stats())
    payments = build_payments(database_url, Router({"stripe": route}, {DEFAULT_ROUTE: ["stripe"]}))
    try:
        yield payments
    finally:
        payments.close()


def major(amount: int, currency: str) -> str:
    """Minor units as the export writes them: a decimal with the currency's decimals."""
    exponent = CURRENCIES[currency.upper()].exponent
    return f"{Decimal(amount).scaleb(-exponent):.{exponent}f}"


def itemized_export(stripe: StripeEmulator) -> list[dict[str, str]]:
    """What Stripe's report lists for what the emulator did: a charge for every authorization
    captured (a partial capture also shows the uncaptured rest reversed), a refund for every
    refund, and a fee that is not a payment movement."""
    rows: list[dict[str, str]] = []

    def row(category: str, source: str, amount: int, currency: str, intent: dict[str, Any]) -> None:
        minor = from_stripe_amount(amount, currency)
        rows.append(
            {
                "balance_transaction_id": f"txn_{len(rows) + 1:04d}",
                "created_utc": "2026-11-02 10:00:00",
                "available_on_utc": "2026-11-04 00:00:00",
                "currency": currency,
                "gross": major(minor, currency),
                "fee": major(0, currency),
                "net": major(minor, currency),
                "reporting_category": category,
                "source_id": source,
                "description": "",
                "customer_facing_amount": major(abs(minor), currency),
                "customer_facing_currency": currency,
                "charge_id": intent["latest_charge"] or "",
                "payment_intent_id": intent["id"],
            }
        )

    for intent in stripe.intents():
        if intent["status"] != "succeeded":
            continue
        currency = intent["currency"]
        row("charge", intent["latest_charge"], intent["amount"], currency, intent)
        uncaptured = intent["amount"] - intent["amount_received"]
        if uncaptured:
            row("partial_capture_reversal", intent["latest_charge"], -uncaptured, currency, intent)
    for refunded in stripe.refunds():
        intent = stripe.intent(refunded["payment_intent"])
        row("refund", refunded["id"], -refunded["amount"], refunded["currency"], intent)
    rows.append({**rows[0], "balance_transaction_id": "txn_fee", "reporting_category": "fee",
                 "source_id": "", "gross": "-0.50", "net": "-0.50", "payment_intent_id": "",
                 "charge_id": "", "customer_facing_amount": "", "customer_facing_currency": ""})  # fmt: skip
    return rows


def write_csv(
    path: Path, rows: list[dict[str, str]], columns: list[str] = ITEMIZED_COLUMNS
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def stripe_payments(app: Payments) -> None:
    """A charge captured in part (Stripe releases the rest), an automatic one refunded in
    part, and a yen payment: zero-decimal amounts in the export."""
    manual = create(app, "manual", 1000, capture_mode="manual")
    capture(app, "capture-1", manual, 600)
    automatic = create(app, "automatic", 2500)
    refund(app, "refund-1", automatic, 500)
    create_in(app, "yen", 5000, "JPY")


def test_a_stripe_export_that_matches_exits_0(
    stripe_app: Payments, stripe: StripeEmulator, database_url: str, tmp_path: Path, capsys: Output
) -> None:
    stripe_payments(stripe_app)
    rows = itemized_export(stripe)
    assert [r["reporting_category"] for r in rows].count("partial_capture_reversal") == 1
    statement = write_csv(tmp_path / "balance.csv", rows)

    code, lines, err = reconcile_cli(capsys, database_url, statement, provider="stripe")

    assert (code, err) == (0, "")
    assert "matched: 4" in lines  # the partial capture (net of its reversal), 2 charges, 1 refund
    assert "not reconciled (type fee): 1" in lines
    assert totals_row(lines, "JPY", "statement")[2:] == ["5000", "0", "0", "5000"]
    assert totals_row(lines, "USD", "statement")[2:] == ["31.00", "5.00", "0.00", "26.00"]
    assert lines[-1] == "all movements match"


def test_a_stripe_export_with_another_amount_or_an_unknown_refund_is_reported(
    stripe_app: Payments, stripe: StripeEmulator, database_url: str, tmp_path: Path, capsys: Output
) -> None:
    stripe_payments(stripe_app)
    rows = itemized_export(stripe)
    yen = next(r for r in rows if r["currency"] == "jpy" and r["reporting_category"] == "charge")
    yen["customer_facing_amount"] = yen["gross"] = "4,999"  # grouped thousands, zero decimals
    refunded = next(r for r in rows if r["reporting_category"] == "refund")
    rows.append({**refunded, "source_id": "re_unknown", "gross": "-1,234.56",
                 "customer_facing_amount": "1,234.56"})  # fmt: skip
    statement = write_csv(tmp_path / "balance.csv", rows)

    code, lines, _ = reconcile_cli(capsys, database_url, statement, provider="stripe")

    assert code == 1
    assert "amount or currency differs: 1" in lines
    difference = line_after(lines, "amount or currency differs: 1")
    assert difference.startswith(f"  capture {yen['payment_intent_id']}: ours 5000 JPY")
    assert difference.endswith(f"theirs 4999 JPY (line {rows.index(yen) + 2})")
    assert "missing in our log (in the statement, not in our log): 1" in lines
    unknown = line_after(lines, "missing in our log (in the statement, not in our log): 1")
    assert unknown == (
        f"  refund 1234.56 USD  reference {refunded['payment_intent_id']}, id re_unknown"
        f"  (line {len(rows) + 1})"
    )
    assert lines[-1] == "2 findings"


def test_a_csv_without_payment_intents_is_refused(
    stripe_app: Payments, database_url: str, tmp_path: Path, capsys: Output
) -> None:
    # The Dashboard's default balance export: no PaymentIntent column to match charges by.
    dashboard = ["id", "Type", "Source", "Amount", "Fee", "Net", "Currency", "Created (UTC)"]
    statement = write_csv(tmp_path / "balance.csv", [], dashboard)

    code, _, err = reconcile_cli(capsys, database_url, statement, provider="stripe")

    assert code == 2
    assert err.strip() == (
        f"payorch audit reconcile: {statement}: not a Stripe balance transactions export with "
        "PaymentIntents: no payment_intent_id column (export the itemized balance report with "
        "them)"
    )


def test_a_stripe_export_by_type_counts_payouts_and_reads_adjustments(tmp_path: Path) -> None:
    columns = ["id", "Type", "Source", "Amount", "Fee", "Net", "Currency", "PaymentIntent ID"]
    rows = [
        ["txn_1", "charge", "ch_1", "10.00", "0.59", "9.41", "usd", "pi_1"],
        ["txn_2", "payment_refund", "pyr_1", "-5.00", "0.00", "-5.00", "usd", "pi_1"],
        ["txn_3", "adjustment", "dp_1", "-5.00", "15.00", "-20.00", "usd", "pi_1"],
        ["txn_4", "adjustment", "dp_1", "5.00", "-15.00", "20.00", "usd", "pi_1"],
        ["txn_5", "payout", "po_1", "-9.41", "0.00", "-9.41", "usd", ""],
        ["txn_6", "stripe_fee", "", "-0.30", "0.00", "-0.30", "usd", ""],
    ]
    path = tmp_path / "balance.csv"
    with path.open("w", newline="") as file:
        csv.writer(file).writerows([columns, *rows])

    statement = read_stripe_balance_transactions(path)

    assert [(m.kind, m.amount, m.reference) for m in statement.movements] == [
        (Kind.CAPTURE, 1000, "pi_1"),
        (Kind.REFUND, 500, "pi_1"),
        (Kind.CHARGEBACK, 500, "pi_1"),
        (Kind.CHARGEBACK_REVERSAL, 500, "pi_1"),
    ]
    assert statement.not_reconciled == {"payout": 1, "stripe_fee": 1}


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("10.00", "USD", 1000),
        ("-5.00", "USD", -500),
        ("1,234.56", "USD", 123456),
        ("7", "USD", 700),
        ("0.5", "USD", 50),
        ("5000", "JPY", 5000),
        ("1,234", "JPY", 1234),
        ("1.00", "JPY", 1),  # Stripe writes some zero-decimal currencies with decimals
        ("1.005", "KWD", 1005),
        ("-1,000,000.000", "KWD", -1000000000),
    ],
)
def test_decimal_major_units_become_exact_minor_units(text: str, currency: str, minor: int) -> None:
    assert minor_units(text, currency) == minor


@pytest.mark.parametrize(
    "text",
    ["60,00", "1,234", "10.001", "1e3", "", "12.3.4", "0,500", " ", "1,23.00", "NaN", "∞"],
)
def test_amounts_that_could_be_misread_are_refused(text: str) -> None:
    with pytest.raises(StatementError, match="amount"):
        minor_units(text, "USD")


# --- the matching rule ------------------------------------------------------------------


def movement(kind: Kind, amount: int, *, key: str = "", obj: str = "", ref: str = "p1") -> Movement:
    return Movement("sandbox", ref, kind, amount, "USD", key=key, object_id=obj)


def test_movements_sharing_a_reference_match_as_a_multiset() -> None:
    ours = [movement(Kind.CAPTURE, 300), movement(Kind.CAPTURE, 700)]
    theirs = Statement([movement(Kind.CAPTURE, 700), movement(Kind.CAPTURE, 300)], {})

    report = reconcile(ours, theirs)

    assert (report.matched, report.findings) == (2, 0)


def test_an_identity_pairs_first_and_two_identities_never_pair() -> None:
    ours = [movement(Kind.REFUND, 500, obj="re_1"), movement(Kind.REFUND, 500, obj="re_2")]
    theirs = Statement(
        [movement(Kind.REFUND, 500, obj="re_3"), movement(Kind.REFUND, 400, obj="re_1")], {}
    )

    report = reconcile(ours, theirs)

    assert report.matched == 0
    assert [(d.ours.object_id, d.theirs.amount) for d in report.differences] == [("re_1", 400)]
    assert [m.object_id for m in report.missing_at_provider] == ["re_2"]
    assert [m.object_id for m in report.missing_in_log] == ["re_3"]


def test_a_kind_or_reference_of_its_own_never_matches() -> None:
    ours = [movement(Kind.CAPTURE, 300), movement(Kind.REFUND, 100, ref="p2")]
    theirs = Statement([movement(Kind.REFUND, 300), movement(Kind.REFUND, 100, ref="p3")], {})

    report = reconcile(ours, theirs)

    assert report.matched == 0
    assert len(report.missing_at_provider) == len(report.missing_in_log) == 2
    assert report.ours["USD"].net == 200
    assert report.theirs["USD"].net == -400


def test_an_operators_refund_and_capture_are_movements_a_cancel_is_none(app: Payments) -> None:
    """What an operator read on the dashboard happened: a refund or capture settled by a
    person is a movement like one the provider answered; a cancel moves no money."""
    from tests.unit.domain.test_operator_resolution import BY, in_review
    from tests.unit.domain.test_payment import CAUSE, DEADLINE, authorized, captured

    refunded = captured(1000)
    refunded.start_refund(400, reason="", deadline=DEADLINE, cause=CAUSE)
    in_review(refunded)
    refunded.resolve_by_operator(
        Resolution.REFUNDED, note="re_1", caused_by=BY, provider_reference="re_1"
    )
    canceled = authorized(700)
    canceled.start_cancel(deadline=DEADLINE, cause=CAUSE)
    in_review(canceled)
    canceled.resolve_by_operator(Resolution.CANCELED, note="voided", caused_by=BY)
    app.save(refunded, canceled)

    movements = [m for m in our_movements(app, "sandbox") if m.amount]
    mine = {(m.kind, m.amount) for m in movements}
    assert (Kind.REFUND, 400) in mine
    assert (Kind.CAPTURE, 1000) in mine
    assert {m.kind for m in movements} <= {Kind.CAPTURE, Kind.REFUND}
    assert (Kind.CAPTURE, 700) not in mine  # canceled: only authorized, never captured
