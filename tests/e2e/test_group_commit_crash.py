"""kill -9 in the middle of a group commit: the batch's transaction, all rows written but not
committed, disappears whole; every save a caller was told about is stored; the chain still
verifies, and the store takes new writes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import psycopg
import pytest

from orchestrator.application import Payments
from orchestrator.audit.verify import verify
from orchestrator.bootstrap import build_payments
from orchestrator.routing import Router
from tests.integration.test_group_commit import intent

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


def run_until_mid_batch(database_url: str) -> tuple[list[UUID], list[UUID]]:
    """Starts the child, kills it (SIGKILL) once it holds a batch open; returns the payments
    it acknowledged and those of the batch it held."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.group_commit_child", database_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[list[str]] = []
    held = threading.Event()

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.split())
            if line.startswith("mid-batch"):
                held.set()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        if not held.wait(60):
            raise AssertionError("the child never held a batch open")
        if database_url.startswith("postgresql"):
            wait_for_the_held_statement(database_url)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        reader.join(10)
        if child.stderr is not None:
            if not held.is_set():
                print(child.stderr.read())  # why, in pytest's captured output
            child.stderr.close()
    acked = [UUID(words[1]) for words in lines if words[0] == "acked"]
    (batch,) = [words[1:] for words in lines if words[0] == "mid-batch"]
    return acked, [UUID(i) for i in batch]


def wait_for_the_held_statement(database_url: str) -> None:
    """A batch sent in one round trip is held by the server: wait until it runs the
    ``pg_sleep`` queued after the batch's rows, so that they are written when the kill
    comes (statements run in the order sent)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for _ in range(200):
            running = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                "AND query = 'SELECT pg_sleep(60)' AND datname = current_database()"
            ).fetchone()
            if running and running[0]:
                return
            time.sleep(0.05)
    raise AssertionError("the held batch never reached its pg_sleep")


def stored_versions(app: Payments) -> dict[UUID, list[int]]:
    versions: dict[UUID, list[int]] = {}
    position = 0
    while page := app.recorder.select_notifications(
        start=position, limit=1000, inclusive_of_start=False
    ):
        for n in page:
            versions.setdefault(UUID(str(n.originator_id)), []).append(n.originator_version)
        position = page[-1].id
    return versions


def test_kill_9_mid_batch_loses_only_unacknowledged_saves_and_the_chain_verifies(
    database_url: str,
) -> None:
    acked, held = run_until_mid_batch(database_url)
    assert len(held) >= 2  # a batch, not a lone save
    assert len(acked) >= 10  # batches did commit before it
    assert not set(acked) & set(held)  # nobody was told before the commit

    app = build_payments(database_url, Router({}, {}))
    try:
        versions = stored_versions(app)
        # Every acknowledged save is there, whole; none of the held batch is.
        for payment_id in acked:
            assert versions.get(payment_id) == [1, 2]
        assert not set(held) & set(versions)
        # What committed committed whole: both events of each save, never one.
        assert all(v == [1, 2] for v in versions.values())
        assert verify(app.recorder, app.mapper).clean  # type: ignore[arg-type]
        # The store is not wedged: a new save commits and extends the chain.
        app.save(intent())
        report = verify(app.recorder, app.mapper)  # type: ignore[arg-type]
        assert report.clean
        assert report.links == sum(len(v) for v in versions.values()) + 2
    finally:
        app.close()
