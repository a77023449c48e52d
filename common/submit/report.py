"""Console output shared by the competitions."""

from __future__ import annotations


def banner(lines: list[str]) -> str:
    """Lines framed by '=' so that a warning (e.g. synthetic data in use) is not missed."""
    width = max(len(line) for line in lines)
    rule = "=" * (width + 4)
    return "\n".join([rule, *(f"= {line:<{width}} =" for line in lines), rule])
