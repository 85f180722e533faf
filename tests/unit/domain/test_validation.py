from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from types import MappingProxyType

import pytest

from orchestrator.domain import validation
from orchestrator.domain.errors import InvalidArgument
from orchestrator.domain.validation import (
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY,
    MAX_METADATA_VALUE,
    capture_mode,
    free_text,
    idempotency_key,
    metadata,
    optional_amount,
    payment_method,
    reference,
    region,
)

PAN = "4242424242424242"
CARD_TEXTS = [
    PAN,
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "card 4242\u00a04242\u00a04242\u00a04242 here",
    "".join(chr(0xFF10 + int(digit)) for digit in PAN),  # full-width digits
]


def refused(check: Callable[[], object]) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as excinfo:
        check()
    return excinfo.value


def assert_no_card_digits(error: InvalidArgument, text: str) -> None:
    assert error.reason == "CARD_DATA_NOT_ALLOWED"
    assert text not in error.message
    assert not re.search(r"\d{4}", error.message)
    assert "4242" not in error.message and "1111" not in error.message
    assert not re.search(r"\d{4}", error.field)


def assert_card_data_refused(check: Callable[[str], object], field: str) -> None:
    for text in CARD_TEXTS:
        error = refused(lambda text=text: check(text))  # type: ignore[misc]
        assert error.field == field
        assert_no_card_digits(error, text)
        assert "raw card numbers are never accepted" in error.message
        assert "pm_" in error.message


# --- idempotency_key ---


@pytest.mark.parametrize(
    "value",
    ["k", "a" * 255, "order-42:create", "with spaces and ~!@#$%^&*()", " ", "~" * 10],
)
def test_idempotency_keys_of_printable_ascii_are_kept_exactly(value: str) -> None:
    assert idempotency_key(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "a" * 256, "a" * 10_000, "tab\there", "new\nline", "nul\x00", "del\x7f", "café", "😀"],
    ids=["empty", "256", "10000", "tab", "newline", "nul", "del", "accent", "emoji"],
)
def test_idempotency_keys_outside_the_rules_are_refused(value: str) -> None:
    error = refused(lambda: idempotency_key(value))
    assert (error.field, error.reason) == ("idempotency_key", "INVALID_IDEMPOTENCY_KEY")


def test_idempotency_key_refusals_echo_at_most_thirty_two_characters() -> None:
    for value in ["A" * 32 + "B" * 300 + "\x01", "A" * 32 + "B" * 300]:
        error = refused(lambda value=value: idempotency_key(value))  # type: ignore[misc]
        assert "B" not in error.message
        assert "A" * 33 not in error.message


def test_an_idempotency_key_refusal_says_which_character_is_wrong() -> None:
    error = refused(lambda: idempotency_key("abc\x07def"))
    assert "U+0007" in error.message and "index 3" in error.message


def test_a_non_string_idempotency_key_is_refused() -> None:
    error = refused(lambda: idempotency_key(42))  # type: ignore[arg-type]
    assert error.reason == "INVALID_IDEMPOTENCY_KEY"


# --- payment_method ---


@pytest.mark.parametrize(
    "value", ["pm_1NxYzAbCdEfGhIj", "tok_visa", "p", "x" * 255, "src_123-456.789/abc"]
)
def test_provider_tokens_are_accepted(value: str) -> None:
    assert payment_method(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "x" * 256, "pm 123", "pm_123\n", "\tpm_123", "pm_ä", "pm_\x00"],
    ids=["empty", "256", "space", "newline", "tab", "non-ascii", "nul"],
)
def test_payment_methods_outside_the_rules_are_refused(value: str) -> None:
    error = refused(lambda: payment_method(value))
    assert (error.field, error.reason) == ("payment_method", "INVALID_PAYMENT_METHOD")


def test_a_card_number_as_payment_method_is_refused_without_echoing_it() -> None:
    assert_card_data_refused(payment_method, "payment_method")


@pytest.mark.parametrize("value", ["pm_" + PAN, PAN + " " * 300, "x" * 300 + PAN])
def test_card_data_is_refused_as_such_even_when_other_rules_also_fail(value: str) -> None:
    error = refused(lambda: payment_method(value))
    assert_no_card_digits(error, value)


# --- region ---


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("US", "US"),
        ("us", "US"),
        ("eu", "EU"),
        ("In", "IN"),
        ("eu-west_1", "EU-WEST_1"),
        ("X", "X"),
        ("a" * 32, "A" * 32),
    ],
)
def test_regions_are_case_insensitive_and_stored_upper_case(value: str, stored: str) -> None:
    assert region(value) == stored


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 33,
        "1US",
        "-US",
        "_US",
        "U S",
        "US ",
        "US\n",
        "US.EAST",
        "\u017fg",  # long s upper-cases to ASCII "S": still not an ASCII region name
        "\u0131n",  # dotless i upper-cases to ASCII "I"
        "ÉU",
    ],
)
def test_regions_outside_the_pattern_are_refused(value: str) -> None:
    error = refused(lambda: region(value))
    assert (error.field, error.reason) == ("region", "INVALID_REGION")


