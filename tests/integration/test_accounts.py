"""Accounts, at the application, on real stores (an SQLite file and PostgreSQL) and the real
sandbox over HTTP: a payment belongs to the account that created it, another account's caller
finds nothing (exactly as for a payment that does not exist) and changes nothing, and the
idempotency scope, not the account, names a command."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from adapters.sandbox import SandboxServer
from orchestrator.application import Payments
from orchestrator.audit.export import load_export
from orchestrator.bootstrap import build_payments, load_router
from orchestrator.cli import main
from orchestrator.commands import CancelPayment, CapturePayment, CreatePayment, RefundPayment
from orchestrator.domain.command import command_id
from orchestrator.domain.errors import DomainError, IdempotencyKeyReused, PaymentNotFound
from orchestrator.domain.payment import Payment, Status
from orchestrator.ports import ProviderOperation, ProviderOutcome, ProviderOutcomeUnknown
from orchestrator.routing import Route, Router
from orchestrator.store import parse_database_url
from tests.audit.test_verify import Store

SHOP, OTHER = "shop", "other"


def create_request(key: str, capture_mode: str = "manual") -> CreatePayment:
    return CreatePayment(key, 1000, "USD", "pm_card_visa", "US", capture_mode, "order-1")


@pytest.fixture
def app(database_url: str, sandbox: SandboxServer) -> Iterator[Payments]:
    payments = build_payments(database_url, load_router(None, sandbox.url))
    try:
        yield payments
    finally:
        payments.close()


def provider_calls(sandbox: SandboxServer, kind: str | None = None) -> int:
    """Money movements the sandbox made: one per operation it was asked for."""
    return len([e for e in sandbox.state.ledger() if kind is None or e["kind"] == kind])


def stored(app: Payments) -> int:
    return app.recorder.max_notification_id() or 0


def refusal(call: Callable[[], object]) -> DomainError:
    with pytest.raises(DomainError) as refused:
        call()
    return refused.value


def test_another_accounts_caller_finds_none_of_a_payment_and_changes_nothing(
    app: Payments, sandbox: SandboxServer
) -> None:
    payment = app.create_payment(create_request("order-1"), scope="checkout", account=SHOP)
    assert app.get_payment(str(payment.id), account=SHOP).account == SHOP
    pid, nobody = str(payment.id), str(uuid4())
    events, calls = stored(app), provider_calls(sandbox)

    def attempts(payment_id: str) -> list[Callable[[], object]]:
        return [
            lambda: app.get_payment(payment_id, account=OTHER),
            lambda: list(app.payment_events(payment_id, account=OTHER)),
            lambda: app.capture_payment(
                CapturePayment("c-1", payment_id), scope="intruder", account=OTHER
            ),
            lambda: app.cancel_payment(
                CancelPayment("x-1", payment_id), scope="intruder", account=OTHER
            ),
            lambda: app.refund_payment(
                RefundPayment("r-1", payment_id, 100), scope="intruder", account=OTHER
            ),
        ]

    for theirs, missing in zip(attempts(pid), attempts(nobody), strict=True):
        # Exactly what a payment that does not exist answers, its id aside: no existence leak.
        seen, unknown = refusal(theirs), refusal(missing)
        assert isinstance(seen, PaymentNotFound)
        assert (seen.reason, seen.message.replace(pid, nobody)) == (
            unknown.reason,
            unknown.message,
        )
        assert seen.metadata == {"paymentId": pid}
    assert stored(app) == events  # no command, no operation: nothing written
    assert provider_calls(sandbox) == calls
    for key in ("c-1", "x-1", "r-1"):
        assert app.find_command(command_id("intruder", key)) is None
    # The owner still can, which the refusals above did not disturb.
    captured = app.capture_payment(CapturePayment("c-1", pid), scope="checkout", account=SHOP)
    assert captured.status is Status.CAPTURED
    assert provider_calls(sandbox, "capture") == 1


def test_the_same_key_from_two_scopes_makes_two_payments_and_two_provider_calls(
    app: Payments, sandbox: SandboxServer
) -> None:
    request = create_request("order-42")
    checkout = app.create_payment(request, scope="checkout", account=SHOP)
    billing = app.create_payment(request, scope="billing", account=OTHER)
    assert checkout.id != billing.id
    assert (checkout.account, billing.account) == (SHOP, OTHER)
    assert provider_calls(sandbox, "authorization") == 2
    # Each scope's retry replays its own payment, and calls nobody.
    assert app.create_payment(request, scope="checkout", account=SHOP).id == checkout.id
    assert app.create_payment(request, scope="billing", account=OTHER).id == billing.id
    assert provider_calls(sandbox) == 2


def test_a_replay_never_answers_another_account_even_in_a_shared_scope(
    app: Payments, database_url: str, sandbox: SandboxServer
) -> None:
    """Scopes name callers, so another account's caller has another command id. Were one
    scope configured for two accounts, a replay still answers only the payment's account:
    from the result cache and, in another process, from the store."""
    request = create_request("order-7")
    payment = app.create_payment(request, scope="shared", account=SHOP)
    capture = CapturePayment("capture-7", str(payment.id))
    app.capture_payment(capture, scope="shared", account=SHOP)
    for key in ("order-7", "capture-7"):
        assert app.results.get(command_id("shared", key)) is not None  # the hot path
    replica = Payments(env=parse_database_url(database_url).env, router=app.router)
    try:
        for payments in (app, replica):
            create = partial(payments.create_payment, request, scope="shared", account=OTHER)
            assert isinstance(refusal(create), IdempotencyKeyReused)
            follow = partial(payments.capture_payment, capture, scope="shared", account=OTHER)
            refused = refusal(follow)
            assert isinstance(refused, PaymentNotFound)
            # The owner's replays answer as before.
            again = payments.capture_payment(capture, scope="shared", account=SHOP)
            assert (again.id, again.status) == (payment.id, Status.CAPTURED)
    finally:
        replica.close()
    assert provider_calls(sandbox) == 2  # one authorization, one capture


def strip_account(database_url: str, payment_id: UUID) -> None:
    """Makes the payment's first event as the event class before accounts stored it."""
    store = Store(database_url)
    state = store.state(payment_id, 1)
    legacy = state.replace(b',"account":"default","class_version":2', b"")
    assert legacy != state and b"account" not in legacy
    store.set_state(payment_id, 1, legacy)


