"""
Byte sizes as the original command line writes them: a positive number
with an optional K, M or G suffix, in powers of 1024.
"""

from __future__ import annotations

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    """
    @raise ValueError: with a sentence for the user.
    """
    value = text.strip()
    unit = value[-1:].upper() if value[-1:].isalpha() else ""
    number = value[: len(value) - len(unit)] if unit else value
    if unit not in _UNITS or not number.isdigit():
        raise ValueError(
            f"invalid size {text!r}: expected a positive number with an optional K, M or G suffix"
        )
    size = int(number) * _UNITS[unit]
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: it must be positive")
    return size


def format_size(size: int) -> str:
    """
    C{size} as L{parse_size} reads it, in the largest unit that divides it.
    """
    for unit in ("G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)
