from __future__ import annotations

import enum
from decimal import Decimal

import pytest

from orchestrator.domain.errors import InvalidArgument
from orchestrator.domain.money import (
    CURRENCIES,
    MAX_MAJOR_UNITS,
    Currency,
    Money,
    currency,
    max_amount,
)

# Minor units as ISO 4217 list one gives them (the "CcyMnrUnts" column).
ISO_4217_MINOR_UNITS = {
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "CHF": 2,
    "CAD": 2,
    "AUD": 2,
    "CNY": 2,
    "INR": 2,
    "BRL": 2,
    "MXN": 2,
    "JPY": 0,
    "KRW": 0,
    "CLP": 0,
    "ISK": 0,
    "UGX": 0,
    "VND": 0,
    "XOF": 0,
    "XAF": 0,
    "XPF": 0,
    "PYG": 0,
    "RWF": 0,
    "KMF": 0,
    "GNF": 0,
    "DJF": 0,
    "VUV": 0,
    "BIF": 0,
    "KWD": 3,
    "BHD": 3,
    "TND": 3,
    "OMR": 3,
    "JOD": 3,
    "IQD": 3,
    "LYD": 3,
    "IDR": 2,
    "HUF": 2,
    "TWD": 2,
    "UYU": 2,
    "MRU": 2,
    "VES": 2,
    "VED": 2,
    "SLE": 2,
    "STN": 2,
    "ZWG": 2,
    "XCG": 2,
    "COP": 2,
    "MGA": 2,
    "LAK": 2,
    "IRR": 2,
    "KPW": 2,
}

NOT_MONEY_FOR_PAYMENTS = [
    # precious metals and special units
    "XAU",
    "XAG",
    "XPD",
    "XPT",
    "XDR",
    "XSU",
    "XUA",
    "XBA",
    "XBB",
    "XBC",
    "XBD",
    "XTS",
    "XXX",
    # fund codes
    "BOV",
    "CHE",
    "CHW",
    "CLF",
    "COU",
    "MXV",
    "USN",
    "UYI",
    "UYW",
    # withdrawn
    "HRK",
    "SLL",
    "ZWL",
    "VEF",
    "MRO",
    "STD",
]


def refusal(excinfo: pytest.ExceptionInfo[InvalidArgument]) -> tuple[str, str]:
    return excinfo.value.field, excinfo.value.reason


# --- the currency table ---


@pytest.mark.parametrize(("code", "exponent"), sorted(ISO_4217_MINOR_UNITS.items()))
def test_currency_exponent_matches_iso_4217(code: str, exponent: int) -> None:
    assert currency(code) == Currency(code, exponent)


def test_the_table_holds_the_whole_current_iso_list() -> None:
    assert 155 <= len(CURRENCIES) <= 180


def test_every_table_entry_is_keyed_by_its_own_three_letter_code() -> None:
    for code, cur in CURRENCIES.items():
        assert cur.code == code
        assert len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()
        assert cur.exponent in (0, 2, 3)


def test_the_table_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        CURRENCIES["ABC"] = Currency("ABC", 2)  # type: ignore[index]


@pytest.mark.parametrize("code", NOT_MONEY_FOR_PAYMENTS)
def test_metals_funds_special_units_and_withdrawn_codes_are_refused(code: str) -> None:
    assert code not in CURRENCIES
    with pytest.raises(InvalidArgument) as excinfo:
        currency(code)
    assert refusal(excinfo) == ("currency", "INVALID_CURRENCY")


# --- currency() ---


