"""Amounts at the edge: yuan and tonnes as people type and read them, integers inside.

Cash is kept in fen (CNY 0.01) and allowances in whole tonnes. ``parse_yuan`` and
``parse_tonnes`` read decimal text exactly (no floats anywhere): "12.34" is 1234 fen,
"1,000" is 1000 t. Anything else (more than two decimals, a fraction of a tonne,
signs where none is allowed, exponents, garbage) raises ValueError with a message that
says what was expected and what was found. ``format_yuan`` and ``format_tonnes`` are
their inverses: ``parse_yuan(format_yuan(n)) == n`` for every integer n.
"""

from __future__ import annotations

import re

FEN_PER_YUAN = 100
AMOUNT_DIGITS_MAX = 18  # integer digits accepted; keeps every amount far inside int64

_NUMBER = re.compile(r"([+-]?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d*))?")


def _split(text: str, what: str) -> tuple[bool, str, str]:
    """(negative, integer digits, fraction digits) of a plain decimal number."""
    if not isinstance(text, str):
        raise ValueError(f"expected {what} as text, got {type(text).__name__}")
    s = text.strip()
    match = _NUMBER.fullmatch(s)
    if match is None:
        raise ValueError(f"expected {what} such as 12.34, got {text!r}")
    sign, whole, frac = match.group(1), match.group(2).replace(",", ""), match.group(3) or ""
    if len(whole.lstrip("0")) > AMOUNT_DIGITS_MAX:
        raise ValueError(f"expected {what} of at most {AMOUNT_DIGITS_MAX} digits, got {text!r}")
    return sign == "-", whole, frac


def parse_yuan(text: str, *, allow_negative: bool = False) -> int:
    """Yuan as text to fen: "12.34" -> 1234, "5" -> 500, "0.5" -> 50."""
    negative, whole, frac = _split(text, "an amount in yuan")
    if len(frac) > 2 and frac[2:].strip("0"):
        raise ValueError(f"expected at most 2 decimals (fen) in an amount in yuan, got {text!r}")
    frac = (frac + "00")[:2]
    fen = int(whole) * FEN_PER_YUAN + int(frac)
    if negative and fen:
        if not allow_negative:
            raise ValueError(f"expected a non-negative amount in yuan, got {text!r}")
        return -fen
    return fen


def format_yuan(fen: int) -> str:
    """Fen to yuan text with exactly two decimals: 1234 -> "12.34", -5 -> "-0.05"."""
    sign = "-" if fen < 0 else ""
    whole, part = divmod(abs(fen), FEN_PER_YUAN)
    return f"{sign}{whole}.{part:02d}"


def parse_tonnes(text: str, *, allow_negative: bool = False) -> int:
    """Tonnes as text to an integer: "1000" -> 1000, "1,000" -> 1000, "7.0" -> 7."""
    negative, whole, frac = _split(text, "a quantity in tonnes")
    if frac.strip("0"):
        raise ValueError(f"expected whole tonnes, got {text!r}")
    tonnes = int(whole)
    if negative and tonnes:
        if not allow_negative:
            raise ValueError(f"expected a non-negative quantity in tonnes, got {text!r}")
        return -tonnes
    return tonnes


def format_tonnes(tonnes: int) -> str:
    return str(tonnes)
