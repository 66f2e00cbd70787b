"""Partition granularities: UTC interval boundaries and partition keys, in the formats Dagster uses.

Specs know nothing of Dagster, but the keys produced here are byte-for-byte the keys of Dagster's
Hourly/Daily/Weekly/MonthlyPartitionsDefinition with timezone UTC, so a key means the same interval
on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from feature_pipelines.errors import DefinitionError

UTC = timezone.utc


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(moment: datetime) -> int:
    """Microseconds since the Unix epoch of an aware datetime (exact: no float rounding)."""
    return (moment - EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class Granularity:
    """One partition granularity: a name, Dagster's key format and, when fixed, its interval length."""

    name: str
    key_format: str
    fixed_us: int | None  # None for calendar months

    def floor(self, moment: datetime) -> datetime:
        """Start of the interval containing `moment` (UTC)."""
        m = moment.astimezone(UTC)
        if self.name == "hourly":
            return m.replace(minute=0, second=0, microsecond=0)
        day = m.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.name == "daily":
            return day
        if self.name == "weekly":  # Dagster's weekly partitions start on Sunday
            return day - timedelta(days=(day.weekday() + 1) % 7)
        return day.replace(day=1)

    def next(self, start: datetime) -> datetime:
        """Start of the interval after the one starting at `start`."""
        if self.fixed_us is not None:
            return start + timedelta(microseconds=self.fixed_us)
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)

    def key(self, start: datetime) -> str:
        return start.strftime(self.key_format)

    def parse_key(self, key: str) -> datetime:
        """Interval start for a partition key; raises a DefinitionError naming the expected format."""
        try:
            start = datetime.strptime(key, self.key_format).replace(tzinfo=UTC)
        except (TypeError, ValueError):
            start = None
        if start is None or self.floor(start) != start:
            example = self.key(self.floor(datetime(2024, 1, 3, 5, tzinfo=UTC)))
            raise DefinitionError(
                f"partition key {key!r} is not a {self.name} partition: expected the format "
                f"{self.key_format!r} at an interval start, e.g. {example!r}"
            )
        return start

    def boundaries(self, first_start: datetime, last_start: datetime) -> list[datetime]:
        """Interval boundaries b0..bn for the partitions whose starts run from first_start to last_start."""
        out = [first_start]
        while out[-1] <= last_start:
            out.append(self.next(out[-1]))
        return out


GRANULARITIES = {
    "hourly": Granularity("hourly", "%Y-%m-%d-%H:%M", 3_600_000_000),
    "daily": Granularity("daily", "%Y-%m-%d", 86_400_000_000),
    "weekly": Granularity("weekly", "%Y-%m-%d", 7 * 86_400_000_000),
    "monthly": Granularity("monthly", "%Y-%m-%d", None),
}


def granularity(name: str) -> Granularity:
    try:
        return GRANULARITIES[name]
    except KeyError:
        raise DefinitionError(
            f"granularity {name!r} is not supported: expected one of {', '.join(GRANULARITIES)}"
        ) from None


def parse_start(value: str | date | datetime) -> datetime:
    """A partition start date as an aware UTC datetime; naive values are read as UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise DefinitionError(f"start {value!r} is not an ISO date such as '2024-01-01'") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise DefinitionError(f"start {value!r} must be a date, datetime or ISO string")
