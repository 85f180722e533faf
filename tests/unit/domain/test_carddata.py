from __future__ import annotations

import random
import time

import pytest

from orchestrator.domain.carddata import contains_card_number, luhn_valid


def with_check_digit(partial: str) -> str:
    """``partial`` followed by the digit that makes it pass Luhn."""
    return next(partial + d for d in "0123456789" if luhn_valid(partial + d))


def without_check_digit(partial: str) -> str:
    """``partial`` followed by a digit that makes it fail Luhn."""
    return next(partial + d for d in "0123456789" if not luhn_valid(partial + d))


PAN_19 = with_check_digit("622126000000000000")  # 19 digits, a UnionPay-style prefix
PAN_13 = "4222222222222"
PAN_16 = "4242424242424242"


def digits_from(zero: int) -> dict[int, int]:
    """A translation of ASCII digits into the script whose zero is at code point ``zero``."""
    return str.maketrans("0123456789", "".join(chr(zero + i) for i in range(10)))


FULL_WIDTH = digits_from(0xFF10)
ARABIC_INDIC = digits_from(0x0660)
DEVANAGARI = digits_from(0x0966)


def grouped(pan: str, separator: str, size: int = 4) -> str:
    return separator.join(pan[i : i + size] for i in range(0, len(pan), size))


# --- luhn_valid ---


@pytest.mark.parametrize(
    "digits",
    [PAN_16, "4111111111111111", "378282246310005", "30569309025904", PAN_13, PAN_19, "0", "18"],
)
def test_luhn_accepts_numbers_whose_check_digit_is_right(digits: str) -> None:
    assert luhn_valid(digits)


@pytest.mark.parametrize(
    "digits",
    [
        "4242424242424241",
        "4111111111111112",
        "1",
        "",
        "4242 4242",
        "4242-4242",
        "\uff14\uff12",
        "abc",
    ],
)
def test_luhn_refuses_wrong_check_digits_and_anything_but_ascii_digits(digits: str) -> None:
    assert not luhn_valid(digits)


def test_the_generated_nineteen_digit_number_is_a_real_luhn_number() -> None:
    assert len(PAN_19) == 19 and luhn_valid(PAN_19)
    assert not luhn_valid(PAN_19[:-1] + str((int(PAN_19[-1]) + 1) % 10))


# --- contains_card_number: found ---


@pytest.mark.parametrize(
    "text",
    [
        PAN_16,
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "378282246310005",
        "3782 822463 10005",
        "30569309025904",
        "6011000990139424",
        PAN_19,
        grouped(PAN_19, " "),
        PAN_13,
        "card is 4242424242424242 thanks",
        "pm_4242424242424242",
        "4242424242424242x",
        "(4242-4242-4242-4242)",
        "line one\n4242 4242 4242 4242\nline three",
        "4242\t4242\t4242\t4242",
        "4-2-4-2-4-2-4-2-4-2-4-2-4-2-4-2",
    ],
)
def test_card_numbers_are_found(text: str) -> None:
    assert contains_card_number(text)


@pytest.mark.parametrize(
    "separator",
    [
        "\u00a0",  # no-break space
        "\u2007",  # figure space
        "\u202f",  # narrow no-break space
        "\u3000",  # ideographic space
        "\u2009",  # thin space
        "\u2010",  # hyphen
        "\u2011",  # non-breaking hyphen
        "\u2012",  # figure dash
        "\u2013",  # en dash
        "\u2014",  # em dash
        "\u2015",  # horizontal bar
        "\u2212",  # minus sign
        "\uff0d",  # full-width hyphen-minus
    ],
    ids=lambda separator: f"U+{ord(separator):04X}",
)
def test_card_numbers_grouped_by_any_unicode_space_or_dash_are_found(separator: str) -> None:
    assert contains_card_number(grouped(PAN_16, separator))
    assert contains_card_number(f"pay with {grouped('4111111111111111', separator)} please")


@pytest.mark.parametrize(
    "digits",
    [FULL_WIDTH, ARABIC_INDIC, DEVANAGARI],
    ids=["full-width", "arabic-indic", "devanagari"],
)
def test_card_numbers_in_other_scripts_digits_are_found(digits: dict[int, int]) -> None:
    assert contains_card_number(PAN_16.translate(digits))
    assert contains_card_number(grouped(PAN_16, "\u00a0").translate(digits))
    assert not contains_card_number("4242424242424241".translate(digits))


def test_card_numbers_mixing_scripts_are_found() -> None:
    mixed = "4242" + "4242".translate(FULL_WIDTH) + "4242".translate(ARABIC_INDIC) + "4242"
    assert contains_card_number(mixed)


def test_nbsp_separated_card_is_found() -> None:
    assert contains_card_number("4242\u00a04242\u00a04242\u00a04242")


# --- contains_card_number: not found ---


@pytest.mark.parametrize(
    "text",
    [
        "",
        "no digits here",
        "4242424242424241",
        "4242 4242 4242 4241",
        "+1 415-555-2671",
        "+44 20 7946 0958",
        "(415) 555-2671",
        "2024-01-15",
        "2024-01-15T10:20:30Z",
        "ORD-2024-000123",
        "INV-2024-06-000042",
        "550e8400-e29b-41d4-a716-446655440000",
        "123e4567-e89b-12d3-a456-426614174000",
        "00000000-0000-0000-0000-000000000000",
        "0000000000000000",
        "0000 0000 0000 0000",
        "pm_1NxYzAbCdEfGhIj",
        "tok_visa",
        "order 42 of 2024, 3 items",
        "12.34 USD",
    ],
)
def test_text_without_a_card_number_is_clean(text: str) -> None:
    assert not contains_card_number(text)


