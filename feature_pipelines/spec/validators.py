"""Validators: row-level rules on a column, run as blocking Dagster asset checks.

Each validator gives a polars expression that is true for the rows that break the rule. Nulls
break only `not_null`; every other rule ignores them, as SQL constraints do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import polars as pl

from feature_pipelines.errors import DefinitionError


@dataclass(frozen=True)
class Validator:
    """A named rule; `failing(col)` builds the expression that marks offending rows."""

    rule: str
    params: tuple[Any, ...]
    failing: Callable[[pl.Expr], pl.Expr]
    description: str

    def config(self) -> dict:
        return {"rule": self.rule, "params": [repr(p) for p in self.params]}


def not_null() -> Validator:
    return Validator("not_null", (), lambda c: c.is_null(), "has no nulls")


def unique() -> Validator:
    return Validator("unique", (), lambda c: c.is_not_null() & c.is_duplicated(), "has no duplicate values")


def _bound(rule: str, op: str, value: Any) -> Validator:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise DefinitionError(f"{rule}({value!r}): expected a number")
    tests = {
        ">": lambda c: c <= value,
        ">=": lambda c: c < value,
        "<": lambda c: c >= value,
        "<=": lambda c: c > value,
    }
    return Validator(rule, (value,), lambda c: c.is_not_null() & tests[op](c), f"is {op} {value}")


def greater_than(value: float) -> Validator:
    return _bound("greater_than", ">", value)


def greater_than_or_equal(value: float) -> Validator:
    return _bound("greater_than_or_equal", ">=", value)


def less_than(value: float) -> Validator:
    return _bound("less_than", "<", value)


def less_than_or_equal(value: float) -> Validator:
    return _bound("less_than_or_equal", "<=", value)


def in_range(low: float, high: float, *, inclusive: bool = True) -> Validator:
    """Values within [low, high] (or (low, high) with inclusive=False)."""
    if low > high:
        raise DefinitionError(f"in_range({low}, {high}): low must not exceed high")
    if inclusive:
        return Validator("in_range", (low, high), lambda c: c.is_not_null() & ~c.is_between(low, high), f"is within [{low}, {high}]")
    return Validator("in_range", (low, high), lambda c: c.is_not_null() & ((c <= low) | (c >= high)), f"is within ({low}, {high})")


def is_in(values: list | tuple | set) -> Validator:
    allowed = sorted(values, key=repr)
    if not allowed:
        raise DefinitionError("is_in([]) would reject every row: give at least one allowed value")
    return Validator("is_in", tuple(allowed), lambda c: c.is_not_null() & ~c.is_in(allowed), f"is one of {allowed}")


def matches_regex(pattern: str) -> Validator:
    """Whole value matches `pattern` (anchored at both ends, Rust regex syntax)."""
    try:
        re.compile(pattern)
    except re.error as err:
        raise DefinitionError(f"matches_regex({pattern!r}): not a valid regular expression ({err})") from None
    anchored = f"^(?:{pattern})$"
    return Validator("matches_regex", (pattern,), lambda c: c.is_not_null() & ~c.cast(pl.String).str.contains(anchored), f"matches /{pattern}/")