# --- reference ---


@pytest.mark.parametrize(
    "value", ["", "ORD-2024-000123", "r" * 255, "Bestellung für Jürgen", "注文 42", PAN]
)
def test_references_up_to_255_characters_without_controls_are_kept(value: str) -> None:
    # A reference is an opaque identifier: long numbers there are not scanned as card data.
    assert reference(value) == value


@pytest.mark.parametrize(
    "value",
    ["r" * 256, "line\nbreak", "tab\t", "nul\x00", "del\x7f", "c1\x85", "bidi\u202eevil"],
    ids=["256", "newline", "tab", "nul", "del", "c1", "bidi-override"],
)
def test_references_too_long_or_with_control_characters_are_refused(value: str) -> None:
    error = refused(lambda: reference(value))
    assert (error.field, error.reason) == ("reference", "INVALID_REFERENCE")


# --- metadata ---


def test_metadata_comes_back_as_a_plain_dict_sorted_by_key() -> None:
    checked = metadata(MappingProxyType({"b": "2", "a": "1", "c": ""}))
    assert type(checked) is dict
    assert list(checked.items()) == [("a", "1"), ("b", "2"), ("c", "")]


def test_empty_metadata_is_fine() -> None:
    assert metadata({}) == {}


def test_fifty_entries_are_accepted_and_fifty_one_refused() -> None:
    fifty = {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES)}
    assert len(metadata(fifty)) == 50
    error = refused(lambda: metadata({**fifty, "one_more": "v"}))
    assert (error.field, error.reason) == ("metadata", "INVALID_METADATA")
    assert "51" in error.message and "50" in error.message


def test_keys_of_forty_characters_are_accepted_and_forty_one_refused() -> None:
    assert metadata({"k" * MAX_METADATA_KEY: "v"}) == {"k" * 40: "v"}
    long_key = "k" * 40 + "X"
    error = refused(lambda: metadata({long_key: "v"}))
    assert (error.field, error.reason) == ("metadata." + "k" * 40, "INVALID_METADATA")


def test_a_very_long_key_is_cut_short_in_the_field_and_message() -> None:
    long_key = "k" * 40 + "X" * 1000
    error = refused(lambda: metadata({long_key: "v"}))
    assert error.field == "metadata." + "k" * 40
    assert "X" not in error.message


def test_an_empty_key_is_refused() -> None:
    error = refused(lambda: metadata({"": "v"}))
    assert (error.field, error.reason) == ("metadata", "INVALID_METADATA")


def test_values_of_500_characters_are_accepted_and_501_refused() -> None:
    assert metadata({"note": "v" * MAX_METADATA_VALUE}) == {"note": "v" * 500}
    error = refused(lambda: metadata({"note": "v" * 501}))
    assert (error.field, error.reason) == ("metadata.note", "INVALID_METADATA")


@pytest.mark.parametrize(
    "values",
    [{"k": 1}, {"k": None}, {1: "v"}, ["k", "v"], "k=v"],
    ids=["int-value", "none-value", "int-key", "list", "string"],
)
def test_metadata_that_is_not_a_map_of_strings_is_refused(values: object) -> None:
    error = refused(lambda: metadata(values))  # type: ignore[arg-type]
    assert error.reason == "INVALID_METADATA"
    assert error.field.startswith("metadata")


def test_a_card_number_in_a_metadata_value_is_refused_without_echoing_it() -> None:
    assert_card_data_refused(lambda text: metadata({"note": text}), "metadata.note")


def test_a_card_number_in_a_metadata_key_is_refused_without_echoing_it() -> None:
    for text in CARD_TEXTS:
        error = refused(lambda text=text: metadata({text: "v"}))  # type: ignore[misc]
        assert error.field == "metadata"
        assert_no_card_digits(error, text)


def test_card_data_wins_over_length_in_a_metadata_value() -> None:
    error = refused(lambda: metadata({"note": PAN + " " * 600}))
    assert_no_card_digits(error, PAN)


# --- free_text ---


@pytest.mark.parametrize("value", ["", "customer asked", "r" * 500, "order ORD-2024-000123"])
def test_free_text_within_the_limit_is_kept(value: str) -> None:
    assert free_text(value, field="reason") == value


def test_free_text_over_the_limit_is_refused_with_a_reason_named_after_the_field() -> None:
    error = refused(lambda: free_text("r" * 501, field="reason"))
    assert (error.field, error.reason) == ("reason", "INVALID_REASON")


