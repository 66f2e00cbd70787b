"""Window lengths: parse '7d' / '36h' / timedelta into microseconds, and print them back canonically."""

from __future__ import annotations

import re
from datetime import timedelta

from feature_pipelines.errors import DefinitionError

_UNITS_US = {"w": 7 * 86_400_000_000, "d": 86_400_000_000, "h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000}
_PATTERN = re.compile(r"^\s*(\d+)\s*([wdhms])\s*$")


def parse_duration(value: str | timedelta, *, what: str = "window") -> int:
    """Return a positive whole-second duration in microseconds from '7d', '36h', '90m', '45s', '2w' or a timedelta."""
    if isinstance(value, timedelta):
        us = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        if us <= 0 or us % 1_000_000:
            raise DefinitionError(f"{what} {value!r} must be a positive whole number of seconds")
        return us
    if isinstance(value, str):
        match = _PATTERN.match(value)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)) * _UNITS_US[match.group(2)]
    raise DefinitionError(
        f"{what} {value!r} is not a duration: expected a positive count and a unit, "
        "e.g. '7d', '36h', '90m', '45s', '2w', or a datetime.timedelta"
    )


def duration_label(us: int) -> str:
    """Canonical label used in column names: the largest unit of d/h/m/s that divides evenly ('30d', '36h')."""
    for unit in ("d", "h", "m", "s"):
        if us % _UNITS_US[unit] == 0:
            return f"{us // _UNITS_US[unit]}{unit}"
    raise DefinitionError(f"duration of {us} microseconds is not a whole number of seconds")
