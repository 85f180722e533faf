"""The account index: payment id -> account, bounded, reading the store only on a miss."""

from __future__ import annotations

from uuid import UUID, uuid4

from orchestrator import accounts
from orchestrator.accounts import AccountIndex
from orchestrator.api import identity


def test_an_account_is_read_from_the_store_once_then_known() -> None:
    reads: list[UUID] = []

    def load(payment_id: UUID) -> str:
        reads.append(payment_id)
        return "shop"

    index = AccountIndex(load, maxsize=2)
    pid = uuid4()
    assert [index.get(pid), index.get(pid)] == ["shop", "shop"]
    assert reads == [pid]


def test_the_index_keeps_the_most_recently_used_within_its_bound() -> None:
    reads: list[UUID] = []
    index = AccountIndex(lambda pid: reads.append(pid) or "shop", maxsize=2)
    first, second, third = uuid4(), uuid4(), uuid4()
    index.put(first, "shop")
    index.put(second, "market")
    index.get(first)  # used: the second is now the oldest
    index.put(third, "shop")
    assert (index.get(first), index.get(third), reads) == ("shop", "shop", [])
    assert index.get(second) == "shop"  # evicted: read again (from this test's store)
    assert reads == [second]


def test_the_default_account_is_the_anonymous_callers() -> None:
    assert identity.ANONYMOUS.account == accounts.DEFAULT_ACCOUNT
