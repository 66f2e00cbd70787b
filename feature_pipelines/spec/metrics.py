"""Metrics: what a feature computes per entity at the end of each partition interval."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from feature_pipelines.errors import DefinitionError
from feature_pipelines.spec.durations import duration_label, parse_duration
from feature_pipelines.spec.names import check_identifier

AGGREGATIONS = ("count", "sum", "mean", "std", "var", "min", "max", "median")


@dataclass(frozen=True)
class Rolling:
    """Aggregations of source columns over trailing windows.

    The value stamped at t (the end of a partition interval) aggregates exactly the events with
    timestamp in [t - window, t): an event at t itself belongs to the next interval. `count`
    counts non-null values; on an empty window count is 0 and every other aggregation is null;
    `std`/`var` are sample statistics (ddof=1), null for fewer than two values.
    Output columns are named `<column>_<aggregation>_<window>`, e.g. `amount_sum_7d`.
    """

    windows: list[str | timedelta]
    aggregations: dict[str, list[str]]
    window_us: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.windows:
            raise DefinitionError("Rolling needs at least one window, e.g. windows=['7d']")
        if not self.aggregations:
            raise DefinitionError("Rolling needs aggregations, e.g. aggregations={'amount': ['sum']}")
        us = tuple(parse_duration(w) for w in self.windows)
        if len(set(us)) != len(us):
            raise DefinitionError(f"Rolling windows {self.windows} repeat a length")
        object.__setattr__(self, "window_us", us)
        for column, aggs in self.aggregations.items():
            if not isinstance(column, str) or not column:
                raise DefinitionError(f"Rolling aggregations: {column!r} is not a column name")
            if isinstance(aggs, str) or not aggs:
                raise DefinitionError(f"Rolling aggregations for {column!r} must be a non-empty list, e.g. ['sum']")
            for agg in aggs:
                if agg not in AGGREGATIONS:
                    raise DefinitionError(
                        f"aggregation {agg!r} on column {column!r} is not supported; expected one of {', '.join(AGGREGATIONS)}"
                    )

    def outputs(self) -> list[tuple[str, str, int, str]]:
        """(source column, aggregation, window in µs, output column) for every output column."""
        return [
            (col, agg, w, f"{col}_{agg}_{duration_label(w)}")
            for w in self.window_us
            for col, aggs in self.aggregations.items()
            for agg in aggs
        ]

    def config(self) -> dict:
        return {"kind": "rolling", "windows_us": list(self.window_us), "aggregations": {k: list(v) for k, v in self.aggregations.items()}}


@dataclass(frozen=True)
class Latest:
    """The newest event's `columns` strictly before the end of each interval.

    Rows are written only for entities with an event inside the interval (the value changed);
    a point-in-time read then finds the newest one, so history never has to be rescanned.
    Output columns are named `latest_<column>`, plus `latest_event_timestamp`.
    """

    columns: list[str]

    def __post_init__(self) -> None:
        if not self.columns or isinstance(self.columns, str):
            raise DefinitionError("Latest needs a non-empty list of columns")
        for c in self.columns:
            check_identifier(f"latest_{c}", "Latest output column")

    def outputs(self) -> list[tuple[str, str]]:
        return [(c, f"latest_{c}") for c in self.columns]

    def config(self) -> dict:
        return {"kind": "latest", "columns": list(self.columns)}