def test_free_text_honours_a_custom_limit() -> None:
    assert free_text("r" * 10, field="note", max_length=10) == "r" * 10
    error = refused(lambda: free_text("r" * 11, field="note", max_length=10))
    assert (error.field, error.reason) == ("note", "INVALID_NOTE")


def test_a_dotted_field_gives_an_upper_snake_reason() -> None:
    error = refused(lambda: free_text("r" * 501, field="refund.reason"))
    assert error.reason == "INVALID_REFUND_REASON"


def test_a_card_number_in_free_text_is_refused_without_echoing_it() -> None:
    assert_card_data_refused(lambda text: free_text(f"refund {text}", field="reason"), "reason")


# --- optional_amount ---


def test_zero_means_all_that_remains() -> None:
    assert optional_amount(0, "USD") is None


def test_zero_needs_no_currency_lookup() -> None:
    # The currency is the stored payment's and may have left the table since.
    assert optional_amount(0, "ZWL") is None


@pytest.mark.parametrize(
    ("amount", "code"), [(1, "USD"), (10**11, "USD"), (10**9, "JPY"), (10**12, "KWD")]
)
def test_other_amounts_are_checked_like_money(amount: int, code: str) -> None:
    assert optional_amount(amount, code) == amount


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (-1, "USD"),
        (10**11 + 1, "USD"),
        (10**9 + 1, "JPY"),
        (10**12 + 1, "KWD"),
        (False, "USD"),
        (True, "USD"),
        (0.0, "USD"),
        (1.5, "USD"),
        (Decimal("0"), "USD"),
        ("0", "USD"),
        (None, "USD"),
    ],
)
def test_bad_optional_amounts_are_refused(amount: object, code: str) -> None:
    error = refused(lambda: optional_amount(amount, code, field="refund_amount"))
    assert (error.field, error.reason) == ("refund_amount", "INVALID_AMOUNT")


def test_a_nonzero_optional_amount_needs_a_known_currency() -> None:
    error = refused(lambda: optional_amount(100, "usd"))
    assert (error.field, error.reason) == ("currency", "INVALID_CURRENCY")


# --- capture_mode ---


@pytest.mark.parametrize("value", ["automatic", "manual"])
def test_capture_modes_automatic_and_manual_are_accepted(value: str) -> None:
    assert capture_mode(value) == value


@pytest.mark.parametrize(
    "value", ["", "AUTOMATIC", "Manual", "auto", " manual", "CAPTURE_MODE_MANUAL", "x" * 1000]
)
def test_other_capture_modes_are_refused(value: str) -> None:
    error = refused(lambda: capture_mode(value))
    assert (error.field, error.reason) == ("capture_mode", "INVALID_CAPTURE_MODE")
    assert "'automatic'" in error.message and "'manual'" in error.message
    assert "x" * 33 not in error.message


def test_a_non_string_capture_mode_is_refused() -> None:
    error = refused(lambda: capture_mode(1))  # type: ignore[arg-type]
    assert error.reason == "INVALID_CAPTURE_MODE"


# --- messages never carry card data, whatever the field ---


@pytest.mark.parametrize(
    "check",
    [
        region,
        capture_mode,
        lambda text: idempotency_key(text + "\x00"),
    ],
    ids=["region", "capture_mode", "idempotency_key"],
)
def test_a_card_number_in_the_wrong_field_is_not_echoed(check: Callable[[str], object]) -> None:
    error = refused(lambda: check(PAN))
    assert PAN not in error.message and "4242" not in error.message


def test_every_reason_code_is_upper_snake() -> None:
    reasons = {
        refused(lambda: idempotency_key("")).reason,
        refused(lambda: payment_method("")).reason,
        refused(lambda: payment_method(PAN)).reason,
        refused(lambda: region("")).reason,
        refused(lambda: reference("\x00")).reason,
        refused(lambda: metadata({"": ""})).reason,
        refused(lambda: free_text("r" * 501, field="reason")).reason,
        refused(lambda: optional_amount(-1, "USD")).reason,
        refused(lambda: optional_amount(1, "XXX")).reason,
        refused(lambda: capture_mode("")).reason,
    }
    assert reasons == {
        "INVALID_IDEMPOTENCY_KEY",
        "INVALID_PAYMENT_METHOD",
        "CARD_DATA_NOT_ALLOWED",
        "INVALID_REGION",
        "INVALID_REFERENCE",
        "INVALID_METADATA",
        "INVALID_REASON",
        "INVALID_AMOUNT",
        "INVALID_CURRENCY",
        "INVALID_CAPTURE_MODE",
    }
    assert validation.CARD_DATA_NOT_ALLOWED == "CARD_DATA_NOT_ALLOWED"
