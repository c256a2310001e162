"""Wording shared by every message."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 packet`, `2 packets`, `1,234 packets`."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"