def test_twelve_digits_are_too_few_even_when_luhn_valid() -> None:
    twelve = with_check_digit("42424242424")
    assert len(twelve) == 12 and luhn_valid(twelve)
    assert not contains_card_number(twelve)
    assert not contains_card_number(grouped(twelve, " "))


def test_thirteen_digits_are_enough() -> None:
    thirteen = with_check_digit("424242424242")
    assert len(thirteen) == 13
    assert contains_card_number(thirteen)


def test_nineteen_digits_are_still_a_card_number() -> None:
    assert contains_card_number(PAN_19)
    assert contains_card_number(f"ref {PAN_19} end")


def test_a_contiguous_run_of_twenty_digits_is_not_a_card_number() -> None:
    twenty = with_check_digit("4242424242424242424")
    assert len(twenty) == 20 and luhn_valid(twenty)
    assert not contains_card_number(twenty)
    # Nor is a longer contiguous run searched for a card number inside it.
    assert not contains_card_number(PAN_16 + "0000")


def test_a_grouped_card_number_padded_with_an_extra_group_is_still_found() -> None:
    assert contains_card_number("4242 4242 4242 4242 9")
    assert contains_card_number("9 4242 4242 4242 4242")
    assert contains_card_number("1234 4242 4242 4242 4242 5678")
    assert contains_card_number("1 4242 4242 4242 4242")


def test_a_long_grouped_run_without_a_luhn_window_is_clean() -> None:
    # 20 digits in groups of five: no whole-group window of 13-19 digits passes Luhn.
    text = "12345 67890 12345 67890"
    assert not contains_card_number(text)


def test_a_luhn_valid_twenty_digit_number_in_groups_is_not_a_card_number() -> None:
    twenty = with_check_digit("1234567890123456789")
    # Its whole-group windows of 13-19 digits (the first and last 16) fail Luhn.
    assert luhn_valid(twenty) and not luhn_valid(twenty[:16]) and not luhn_valid(twenty[4:])
    assert not contains_card_number(grouped(twenty, " "))


@pytest.mark.parametrize(
    "text",
    [
        "4242  4242  4242  4242",
        "4242 - 4242 - 4242 - 4242",
        "4242--4242--4242--4242",
        "4242.4242.4242.4242",
        "4242/4242/4242/4242",
        "4242_4242_4242_4242",
        "4242a4242b4242c4242",
    ],
)
def test_digits_apart_by_more_than_one_separator_are_separate_runs(text: str) -> None:
    assert not contains_card_number(text)


def test_superscript_digits_are_not_decimal_digits() -> None:
    superscript = PAN_16.translate(str.maketrans("24", "²⁴"))
    assert not contains_card_number(superscript)


# --- speed ---


@pytest.mark.parametrize(
    "text",
    [
        "1 " * 5_000,
        "1-" * 5_000,
        "12 " * 3_400,
        "4" * 10_000,
        "x4242 " * 1_700,
        "a" * 10_000,
        "\u00a01" * 5_000,
        "\uff11 " * 5_000,
        "1  " * 3_400,
    ],
    ids=[
        "single-digit-groups",
        "dash-groups",
        "two-digit-groups",
        "one-long-run",
        "short-runs",
        "no-digits",
        "nbsp-groups",
        "full-width-groups",
        "double-spaced",
    ],
)
def test_ten_kilobytes_are_scanned_quickly(text: str) -> None:
    started = time.perf_counter()
    assert not contains_card_number(text)
    assert time.perf_counter() - started < 0.5


def test_a_card_at_the_end_of_ten_kilobytes_is_found_quickly() -> None:
    text = "1 " * 5_000 + "x " + PAN_16
    started = time.perf_counter()
    assert contains_card_number(text)
    assert time.perf_counter() - started < 0.5


# --- against a plain reference implementation ---


def reference_scan(text: str) -> bool:
    """The rule stated plainly, slowly: split into runs and groups, try every group window."""
    runs: list[list[str]] = []
    groups: list[str] = []
    index = 0
    while index < len(text):
        if text[index].isdigit():
            end = index
            while end < len(text) and text[end].isdigit():
                end += 1
            groups.append(text[index:end])
            joined = end + 1 < len(text) and text[end] in " -" and text[end + 1].isdigit()
            if joined:
                index = end + 1
                continue
            runs.append(groups)
            groups = []
            index = end
        else:
            index += 1
    for run in runs:
        for start in range(len(run)):
            for stop in range(start + 1, len(run) + 1):
                candidate = "".join(run[start:stop])
                plausible = 13 <= len(candidate) <= 19 and set(candidate) != {"0"}
                if plausible and luhn_valid(candidate):
                    return True
    return False


def test_the_fast_scan_agrees_with_the_plain_rule_on_random_text() -> None:
    rng = random.Random(20240625)
    alphabet = "0123456789" * 4 + "  --x"
    for _ in range(3_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        assert contains_card_number(text) == reference_scan(text), text
