"""Spotting raw card numbers (PANs) in text the service would otherwise store.

The orchestrator only ever handles provider tokens. A PAN that reached a payment method,
metadata or a refund reason would be written to the event log for good and drag the whole
store into PCI scope, so such input is refused before anything is recorded.

The scan is a single pass over the text with no regular expression, so its cost stays linear
in the input however adversarial that is.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Iterable, Iterator, Sequence

MIN_PAN_DIGITS = 13
MAX_PAN_DIGITS = 19

# Dashes that are not in Unicode's "Pd" category but read as one: the minus sign.
_EXTRA_DASHES = frozenset("\u2212")

# What a digit contributes to the Luhn sum when doubled: 2 * d, less 9 when that is over 9.
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """Whether an ASCII digit string passes the Luhn (mod 10) check."""
    if not digits or not (digits.isascii() and digits.isdigit()):
        return False
    return _luhn_ok([ord(ch) - ord("0") for ch in digits])


def contains_card_number(text: str) -> bool:
    """Whether ``text`` holds what looks like a card number: 13 to 19 digits that pass Luhn.

    Digits count whatever their script (full-width, Arabic-Indic, ...), and may be split
    into groups by single spaces or dashes of any kind, so a PAN can't be slipped past by
    writing it differently.
    """
    return any(_run_has_pan(digits, bounds) for digits, bounds in _digit_runs(text))


def _luhn_ok(values: Sequence[int]) -> bool:
    # From the rightmost digit, every second digit counts doubled (less 9 when over 9).
    total = sum(
        _DOUBLED[value] if position % 2 else value
        for position, value in enumerate(reversed(values))
    )
    return total % 10 == 0


def _digit_value(ch: str) -> int | None:
    if "0" <= ch <= "9":
        return ord(ch) - ord("0")
    if ch.isascii():
        return None
    return unicodedata.decimal(ch, None)


def _is_separator(ch: str) -> bool:
    # Any whitespace (including NBSP, figure and narrow no-break spaces, tabs, newlines) or
    # any dash: PANs are commonly written in groups, and every script's spaces look alike.
    return ch.isspace() or ch in _EXTRA_DASHES or unicodedata.category(ch) == "Pd"


def _digit_runs(text: str) -> Iterator[tuple[list[int], list[int]]]:
    """Each maximal run of digits in ``text``: its digit values, and the offsets at which its
    separator-delimited groups start, closed by the run's length.

    Within a run, consecutive digits are adjacent or separated by exactly one separator
    character; anything else (a letter, a second separator, the end) ends the run.
    """
    digits: list[int] = []
    bounds: list[int] = [0]
    pending_separator = False
    for ch in text:
        value = _digit_value(ch)
        if value is not None:
            if pending_separator:
                bounds.append(len(digits))
                pending_separator = False
            digits.append(value)
        elif digits and not pending_separator and _is_separator(ch):
            pending_separator = True
        elif digits:
            bounds.append(len(digits))
            yield digits, bounds
            digits, bounds, pending_separator = [], [0], False
    if digits:
        bounds.append(len(digits))
        yield digits, bounds


def _run_has_pan(digits: list[int], bounds: list[int]) -> bool:
    """Whether a run, or a window of its whole groups, is a Luhn-valid 13-19 digit number.

    A run longer than 19 digits is not a PAN by itself, but padding a grouped PAN with an
    extra group ("4242 4242 4242 4242 9") must not hide it. So every contiguous window of
    whole groups totalling 13-19 digits is checked, also inside runs of 13-19 digits (where
    "1 4242 4242 4242 4242" would otherwise pass). The window of all the groups is the run
    itself. Windows never split a group: a long ungrouped number such as a 20-digit
    reference is not scanned for substrings, which would flag one in ten of them.
    """
    if len(digits) < MIN_PAN_DIGITS:
        return False
    if len(bounds) == 2:  # a single group: the run itself is the only candidate
        return len(digits) <= MAX_PAN_DIGITS and _is_pan(digits)
    # Prefix sums make each window's Luhn check O(1), so a 10 kB run of tiny groups stays
    # cheap. A window's rightmost digit is never doubled, so which digits double depends
    # on the parity of where the window ends: keep one sum for each parity.
    luhn_sums = _luhn_prefix_sums(digits)
    nonzero = _prefix_counts(value != 0 for value in digits)
    for first in range(len(bounds) - 1):
        start = bounds[first]
        last = bisect.bisect_left(bounds, start + MIN_PAN_DIGITS, lo=first + 1)
        while last < len(bounds) and bounds[last] - start <= MAX_PAN_DIGITS:
            end = bounds[last]
            sums = luhn_sums[(end - 1) % 2]
            # All zeros passes Luhn but is no card (nil UUIDs and zero padding would trip it).
            if (sums[end] - sums[start]) % 10 == 0 and nonzero[end] > nonzero[start]:
                return True
            last += 1
    return False


def _luhn_prefix_sums(digits: list[int]) -> tuple[list[int], list[int]]:
    """Prefix sums of Luhn contributions, for windows ending at an even or an odd offset.

    In sums[q], the digit at offset i is doubled when i's parity differs from q: exactly
    the digits at an odd distance from a window's last digit, offset ``end - 1``.
    """
    even_end, odd_end = [0], [0]
    for offset, value in enumerate(digits):
        doubled = _DOUBLED[value]
        even_end.append(even_end[-1] + (doubled if offset % 2 else value))
        odd_end.append(odd_end[-1] + (value if offset % 2 else doubled))
    return even_end, odd_end


def _prefix_counts(flags: Iterable[bool]) -> list[int]:
    counts = [0]
    for flag in flags:
        counts.append(counts[-1] + flag)
    return counts


def _is_pan(digits: Sequence[int]) -> bool:
    # All zeros passes Luhn but is no card (nil UUIDs and zero padding would trip it).
    return MIN_PAN_DIGITS <= len(digits) <= MAX_PAN_DIGITS and any(digits) and _luhn_ok(digits)