def test_a_payment_stored_before_accounts_belongs_to_the_configured_default_account(
    database_url: str, sandbox: SandboxServer
) -> None:
    router = load_router(None, sandbox.url)
    request = create_request("legacy-1")
    before = build_payments(database_url, router)
    try:
        legacy = before.create_payment(request, scope="default")  # no account: the default
        assert legacy.account == "default"
    finally:
        before.close()
    strip_account(database_url, legacy.id)
    pid = str(legacy.id)

    app = build_payments(database_url, router, default_account=SHOP)
    try:
        read = app.get_payment(pid, account=SHOP)
        assert (read.account, app.owner(read)) == ("", SHOP)
        first = next(iter(app.payment_events(pid, account=SHOP)))
        assert isinstance(first, Payment.Requested) and first.account == ""
        assert isinstance(refusal(lambda: app.get_payment(pid, account="default")), PaymentNotFound)
        # Its commands (default scope) replay for the default account, and it takes new ones.
        assert app.create_payment(request, scope="default", account=SHOP).id == legacy.id
        captured = app.capture_payment(
            CapturePayment("legacy-capture", pid), scope="checkout", account=SHOP
        )
        assert captured.status is Status.CAPTURED
        assert app.account_of(list(app.payment_events(pid))[-1]) == SHOP
    finally:
        app.close()
    assert provider_calls(sandbox) == 2


class InDoubt:
    """A provider whose authorization's outcome is never seen, and which counts lookups."""

    name = "indoubt"
    honors_idempotency_keys = False

    def __init__(self) -> None:
        self.lookups = 0

    def authorize(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome:
        raise ProviderOutcomeUnknown("timed out after sending")

    def lookup(self, operation: ProviderOperation, *, timeout: float) -> ProviderOutcome | None:
        self.lookups += 1
        return None

    capture = cancel = refund = authorize


def test_another_account_never_makes_a_payment_in_doubt_ask_its_provider(
    database_url: str,
) -> None:
    """A follow-up on a payment in doubt past its lease asks the provider first; another
    account's follow-up must be refused before that."""
    provider = InDoubt()
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    app = Payments(
        env=parse_database_url(database_url).env,
        router=Router(
            {"indoubt": Route(provider, timeout=2.0, kind="indoubt")}, {"*": ["indoubt"]}
        ),
        clock=lambda: now[0],
    )
    try:
        payment = app.create_payment(create_request("order-1"), scope="checkout", account=SHOP)
        assert payment.status is Status.PROCESSING
        now[0] += timedelta(minutes=5)  # the lease is over: a follow-up would look it up
        events = stored(app)
        cancel = CancelPayment("cancel-1", str(payment.id))
        refused = refusal(lambda: app.cancel_payment(cancel, scope="intruder", account=OTHER))
        assert isinstance(refused, PaymentNotFound)
        assert (provider.lookups, stored(app)) == (0, events)
        refusal(lambda: app.cancel_payment(cancel, scope="checkout", account=SHOP))
        assert provider.lookups == 1  # the owner's does ask
    finally:
        app.close()


def test_the_event_stream_names_each_payments_account_from_the_cache_or_the_store(
    app: Payments, database_url: str
) -> None:
    mine = app.create_payment(create_request("a"), scope="checkout", account=SHOP)
    theirs = app.create_payment(create_request("b"), scope="billing", account=OTHER)
    owners = {mine.id: SHOP, theirs.id: OTHER}
    replica = Payments(env=parse_database_url(database_url).env, router=app.router)
    try:
        # From the middle of the log: the replica saw no Requested event, so it reads them.
        later = [(p, e) for p, e in replica.events_after(0) if not isinstance(e, Payment.Requested)]
        assert later
        for _, event in later:
            assert replica.account_of(event) == owners[event.originator_id]
    finally:
        replica.close()


def test_audit_show_and_export_name_the_account(
    app: Payments, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    payment = app.create_payment(create_request("order-1"), scope="checkout", account=SHOP)
    assert main(["audit", "show", str(payment.id), "--database-url", database_url]) == 0
    title = capsys.readouterr().out.splitlines()[0]
    assert title.endswith("account shop)")
    out = tmp_path / "events.jsonl"
    export = ["audit", "export", "--database-url", database_url, "--out", str(out)]
    assert main([*export, "--format", "jsonl"]) == 0
    first = next(load_export(out))
    assert (first.type, first.data["account"]) == ("Requested", SHOP)
