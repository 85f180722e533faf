"""Currencies and amounts in minor units.

Amounts are always integers in the currency's minor unit (cents for USD, yen for JPY, fils for
KWD): a float can't represent most decimal fractions exactly, and a payment ledger must add up
to the unit. Nothing in this module touches float.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeGuard

from orchestrator.domain.errors import InvalidArgument


@dataclass(frozen=True)
class Currency:
    code: str
    exponent: int  # ISO 4217 "minor unit": digits after the decimal point


# ISO 4217 list one (published 2024-06-25) plus XCG (added 2025-03-31), active codes only.
# Left out on purpose: precious metals and special units (XAU XAG XPD XPT XDR XSU XUA XBA XBB
# XBC XBD XTS XXX) and fund codes (BOV CHE CHW CLF COU MXV USN UYI UYW), which are units of
# account rather than money a card payment can be made in. ANG and BGN are being replaced (by
# XCG and EUR) but stay while providers still settle in them.
_MINOR_UNITS: dict[int, str] = {
    0: "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX VND VUV XAF XOF XPF",
    3: "BHD IQD JOD KWD LYD OMR TND",
    2: (
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN "
        "BZD CAD CDF CHF CNY COP CRC CUC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL "
        "GHS GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP "
        "LKR LRD LSL MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR "
        "NZD PAB PEN PGK PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP "
        "STN SVC SYP SZL THB TJS TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VED VES WST XCD XCG YER "
        "ZAR ZMW ZWG"
    ),
}

CURRENCIES: Mapping[str, Currency] = MappingProxyType(
    {
        code: Currency(code, exponent)
        for exponent, codes in sorted(_MINOR_UNITS.items())
        for code in codes.split()
    }
)

# A billion major units is far above any single card payment, yet keeps every amount (up to
# KWD's 10**12 minor units) well inside the int64 that the wire format and the database carry.
MAX_MAJOR_UNITS = 1_000_000_000
_INT64_MAX = 2**63 - 1

_SHOWN_CHARS = 16


def _shown(value: str) -> str:
    """The caller's value as it may appear in a message: quoted and cut short."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS]) + "..."
    return repr(value)


def _looks_like_code(code: str) -> bool:
    return len(code) == 3 and code.isascii() and code.isalpha() and code.isupper()


def currency(code: str) -> Currency:
    """The currency for an ISO 4217 alphabetic code, which must be upper case as ISO writes it."""
    found = CURRENCIES.get(code) if isinstance(code, str) else None
    if found is not None:
        return found
    if not isinstance(code, str):
        message = "currency must be a string holding an ISO 4217 code such as 'USD'"
    elif code.isascii() and code.isalpha() and len(code) == 3 and not code.isupper():
        # Case-folding would let two spellings name one currency in stored events and keys.
        message = (
            f"currency {_shown(code)} is not accepted: currency codes are uppercase "
            "ISO 4217 codes such as 'USD'"
        )
    elif _looks_like_code(code):
        message = f"currency {_shown(code)} is not a supported ISO 4217 currency code"
    else:
        message = (
            f"currency {_shown(code)} is not an ISO 4217 code: "
            "expected three uppercase letters such as 'USD'"
        )
    raise InvalidArgument("currency", message, reason="INVALID_CURRENCY")


def max_amount(cur: Currency) -> int:
    """The largest amount accepted in ``cur``, in its minor units."""
    return min(MAX_MAJOR_UNITS * _scale(cur.exponent), _INT64_MAX)


def _scale(exponent: int) -> int:
    """Minor units per major unit."""
    scale: int = 10**exponent
    return scale


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; True as an amount is a caller's bug, never one cent.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, order=False)
class Money:
    """A non-negative amount in minor units of one currency.

    Requests go through ``Money.of``, which enforces the accepted range. The constructor only
    checks the shape, so that sums, differences and amounts read back from stored events (in a
    currency that may since have left the table) still load.
    """

    amount: int
    currency: str

    def __post_init__(self) -> None:
        if not _is_int(self.amount):
            raise TypeError(f"Money.amount must be an int, not {type(self.amount).__name__}")
        if self.amount < 0:
            raise ValueError("Money.amount must not be negative")
        if not (isinstance(self.currency, str) and _looks_like_code(self.currency)):
            raise ValueError("Money.currency must be a three-letter uppercase code")

    @classmethod
    def of(cls, amount: object, currency_code: str, *, field: str = "amount") -> Money:
        """A validated request amount: a positive integer of minor units, up to the maximum."""
        cur = currency(currency_code)
        return cls(_valid_amount(amount, cur, field=field), cur.code)

    def _same_currency(self, other: Money, operation: str) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot {operation} {self.currency} and {other.currency}")

    def __add__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "add")
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: object) -> Money:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "subtract")
        if other.amount > self.amount:
            raise ValueError(
                f"cannot subtract {other.format()} from {self.format()}: the result is negative"
            )
        return Money(self.amount - other.amount, self.currency)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount < other.amount

    def __le__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount <= other.amount

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount > other.amount

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, Money):
            return NotImplemented
        self._same_currency(other, "compare")
        return self.amount >= other.amount

    def format(self) -> str:
        """``"12.34 USD"``, ``"500 JPY"``, ``"1.005 KWD"``: major units, for people to read."""
        known = CURRENCIES.get(self.currency)
        if known is None:
            # Without the exponent any decimal point would be a guess: say what the number is.
            return f"{self.amount} {self.currency} minor units"
        return f"{_format_minor_units(self.amount, known.exponent)} {self.currency}"


def _format_minor_units(amount: int, exponent: int) -> str:
    """``amount`` minor units written in major units with ``exponent`` decimals."""
    if exponent == 0:
        return str(amount)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), _scale(exponent))
    return f"{sign}{major}.{minor:0{exponent}d}"


def _valid_amount(amount: object, cur: Currency, *, field: str) -> int:
    limit = max_amount(cur)
    allowed = f"amounts are integers in minor units from 1 to {limit} for {cur.code}"
    if not _is_int(amount):
        raise InvalidArgument(
            field,
            f"{field} must be an integer number of minor units, not "
            f"{type(amount).__name__}: {allowed}",
            reason="INVALID_AMOUNT",
        )
    value = int(amount)  # drops any int subclass (an IntEnum, say) from what gets stored
    if value <= 0:
        raise InvalidArgument(
            field,
            f"{field} must be positive, got {_echo(value)}: {allowed}",
            reason="INVALID_AMOUNT",
        )
    if value > limit:
        raise InvalidArgument(
            field, f"{field} {_echo(value)} is over the maximum: {allowed}", reason="INVALID_AMOUNT"
        )
    return value


def _echo(value: int) -> str:
    # str() of a huge int is slow, and refused outright past 4300 digits: don't echo those.
    return str(value) if value.bit_length() <= 64 else "(a number too large to show)"
