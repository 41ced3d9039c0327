"""The money layer's one error."""

from __future__ import annotations


class BudgetError(Exception):
    """A budget problem. str(e) is one line: what is wrong and how to fix it."""

