"""``payorch audit verify``: a clean log passes; an UPDATE, a DELETE or an INSERT made directly
in SQLite or PostgreSQL is detected and named; broken money invariants are found on replay."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
import pytest

from orchestrator.application import Payments
from orchestrator.audit.chain import ChainedRecorder
from orchestrator.audit.verify import Report, check_payments, verify
from orchestrator.cli import main
from orchestrator.domain.payment import Cause, Payment
from orchestrator.store import parse_database_url
from tests.audit.helpers import a_few_payments
from tests.unit.domain.test_payment import authorized, captured, requested

KEY = "a chain key finance and payorch hold, the database does not"


@pytest.fixture(autouse=True)
def chain_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAYORCH_AUDIT_CHAIN_KEY", KEY)


def run_verify(database_url: str, *extra: str) -> int:
    return main(["audit", "verify", "--database-url", database_url, *extra])


class Store:
    """Direct SQL on the store, around payorch: what a person with database access could do."""

    def __init__(self, database_url: str) -> None:
        self.config = parse_database_url(database_url)
        self.postgres = self.config.kind == "postgres"
        self.events = "payments_events" if self.postgres else "stored_events"
        self.chain = f"{self.events}_chain"

    @contextmanager
    def cursor(self) -> Iterator[Any]:
        if self.postgres:
            with psycopg.connect(**self.config.conninfo, autocommit=True) as conn:  # type: ignore[arg-type]
                yield conn.cursor()
        else:
            conn = sqlite3.connect(self.config.env["SQLITE_DBNAME"], isolation_level=None)
            try:
                yield conn.cursor()
            finally:
                conn.close()

    def sql(self, statement: str, *params: Any) -> list[Any]:
        if not self.postgres:
            statement = statement.replace("%s", "?")
        with self.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall()) if cur.description else []

    def key(self, payment_id: UUID) -> Any:
        return payment_id if self.postgres else payment_id.hex

    def delete(self, table: str, payment_id: UUID, version: int) -> None:
        self.sql(
            f"DELETE FROM {table} WHERE originator_id = %s AND originator_version = %s",
            self.key(payment_id),
            version,
        )

    def set_state(self, payment_id: UUID, version: int, state: bytes) -> None:
        self.sql(
            f"UPDATE {self.events} SET state = %s "
            "WHERE originator_id = %s AND originator_version = %s",
            state,
            self.key(payment_id),
            version,
        )

    def state(self, payment_id: UUID, version: int) -> bytes:
        ((state,),) = self.sql(
            f"SELECT state FROM {self.events} WHERE originator_id = %s AND originator_version = %s",
            self.key(payment_id),
            version,
        )
        return bytes(state)


def test_a_clean_log_verifies_and_says_what_it_checked(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a_few_payments(app)
    assert run_verify(database_url) == 0
    out = capsys.readouterr().out
    assert "(3 payments replayed)" in out
    assert "refunded never more than captured" in out
    assert "no findings: the log is intact and its money adds up" in out


def test_an_update_made_directly_in_the_database_is_named(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manual, _, _ = a_few_payments(app)
    store = Store(database_url)
    captured_state = store.state(manual.id, 5)  # the Captured event: 600 of 1000
    assert b'"amount":600' in captured_state
    forged = captured_state.replace(b'"amount":600', b'"amount":6000')
    store.set_state(manual.id, 5, forged)
    assert run_verify(database_url) == 1
    out = capsys.readouterr().out
    assert f"CHANGED        payment {manual.id} version 5 (link " in out
    assert "the event's content differs from what was recorded" in out
    # Replayed, the forged capture also breaks the money: both are reported.
    assert f"OVER-CAPTURED  payment {manual.id} version 5" in out


def test_a_delete_made_directly_in_the_database_is_named(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manual, _, _ = a_few_payments(app)
    store = Store(database_url)
    store.delete(store.events, manual.id, 6)
    assert run_verify(database_url) == 1
    out = capsys.readouterr().out
    assert f"DELETED        event of {manual.id} version 6 (link " in out
    assert "the event this link chains is gone from the log" in out
    assert f"VERSION-GAP    payment {manual.id} version 7" in out


def test_a_delete_of_an_event_and_its_link_breaks_the_chain(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manual, _, _ = a_few_payments(app)
    store = Store(database_url)
    ((seq,),) = store.sql(
        f"SELECT seq FROM {store.chain} WHERE originator_id = %s AND originator_version = %s",
        store.key(manual.id),
        6,
    )
    for table in (store.events, store.chain):
        store.delete(table, manual.id, 6)
    assert run_verify(database_url) == 1
    out = capsys.readouterr().out
    assert f"DELETED        links {seq}..{seq}: 1 event(s) and their links were removed" in out


def test_an_insert_made_directly_in_the_database_is_named(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    manual, _, _ = a_few_payments(app)
    store = Store(database_url)
    # A second refund of 200, copied from the real one and given the next version.
    refunded = store.state(manual.id, 7).replace(
        b'"originator_version":7', b'"originator_version":8'
    )
    ((topic,),) = store.sql(
        f"SELECT topic FROM {store.events} WHERE originator_id = %s AND originator_version = 7",
        store.key(manual.id),
    )
    store.sql(
        f"INSERT INTO {store.events} (originator_id, originator_version, topic, state) "
        "VALUES (%s, %s, %s, %s)",
        store.key(manual.id),
        8,
        topic,
        refunded,
    )
    assert run_verify(database_url) == 1
    out = capsys.readouterr().out
    assert f"INSERTED       payment {manual.id} version 8 (position " in out
    assert "Refunded is in the log but not in the chain: written around payorch" in out


def test_a_forged_link_without_the_key_is_caught(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone who edits an event and recomputes its digest still cannot make its hash."""
    from orchestrator.audit.chain import content_digest

    manual, _, _ = a_few_payments(app)
    store = Store(database_url)
    ((topic,),) = store.sql(
        f"SELECT topic FROM {store.events} WHERE originator_id = %s AND originator_version = 5",
        store.key(manual.id),
    )
    forged = store.state(manual.id, 5).replace(b'"amount":600', b'"amount":60')
    store.set_state(manual.id, 5, forged)
    store.sql(
        f"UPDATE {store.chain} SET digest = %s WHERE originator_id = %s AND originator_version = 5",
        content_digest(manual.id, 5, topic, forged),
        store.key(manual.id),
    )
    assert run_verify(database_url) == 1
    out = capsys.readouterr().out
    assert f"CHAIN-BROKEN   payment {manual.id} version 5 (link " in out
    assert "CHANGED" not in out  # the content matches the forged digest; the hash does not


