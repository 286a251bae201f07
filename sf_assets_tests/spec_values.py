"""Sorter parameter values for tests that change a default: of the default's own type, as the
spec validator requires (a string where a number is expected is an error)."""
from __future__ import annotations

from typing import Any


def changed_value(default: Any) -> Any:
    """A value other than ``default`` that the validator accepts for its parameter."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 1
    if isinstance(default, str):
        return default + "_changed"
    return "changed"  # a None default takes any value