@pytest.mark.parametrize("code", ["usd", "Usd", "uSD", "eur"])
def test_lower_case_codes_are_refused_with_a_hint_that_codes_are_uppercase(code: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        currency(code)
    assert refusal(excinfo) == ("currency", "INVALID_CURRENCY")
    assert "uppercase ISO 4217" in excinfo.value.message
    assert repr(code) in excinfo.value.message


@pytest.mark.parametrize(
    "code",
    ["", "US", "USDX", "U$D", "123", " USD", "USD ", "\uff35\uff33\uff24", "ABC", "QQQ", "US\x00"],
)
def test_anything_but_a_known_uppercase_code_is_refused(code: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        currency(code)
    assert refusal(excinfo) == ("currency", "INVALID_CURRENCY")


def test_the_refusal_names_the_value_cut_to_sixteen_characters() -> None:
    value = "A" * 16 + "B" * 100
    with pytest.raises(InvalidArgument) as excinfo:
        currency(value)
    assert "A" * 16 in excinfo.value.message
    assert "B" not in excinfo.value.message


def test_a_non_string_currency_is_refused() -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        currency(840)  # type: ignore[arg-type]
    assert refusal(excinfo) == ("currency", "INVALID_CURRENCY")


# --- maxima ---


@pytest.mark.parametrize(
    ("code", "maximum"),
    [("JPY", 10**9), ("USD", 10**11), ("KWD", 10**12), ("CLP", 10**9), ("TND", 10**12)],
)
def test_the_maximum_is_a_billion_major_units_in_minor_units(code: str, maximum: int) -> None:
    assert MAX_MAJOR_UNITS == 1_000_000_000
    assert max_amount(currency(code)) == maximum


def test_no_maximum_exceeds_int64() -> None:
    assert all(max_amount(cur) <= 2**63 - 1 for cur in CURRENCIES.values())
    assert max_amount(Currency("ZZZ", 12)) == 2**63 - 1


# --- Money.of ---


@pytest.mark.parametrize(
    ("amount", "code"),
    [(1, "USD"), (1234, "USD"), (10**11, "USD"), (1, "JPY"), (10**9, "JPY"), (10**12, "KWD")],
)
def test_amounts_from_one_to_the_currency_maximum_are_accepted(amount: int, code: str) -> None:
    assert Money.of(amount, code) == Money(amount, code)


@pytest.mark.parametrize(
    ("amount", "code"),
    [(10**11 + 1, "USD"), (10**9 + 1, "JPY"), (10**12 + 1, "KWD"), (2**63, "USD"), (10**30, "EUR")],
)
def test_amount_over_the_currency_maximum_is_refused(amount: int, code: str) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        Money.of(amount, code)
    assert refusal(excinfo) == ("amount", "INVALID_AMOUNT")
    assert f"1 to {max_amount(currency(code))}" in excinfo.value.message
    assert "minor units" in excinfo.value.message


def test_a_jpy_amount_that_is_fine_in_usd_is_over_the_jpy_maximum() -> None:
    assert Money.of(10**10, "USD").amount == 10**10
    with pytest.raises(InvalidArgument):
        Money.of(10**10, "JPY")


@pytest.mark.parametrize("amount", [0, -1, -(10**11), -(2**63)])
def test_zero_and_negative_amounts_are_refused(amount: int) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        Money.of(amount, "USD")
    assert refusal(excinfo) == ("amount", "INVALID_AMOUNT")
    assert "1 to 100000000000" in excinfo.value.message


@pytest.mark.parametrize("amount", [10**5000, -(10**5000)], ids=["huge", "hugely-negative"])
def test_absurdly_large_amounts_are_refused_without_printing_them(amount: int) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        Money.of(amount, "USD")
    assert excinfo.value.reason == "INVALID_AMOUNT"
    assert len(excinfo.value.message) < 200


@pytest.mark.parametrize(
    "amount",
    [True, False, 1.0, 12.34, float("nan"), Decimal("1"), "100", b"100", None, [100], 1 + 0j],
    ids=lambda value: type(value).__name__ + ":" + repr(value),
)
def test_amounts_that_are_not_plain_integers_are_refused(amount: object) -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        Money.of(amount, "USD")
    assert refusal(excinfo) == ("amount", "INVALID_AMOUNT")
    assert "integers in minor units" in excinfo.value.message


def test_the_refusal_names_the_field_given() -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        Money.of(0, "USD", field="refund_amount")
    assert refusal(excinfo) == ("refund_amount", "INVALID_AMOUNT")


def test_the_currency_is_checked_before_the_amount() -> None:
    with pytest.raises(InvalidArgument) as excinfo:
        Money.of(0, "usd")
    assert refusal(excinfo) == ("currency", "INVALID_CURRENCY")


def test_an_int_subclass_is_stored_as_a_plain_int() -> None:
    class Cents(enum.IntEnum):
        HUNDRED = 100

    money = Money.of(Cents.HUNDRED, "USD")
    assert type(money.amount) is int
    assert money == Money(100, "USD")


# --- the constructor's shape checks ---


@pytest.mark.parametrize(
    ("amount", "code", "error"),
    [
        (-1, "USD", ValueError),
        (1.5, "USD", TypeError),
        (True, "USD", TypeError),
        (1, "usd", ValueError),
        (1, "US", ValueError),
    ],
)
def test_the_constructor_refuses_negative_non_integer_or_misspelt_money(
    amount: object, code: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        Money(amount, code)  # type: ignore[arg-type]


def test_the_constructor_accepts_zero_and_codes_no_longer_in_the_table() -> None:
    assert Money(0, "USD").amount == 0
    assert Money(5, "ZWL").currency == "ZWL"


# --- arithmetic and comparison ---


def test_same_currency_money_adds_and_subtracts() -> None:
    assert Money(150, "USD") + Money(50, "USD") == Money(200, "USD")
    assert Money(150, "USD") - Money(50, "USD") == Money(100, "USD")


def test_a_difference_may_be_zero() -> None:
    assert Money(150, "USD") - Money(150, "USD") == Money(0, "USD")


def test_a_negative_difference_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Money(100, "USD") - Money(101, "USD")


@pytest.mark.parametrize(
    "operation",
    [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a < b,
        lambda a, b: a <= b,
        lambda a, b: a > b,
        lambda a, b: a >= b,
    ],
    ids=["add", "sub", "lt", "le", "gt", "ge"],
)
def test_mixing_currencies_is_refused(operation: object) -> None:
    with pytest.raises(ValueError, match="USD and EUR"):
        operation(Money(100, "USD"), Money(100, "EUR"))  # type: ignore[operator]


def test_same_currency_money_compares_by_amount() -> None:
    small, large = Money(100, "USD"), Money(200, "USD")
    assert small < large and small <= large and large > small and large >= small
    assert small <= Money(100, "USD") and small >= Money(100, "USD")
    assert not small > large and not large < small


def test_money_never_equals_money_in_another_currency() -> None:
    assert Money(100, "USD") != Money(100, "EUR")
    assert len({Money(100, "USD"), Money(100, "USD"), Money(100, "EUR")}) == 2


@pytest.mark.parametrize("other", [100, 1.0, "100 USD", None])
def test_money_does_not_mix_with_bare_numbers(other: object) -> None:
    money = Money(100, "USD")
    with pytest.raises(TypeError):
        money + other
    with pytest.raises(TypeError):
        money - other
    with pytest.raises(TypeError):
        money < other  # noqa: B015
    with pytest.raises(TypeError):
        money >= other  # noqa: B015
    assert money != other


# --- format ---


@pytest.mark.parametrize(
    ("money", "text"),
    [
        (Money(1234, "USD"), "12.34 USD"),
        (Money(5, "USD"), "0.05 USD"),
        (Money(100, "USD"), "1.00 USD"),
        (Money(0, "USD"), "0.00 USD"),
        (Money(500, "JPY"), "500 JPY"),
        (Money(1005, "KWD"), "1.005 KWD"),
        (Money(7, "BHD"), "0.007 BHD"),
        (Money(10**11, "USD"), "1000000000.00 USD"),
        # Beyond what a float holds exactly: integer arithmetic keeps the last cent.
        (Money(2**63 - 1, "USD"), "92233720368547758.07 USD"),
        (Money(5, "ZWL"), "5 ZWL minor units"),
    ],
)
def test_format_writes_major_units_with_the_currency_code(money: Money, text: str) -> None:
    assert money.format() == text