def test_a_cut_of_the_newest_events_is_caught_with_the_head_kept_from_before(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    a_few_payments(app)
    recorder = app.recorder
    assert isinstance(recorder, ChainedRecorder)
    seq, head = recorder.chain_head()
    expect = f"{seq}:{head.hex()}"
    assert run_verify(database_url, "--expect-head", expect) == 0
    store = Store(database_url)
    ((oid, version),) = store.sql(
        f"SELECT originator_id, originator_version FROM {store.chain} WHERE seq = %s",
        seq,
    )
    for table in (store.events, store.chain):
        store.delete(table, UUID(str(oid)), version)
    capsys.readouterr()
    assert run_verify(database_url, "--expect-head", expect) == 1
    assert f"TRUNCATED      link {seq}: the expected head is gone" in capsys.readouterr().out


def test_a_malformed_expected_head_is_refused(database_url: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_verify(database_url, "--expect-head", "12:nothex")
    assert exit_.value.code == 2


def test_every_save_extends_one_chain_even_from_several_threads(
    app: Payments, database_url: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.audit.helpers import create

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda n: create(app, f"concurrent-{n}"), range(24)))
    recorder = app.recorder
    assert isinstance(recorder, ChainedRecorder)
    report = verify(recorder, app.mapper)
    assert report.clean, report.lines()
    assert report.links == report.head[0] > 24 * 3


# --- the money invariants, on events no command would ever make -----------------------------


def replay(app: Payments, payment: Payment) -> Report:
    report = Report()
    stored = [app.mapper.to_stored_event(e) for e in payment.collect_events()]
    check_payments(((n, s) for n, s in enumerate(stored, 1)), app.mapper.to_domain_event, report)
    return report


CAUSE = Cause("default", "k").as_data()


def test_a_capture_beyond_the_authorization_is_found(app: Payments) -> None:
    payment = captured(1000)
    payment._captured(sequence=2, amount=5000, provider_reference="x", caused_by=CAUSE)
    (finding,) = replay(app, payment).findings
    assert finding.kind == "over-captured"
    assert finding.detail == "after Captured: captured 6000 of 1000 authorized"


def test_a_refund_beyond_the_capture_is_found(app: Payments) -> None:
    payment = authorized(1000)
    payment._refunded(sequence=1, amount=10, provider_reference="x", caused_by=CAUSE)
    (finding,) = replay(app, payment).findings
    assert finding.kind == "over-refunded"
    assert finding.detail == "after Refunded: refunded 10 of 0 captured"


def test_a_terminal_state_left_is_found(app: Payments) -> None:
    payment = requested()
    payment.record_decline(1, decline_code="card_declined", message="", caused_by=Cause("d", "k"))
    payment._authorized(sequence=1, provider_reference="x", captured_amount=0, caused_by=CAUSE)
    (finding,) = replay(app, payment).findings
    assert finding.kind == "left-terminal"
    assert finding.detail == "Authorized after the payment was declined: changed it"


def test_a_provider_reversal_may_leave_a_refunded_payment(app: Payments) -> None:
    payment = captured(1000)
    op = payment.start_refund(None, reason="", deadline=payment.operations[0].deadline,
                              cause=Cause("d", "r"))  # fmt: skip
    payment.record_success(
        op.sequence, provider_reference="re", amount=1000, caused_by=Cause("d", "r")
    )
    payment.reverse(op.sequence, message="refund failed", caused_by=Cause("d", "r"))
    assert payment.status.value == "captured"
    assert replay(app, payment).clean


def test_an_edited_command_record_is_named_as_a_command(
    app: Payments, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from orchestrator.domain.command import command_id

    a_few_payments(app)
    store = Store(database_url)
    cid = command_id("default", "capture-1")
    store.set_state(cid, 1, store.state(cid, 1).replace(b"capture-1", b"capture-9"))
    assert run_verify(database_url) == 1
    assert f"CHANGED        Command {cid} version 1 (link " in capsys.readouterr().out


def test_verify_reads_the_log_a_page_at_a_time_and_misses_nothing(
    app: Payments, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import orchestrator.audit.chain

    manual, _, _ = a_few_payments(app)
    store = Store(database_url)
    store.delete(store.events, manual.id, 6)
    whole = verify(app.recorder, app.mapper)  # type: ignore[arg-type]
    monkeypatch.setattr(orchestrator.audit.chain, "PAGE", 3)
    paged = verify(app.recorder, app.mapper)  # type: ignore[arg-type]
    assert (paged.events, paged.links, paged.payments) == (whole.events, whole.links, 3)
    assert paged.findings == whole.findings
    assert [f.kind for f in paged.findings] == ["deleted", "version-gap"]
