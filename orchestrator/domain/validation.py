"""Limits on what a request may carry, checked before anything is recorded.

Each check returns the value as it is to be stored, or raises ``InvalidArgument`` with a
stable reason. Messages describe the rule and never repeat more than a short prefix of the
caller's value: error messages end up in logs, and a value could be anything, a card number
included.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping

from orchestrator.domain.carddata import contains_card_number
from orchestrator.domain.errors import InvalidArgument
from orchestrator.domain.money import Money

MAX_IDEMPOTENCY_KEY = 255
MAX_PAYMENT_METHOD = 255
MAX_REFERENCE = 255
MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY = 40
MAX_METADATA_VALUE = 500
MAX_FREE_TEXT = 500

CAPTURE_MODES = ("automatic", "manual")

_ECHO_CHARS = 32
_CharTest = Callable[[str], bool]
_REGION = re.compile(r"[A-Z][A-Z0-9_-]{0,31}")
# Explicit bidirectional overrides and isolates: harmless to store, but they make a reference
# display as something else in a dashboard or a log line ("Trojan Source" spoofing).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

CARD_DATA_NOT_ALLOWED = "CARD_DATA_NOT_ALLOWED"
_CARD_DATA_ADVICE = (
    "raw card numbers are never accepted; send the payment provider's token for the card "
    "(such as 'pm_...') instead"
)


def idempotency_key(value: str) -> str:
    """1 to 255 printable ASCII characters (spaces allowed), taken exactly as given."""
    field, reason = "idempotency_key", "INVALID_IDEMPOTENCY_KEY"
    _require_str(value, field, reason)
    _require_length(value, field, reason, minimum=1, maximum=MAX_IDEMPOTENCY_KEY)
    bad = _first_index(value, lambda ch: not _printable_ascii(ch))
    if bad is not None:
        raise InvalidArgument(
            field,
            f"idempotency_key {_echo(value)} may hold only printable ASCII characters "
            f"(0x20 to 0x7E); {_describe(value, bad)}",
            reason=reason,
        )
    return value


def payment_method(value: str) -> str:
    """A provider's token for the means of payment: 1 to 255 printable ASCII characters, no
    whitespace, and never a card number."""
    field, reason = "payment_method", "INVALID_PAYMENT_METHOD"
    _require_str(value, field, reason)
    # Before any other rule, so that a PAN is refused as such whatever else is wrong with it.
    _refuse_card_data(value, field)
    _require_length(value, field, reason, minimum=1, maximum=MAX_PAYMENT_METHOD)
    bad = _first_index(value, lambda ch: not _printable_ascii(ch) or ch == " ")
    if bad is not None:
        raise InvalidArgument(
            field,
            "payment_method must be a provider token of printable ASCII characters without "
            f"whitespace, such as 'pm_...'; {_describe(value, bad)}",
            reason=reason,
        )
    return value


def region(value: str) -> str:
    """A region name such as "US" or "eu-west", returned upper case."""
    field, reason = "region", "INVALID_REGION"
    _require_str(value, field, reason)
    # ASCII first: str.upper() maps some non-ASCII letters onto ASCII ones (U+017F to "S").
    upper = value.upper() if value.isascii() else value
    if not _REGION.fullmatch(upper):
        raise InvalidArgument(
            field,
            f"region {_echo(value)} is not a region name: 1 to 32 characters, a letter "
            "followed by letters, digits, '_' or '-', such as 'US' or 'EU'",
            reason=reason,
        )
    return upper


def reference(value: str) -> str:
    """The caller's own reference: up to 255 characters, no control characters.

    Not scanned for card data: references are opaque identifiers, often long numbers, and
    one in ten long numbers passes the Luhn check.
    """
    field, reason = "reference", "INVALID_REFERENCE"
    _require_str(value, field, reason)
    _require_length(value, field, reason, minimum=0, maximum=MAX_REFERENCE)
    bad = _first_index(value, _is_control)
    if bad is not None:
        raise InvalidArgument(
            field,
            f"reference may not contain control characters; {_describe(value, bad)}",
            reason=reason,
        )
    return value


def metadata(values: Mapping[str, str]) -> dict[str, str]:
    """Up to 50 string entries, keys of 1 to 40 characters, values up to 500, no card data.

    Returned as a plain dict ordered by key, so that equal maps store and compare alike.
    """
    reason = "INVALID_METADATA"
    if not isinstance(values, Mapping):
        raise InvalidArgument("metadata", "metadata must be a map of strings", reason=reason)
    if len(values) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(
            "metadata",
            f"metadata has {len(values)} entries; the maximum is {MAX_METADATA_ENTRIES}",
            reason=reason,
        )
    checked: dict[str, str] = {}
    for key, value in values.items():
        key_field = _metadata_key(key)
        checked[key] = _metadata_value(value, key_field)
    return dict(sorted(checked.items()))


def free_text(value: str, *, field: str, max_length: int = MAX_FREE_TEXT) -> str:
    """Text kept in the audit trail, such as a refund reason: up to ``max_length`` characters
    and no card data."""
    reason = _reason_for(field)
    _require_str(value, field, reason)
    _refuse_card_data(value, field)
    _require_length(value, field, reason, minimum=0, maximum=max_length)
    return value


def optional_amount(amount: object, currency_code: str, *, field: str = "amount") -> int | None:
    """An amount where 0 means "all that remains" (``None``); any other is checked as by
    ``Money.of``.

    Zero needs no currency: the currency is the stored payment's, and a full capture or
    refund must stay possible even for one that has since left the currency table.
    """
    if isinstance(amount, int) and not isinstance(amount, bool) and amount == 0:
        return None
    return Money.of(amount, currency_code, field=field).amount


def capture_mode(value: str) -> str:
    """ "automatic" (capture with the authorization) or "manual" (capture later)."""
    if not (isinstance(value, str) and value in CAPTURE_MODES):
        shown = _echo(value) if isinstance(value, str) else type(value).__name__
        raise InvalidArgument(
            "capture_mode",
            f"capture_mode {shown} is not one of 'automatic' or 'manual'",
            reason="INVALID_CAPTURE_MODE",
        )
    return value


def _metadata_key(key: object) -> str:
    """The error field for an entry, once its key has passed; raises if it does not."""
    reason = "INVALID_METADATA"
    if not isinstance(key, str):
        raise InvalidArgument("metadata", "metadata keys must be strings", reason=reason)
    if contains_card_number(key):
        # The key would name the error field, so it is not repeated anywhere.
        raise InvalidArgument(
            "metadata",
            f"a metadata key looks like a card number: {_CARD_DATA_ADVICE}",
            reason=CARD_DATA_NOT_ALLOWED,
        )
    if not key:
        raise InvalidArgument("metadata", "metadata keys must not be empty", reason=reason)
    field = f"metadata.{key[:MAX_METADATA_KEY]}"
    if len(key) > MAX_METADATA_KEY:
        raise InvalidArgument(
            field,
            f"metadata key {_echo(key)} is {len(key)} characters long; "
            f"the maximum is {MAX_METADATA_KEY}",
            reason=reason,
        )
    return field


def _metadata_value(value: object, field: str) -> str:
    reason = "INVALID_METADATA"
    if not isinstance(value, str):
        raise InvalidArgument(field, f"{field} must be a string", reason=reason)
    _refuse_card_data(value, field)
    if len(value) > MAX_METADATA_VALUE:
        raise InvalidArgument(
            field,
            f"{field} is {len(value)} characters long; the maximum is {MAX_METADATA_VALUE}",
            reason=reason,
        )
    return value


def _refuse_card_data(value: str, field: str) -> None:
    if contains_card_number(value):
        raise InvalidArgument(
            field,
            f"{field} looks like it contains a card number: {_CARD_DATA_ADVICE}",
            reason=CARD_DATA_NOT_ALLOWED,
        )


def _require_str(value: object, field: str, reason: str) -> None:
    if not isinstance(value, str):
        raise InvalidArgument(
            field, f"{field} must be a string, not {type(value).__name__}", reason=reason
        )


def _require_length(value: str, field: str, reason: str, *, minimum: int, maximum: int) -> None:
    if minimum > 0 and not value:
        raise InvalidArgument(field, f"{field} is required", reason=reason)
    if len(value) > maximum:
        raise InvalidArgument(
            field,
            f"{field} is {len(value)} characters long; the maximum is {maximum}",
            reason=reason,
        )


def _reason_for(field: str) -> str:
    # "refund.reason" gives INVALID_REFUND_REASON: reasons are UPPER_SNAKE on the wire.
    return "INVALID_" + (re.sub(r"[^A-Z0-9]+", "_", field.upper()).strip("_") or "ARGUMENT")


def _printable_ascii(ch: str) -> bool:
    return " " <= ch <= "~"


def _is_control(ch: str) -> bool:
    # Cc: C0, DEL and C1 controls; Cs: lone surrogates, which can't be stored as UTF-8.
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS


def _first_index(value: str, bad: _CharTest) -> int | None:
    return next((index for index, ch in enumerate(value) if bad(ch)), None)


def _describe(value: str, index: int) -> str:
    return f"found U+{ord(value[index]):04X} at index {index}"


def _echo(value: str) -> str:
    """The value as it may appear in a message: quoted, and cut to 32 characters."""
    shown = value[:_ECHO_CHARS]
    if contains_card_number(shown):
        # A PAN in the wrong field must not reach the logs through the error message.
        return "(value not shown)"
    return repr(shown) + ("..." if len(value) > _ECHO_CHARS else "")
