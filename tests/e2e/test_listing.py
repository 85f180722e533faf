"""Finding payments: ListPayments over real gRPC, on SQLite and PostgreSQL, with the real
sandbox over HTTP. Each test compares the listing to the truth computed from the payments
themselves (GetPayment, the event log), never to what the listing said before."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from adapters.sandbox import SandboxServer
from orchestrator import listing
from orchestrator.api._generated import payments_pb2 as pb
from orchestrator.application import Payments
from orchestrator.bootstrap import build_payments, load_router
from orchestrator.domain.payment import Payment
from orchestrator.listing import (
    ListingProjector,
    PaymentRow,
    from_micros,
    micros,
    rebuild,
    row_of,
)
from tests.e2e.helpers import create_request, error_reason
from tests.e2e.processes import ServerProcess
from tests.e2e.test_accounts import Served, as_
from tests.e2e.test_accounts import served as served_fixture  # noqa: F401 (registers `served`)

pytestmark = pytest.mark.timeout(300)

SHOP, OTHER = "checkout@shop", "billing@other"
REFERENCES = ["order-a", "order-b", "order-c", "order-d"]
REGIONS = ["US", "EU", "IN"]


@dataclass
class Truth:
    """Every payment as GetPayment answers it, by the caller that made it."""

    payments: dict[str, list[pb.Payment]]

    def expected(self, caller: str, keep: Callable[[pb.Payment], bool]) -> list[str]:
        chosen = [p for p in self.payments[caller] if keep(p)]
        chosen.sort(
            key=lambda p: (micros(p.created_at.ToDatetime(tzinfo=UTC)), p.payment_id), reverse=True
        )
        return [p.payment_id for p in chosen]


def make_payments(served: Served, count: int) -> Truth:
    """``count`` payments for the shop and a few for another account: authorized, captured,
    declined, canceled and refunded, over four references and three regions."""
    stub = served.stub

    def one(i: int) -> tuple[str, pb.Payment]:
        caller = OTHER if i % 10 == 0 else SHOP
        request = create_request(
            f"list-{i}",
            amount=100 + i,
            reference=REFERENCES[i % 4],
            region=REGIONS[i % 3],
            payment_method="pm_card_declined" if i % 7 == 0 else "pm_card_visa",
            capture_mode=pb.CAPTURE_MODE_AUTOMATIC if i % 2 else pb.CAPTURE_MODE_MANUAL,
        )
        payment = stub.CreatePayment(request, metadata=as_(caller))
        if payment.status == pb.PAYMENT_STATUS_AUTHORIZED and i % 4 == 0:
            cancel = pb.CancelPaymentRequest(
                idempotency_key=f"x-{i}", payment_id=payment.payment_id
            )
            stub.CancelPayment(cancel, metadata=as_(caller))
        elif payment.status == pb.PAYMENT_STATUS_CAPTURED and i % 5 == 0:
            refund = pb.RefundPaymentRequest(
                idempotency_key=f"r-{i}", payment_id=payment.payment_id, amount=50
            )
            stub.RefundPayment(refund, metadata=as_(caller))
        found = stub.GetPayment(
            pb.GetPaymentRequest(payment_id=payment.payment_id), metadata=as_(caller)
        )
        return caller, found

    with ThreadPoolExecutor(max_workers=8) as pool:
        made = list(pool.map(one, range(count)))
    payments: dict[str, list[pb.Payment]] = {SHOP: [], OTHER: []}
    for caller, payment in made:
        payments[caller].append(payment)
    return Truth(payments)


def catch_up(served: Served) -> None:
    ListingProjector(served.app).catch_up(served.app.recorder.max_notification_id() or 0)


def list_all(
    served: Served, caller: str, page_size: int = 7, **filters: Any
) -> Iterator[pb.ListPaymentsResponse]:
    token = ""
    while True:
        request = pb.ListPaymentsRequest(page_size=page_size, page_token=token, **filters)
        page = served.stub.ListPayments(request, metadata=as_(caller))
        yield page
        if not page.next_page_token:
            return
        token = page.next_page_token


def listed(served: Served, caller: str, page_size: int = 7, **filters: Any) -> list[str]:
    ids = []
    for page in list_all(served, caller, page_size, **filters):
        assert len(page.payments) <= min(page_size or 50, 500)
        ids.extend(p.payment_id for p in page.payments)
    return ids


def stamp(moment: datetime) -> Timestamp:
    value = Timestamp()
    value.FromDatetime(moment)
    return value


@pytest.fixture(name="served")
def _served(served_fixture: Served) -> Served:  # noqa: F811 (the fixture's name)
    """test_accounts' server: callers named by a header, each with its account."""
    return served_fixture


@pytest.fixture
def truth(served: Served) -> Truth:
    made = make_payments(served, 240)
    catch_up(served)
    return made


