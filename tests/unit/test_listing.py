"""The listing's page tokens, page sizes and filters, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from orchestrator.domain.errors import InvalidArgument
from orchestrator.domain.payment import Status
from orchestrator.listing import (
    MAX_PAGE_SIZE,
    PaymentFilter,
    PaymentRow,
    from_micros,
    issue_page_token,
    micros,
    page_size_of,
    read_page_token,
)

NOW = datetime(2026, 12, 7, 12, 0, 0, 123456, tzinfo=UTC)


def row(created: datetime = NOW) -> PaymentRow:
    return PaymentRow(uuid4(), "shop", "order-1", Status.CAPTURED, "sandbox", "US", 100, "USD",
                      created, created, 3)  # fmt: skip


def test_a_token_gives_back_the_last_rows_position_for_the_same_filter_and_account() -> None:
    last = row()
    digest = PaymentFilter(reference="order-1").digest("shop")
    assert read_page_token(issue_page_token(last, digest), digest) == (
        micros(NOW), last.payment_id,
    )  # fmt: skip


@pytest.mark.parametrize(
    "other",
    [
        PaymentFilter(reference="order-2").digest("shop"),
        PaymentFilter(reference="order-1", status=Status.CAPTURED).digest("shop"),
        PaymentFilter(reference="order-1").digest("other"),
        PaymentFilter().digest("shop"),
    ],
)
def test_a_token_is_refused_with_another_filter_or_account(other: str) -> None:
    token = issue_page_token(row(), PaymentFilter(reference="order-1").digest("shop"))
    with pytest.raises(InvalidArgument) as refused:
        read_page_token(token, other)
    assert refused.value.reason == "INVALID_PAGE_TOKEN"


def test_an_edited_or_made_up_token_is_refused() -> None:
    digest = PaymentFilter().digest("shop")
    token = issue_page_token(row(), digest)
    for bad in ("", "x", "====", token[:-1], token[:10] + "A" + token[11:], token + "AA"):
        if bad == token:
            continue
        with pytest.raises(InvalidArgument) as refused:
            read_page_token(bad, digest)
        assert refused.value.reason == "INVALID_PAGE_TOKEN", bad


def test_page_sizes_default_cap_and_refuse_negatives() -> None:
    assert page_size_of(0) == 50
    assert page_size_of(7) == 7
    assert page_size_of(10**6) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument) as refused:
        page_size_of(-1)
    assert refused.value.reason == "INVALID_PAGE_SIZE"


def test_created_range_must_not_be_empty_and_filters_are_bounded() -> None:
    PaymentFilter(created_from=NOW, created_before=NOW + timedelta(microseconds=1)).validated()
    with pytest.raises(InvalidArgument) as refused:
        PaymentFilter(created_from=NOW, created_before=NOW).validated()
    assert refused.value.reason == "INVALID_CREATED_RANGE"
    with pytest.raises(InvalidArgument) as refused:
        PaymentFilter(region="x" * 201).validated()
    assert (refused.value.reason, refused.value.field) == ("INVALID_FILTER", "region")


def test_microseconds_are_exact_both_ways() -> None:
    assert from_micros(micros(NOW)) == NOW
    assert micros(NOW) % 1_000_000 == 123456