def test_every_filter_pages_through_exactly_the_matching_payments_newest_first(
    served: Served, truth: Truth
) -> None:
    mine = truth.payments[SHOP]
    statuses = {p.status for p in mine}
    assert len(statuses) >= 5, statuses  # the filters below are not all trivially full
    created = sorted(micros(p.created_at.ToDatetime(tzinfo=UTC)) for p in mine)
    start, end = from_micros(created[60]), from_micros(created[150])
    cases: list[tuple[dict[str, Any], Callable[[pb.Payment], bool]]] = [
        ({}, lambda p: True),
        ({"reference": "order-b"}, lambda p: p.reference == "order-b"),
        ({"region": "EU"}, lambda p: p.region == "EU"),
        ({"provider": "sandbox"}, lambda p: p.provider == "sandbox"),
        ({"provider": "nobody"}, lambda p: False),
        ({"reference": "order-nobody"}, lambda p: False),
        (
            {"created_after": stamp(start), "created_before": stamp(end)},
            lambda p: start <= p.created_at.ToDatetime(tzinfo=UTC) < end,
        ),
        (
            {"status": pb.PAYMENT_STATUS_DECLINED, "region": "US", "reference": "order-a"},
            lambda p: (
                (p.status, p.region, p.reference) == (pb.PAYMENT_STATUS_DECLINED, "US", "order-a")
            ),
        ),
    ]
    cases += [({"status": s}, lambda p, s=s: p.status == s) for s in sorted(statuses)]
    for filters, keep in cases:
        expected = truth.expected(SHOP, keep)
        assert listed(served, SHOP, **filters) == expected, filters
    assert listed(served, SHOP, page_size=0) == truth.expected(SHOP, lambda p: True)  # default 50
    assert listed(served, SHOP, page_size=100000) == truth.expected(SHOP, lambda p: True)


def test_each_listed_payment_shows_what_get_payment_shows(served: Served, truth: Truth) -> None:
    by_id = {p.payment_id: p for p in truth.payments[SHOP]}
    rows = [row for page in list_all(served, SHOP, 50) for row in page.payments]
    assert len(rows) == len(by_id)
    for row in rows:
        payment = by_id[row.payment_id]
        assert (row.status, row.amount, row.currency, row.region, row.provider, row.reference,
                row.version, row.created_at, row.updated_at) == (
            payment.status, payment.amount, payment.currency, payment.region, payment.provider,
            payment.reference, payment.version, payment.created_at, payment.updated_at,
        )  # fmt: skip


def test_another_account_sees_only_its_own_and_a_new_account_sees_none(
    served: Served, truth: Truth
) -> None:
    assert listed(served, OTHER) == truth.expected(OTHER, lambda p: True)
    assert len(truth.payments[OTHER]) == 24
    assert listed(served, "nobody@empty") == []
    assert listed(served, "nobody@empty", reference="order-a") == []


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error_reason(error.value)


def test_bad_page_tokens_and_bad_filters_are_refused_with_a_reason(
    served: Served, truth: Truth
) -> None:
    first = served.stub.ListPayments(
        pb.ListPaymentsRequest(page_size=5, reference="order-a"), metadata=as_(SHOP)
    )
    token = first.next_page_token
    assert token

    def ask(caller: str = SHOP, **fields: Any) -> Callable[[], object]:
        return lambda: served.stub.ListPayments(
            pb.ListPaymentsRequest(**fields), metadata=as_(caller)
        )

    bad = "INVALID_ARGUMENT"
    edited = token[:-3] + ("AAA" if token[-3:] != "AAA" else "BBB")
    for fields in (
        {"page_token": "not-a-token"},
        {"page_token": edited, "reference": "order-a"},
        {"page_token": token, "reference": "order-b"},  # another filter
        {"page_token": token},  # no filter
    ):
        assert refused(ask(**fields)) == (grpc.StatusCode[bad], "INVALID_PAGE_TOKEN"), fields
    assert refused(ask(OTHER, page_token=token, reference="order-a")) == (
        grpc.StatusCode[bad], "INVALID_PAGE_TOKEN",
    )  # fmt: skip
    assert refused(ask(page_size=-1)) == (grpc.StatusCode[bad], "INVALID_PAGE_SIZE")
    assert refused(ask(status=99)) == (grpc.StatusCode[bad], "INVALID_STATUS")
    now = datetime.now(UTC)
    assert refused(ask(created_after=stamp(now), created_before=stamp(now))) == (
        grpc.StatusCode[bad], "INVALID_CREATED_RANGE",
    )  # fmt: skip
    assert refused(ask(reference="x" * 201)) == (grpc.StatusCode[bad], "INVALID_FILTER")
    assert refused(ask(created_after=Timestamp(seconds=10**15))) == (
        grpc.StatusCode[bad], "INVALID_CREATED_RANGE",
    )  # fmt: skip
    # The token still works with its own filter: the next page, then the rest.
    rest = served.stub.ListPayments(
        pb.ListPaymentsRequest(page_size=1000, reference="order-a", page_token=token),
        metadata=as_(SHOP),
    )
    ids = [p.payment_id for p in first.payments] + [p.payment_id for p in rest.payments]
    assert ids == truth.expected(SHOP, lambda p: p.reference == "order-a")
    assert rest.next_page_token == ""


def test_rebuild_and_replicas_racing_give_the_same_rows(
    served: Served, truth: Truth, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = served.app
    before = app.listing.rows()
    assert len(before) == 240
    rebuild(app)
    assert app.listing.rows() == before
    # Two replicas' projectors start from nothing at once, a page of 50 events at a time.
    monkeypatch.setattr(listing, "PAGE", 50)
    app.listing.clear()
    assert app.listing.rows() == []
    head = app.recorder.max_notification_id() or 0
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            barrier.wait()
            projector = ListingProjector(app)
            projector.catch_up(head)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=replica) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert app.listing.rows() == before
    assert app.listing.position() == head
    assert app.listing.lag() == 0


def truth_from_the_log(app: Payments) -> list[PaymentRow]:
    """Every payment the log holds, each read whole: what the listing must show."""
    ids = {
        event.originator_id
        for page in app.event_pages()
        for _, event in page
        if isinstance(event, Payment.Requested)
    }
    return sorted((row_of(app, app.get_payment(pid)) for pid in ids), key=lambda r: r.payment_id)


def test_the_listing_catches_up_after_a_kill_9_mid_stream_with_no_row_lost_or_doubled(
    database_url: str, sandbox: SandboxServer, tmp_path: Path
) -> None:
    first = ServerProcess(database_url, sandbox.url, tmp_path / "first.log")
    second: ServerProcess | None = None
    app = build_payments(database_url, load_router(None, sandbox.url))
    stop = threading.Event()
    created: list[str] = []
    try:
        first.wait_listening()
        channel, stub = first.stub()

        def write(writer: int) -> None:
            i = 0
            while not stop.is_set():
                request = create_request(f"crash-{writer}-{i}", reference=f"ref-{i % 3}")
                with contextlib.suppress(grpc.RpcError):  # killed under this call
                    created.append(stub.CreatePayment(request, timeout=5).payment_id)
                i += 1

        writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for thread in writers:
            thread.start()
        # Kill it while it writes, once its projector has recorded some rows (mid-stream).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (len(created) < 80 or not app.listing.position()):
            time.sleep(0.05)
        first.kill()
        stop.set()
        for thread in writers:
            thread.join(30)
        channel.close()
        assert len(created) >= 80
        behind_at_kill = app.listing.lag()

        second = ServerProcess(database_url, sandbox.url, tmp_path / "second.log")
        second.wait_listening()
        channel, stub = second.stub()
        for i in range(30):
            stub.CreatePayment(create_request(f"after-{i}", reference=f"ref-{i % 3}"), timeout=10)
        deadline = time.monotonic() + 60
        while True:
            truth, rows = truth_from_the_log(app), app.listing.rows()
            if rows == truth or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rows == truth, f"{behind_at_kill} behind at the kill"
        assert len(truth) >= 110
        assert {str(r.payment_id) for r in truth} >= set(created)
        pages = []
        token = ""
        while True:
            page = stub.ListPayments(pb.ListPaymentsRequest(page_size=40, page_token=token))
            pages.extend(p.payment_id for p in page.payments)
            if not (token := page.next_page_token):
                break
        newest_first = sorted(truth, key=lambda r: (r.created_at, r.payment_id), reverse=True)
        assert pages == [str(r.payment_id) for r in newest_first]
        channel.close()
    finally:
        stop.set()
        first.kill()
        if second is not None:
            second.stop()
        app.close()


def admin(command: str, database_url: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "admin",
            command,
            "--database-url",
            database_url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_payorch_admin_rebuild_listing_gives_the_same_rows_and_status_says_it_caught_up(
    served: Served, truth: Truth, database_url: str
) -> None:
    app = served.app
    before = app.listing.rows()
    with app.listing.datastore.transaction(commit=True) as cursor:  # a row gone wrong
        cursor.execute(f"UPDATE {app.listing.name} SET status = 'failed', version = 99")
    assert app.listing.rows() != before
    printed = admin("rebuild-listing", database_url)
    assert "rebuilt the payment listing: 240 payments" in printed
    assert app.listing.rows() == before
    assert "0 behind the log's head" in admin("listing-status", database_url)
    served.stub.CreatePayment(create_request("one-more"), metadata=as_(SHOP))
    assert "0 behind" not in admin("listing-status", database_url)
