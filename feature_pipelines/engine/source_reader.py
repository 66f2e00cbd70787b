"""Reads the source rows one computation needs: transformed, time-filtered, keyed and normalised to UTC."""

from __future__ import annotations

from datetime import datetime, timezone

import polars as pl

from feature_pipelines.errors import DataError
from feature_pipelines.keys import with_surrogate_key
from feature_pipelines.spec.feature import Feature

TS = "__ts"  # internal event-time column: Datetime('us', 'UTC')


def read_events(feature: Feature, lo: datetime, hi: datetime, value_columns: list[str] | None) -> pl.DataFrame:
    """Source rows with event time in [lo, hi), with join keys computed and event time in column `__ts`.

    Naive source timestamps are read as UTC; aware ones are converted to UTC. The time filter is
    applied to the lazy scan in the column's own dtype so polars pushes it into the reader.
    `value_columns=None` keeps every column. A row whose event time is null belongs to no interval:
    rather than dropping it silently, any such row in the (transformed) source is a DataError. The
    filter keeps null times so the reader finds them (row groups without nulls are still skipped).
    """
    frame = scan_events(feature, lo, hi, value_columns)
    try:
        events = frame.collect()
    except pl.exceptions.PolarsError as err:
        raise DataError(f"feature {feature.name!r}: reading source {feature.source.path!r} failed: {err}") from err
    return finish_events(feature, events)


def scan_events(feature: Feature, lo: datetime, hi: datetime, value_columns: list[str] | None) -> pl.LazyFrame:
    """The lazy half of `read_events`: transformed, schema-checked, time-filtered (null times kept), columns selected.

    The sharded engines stream this frame into buckets instead of collecting it; `finish_events` then
    does the rest on each bucket, so every engine reads exactly the rows `read_events` would.
    """
    frame = feature.source.scan()
    if feature.transform is not None:
        frame = feature.transform(frame)
        if not isinstance(frame, pl.LazyFrame):
            raise DataError(f"feature {feature.name!r}: transform must return a polars LazyFrame, got {type(frame).__name__}")
    try:
        schema = frame.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"feature {feature.name!r}: cannot read source {feature.source.path!r}: {err}") from err
    ts = feature.timestamp
    if ts not in schema:
        raise DataError(
            f"feature {feature.name!r}: timestamp column {ts!r} is missing from source {feature.source.path!r}; "
            f"columns are {list(schema)}"
        )
    dtype = schema[ts]
    if not isinstance(dtype, pl.Datetime):
        raise DataError(
            f"feature {feature.name!r}: timestamp column {ts!r} has dtype {dtype}, expected Datetime "
            "(naive values are read as UTC); parse it in a transform, e.g. pl.col(...).str.to_datetime()"
        )
    required = list(dict.fromkeys(identity_columns(feature) + (value_columns or [])))
    missing = [c for c in required if c not in schema]
    if missing:
        raise DataError(
            f"feature {feature.name!r}: column(s) {missing} are missing from source {feature.source.path!r}; "
            f"expected {required}, found {list(schema)}"
        )
    if dtype.time_zone is None:
        lo_lit, hi_lit = (pl.lit(v.astimezone(timezone.utc).replace(tzinfo=None)) for v in (lo, hi))
    else:
        lo_lit, hi_lit = (pl.lit(v).dt.convert_time_zone(dtype.time_zone) for v in (lo, hi))
    frame = frame.filter(((pl.col(ts) >= lo_lit) & (pl.col(ts) < hi_lit)) | pl.col(ts).is_null())
    if value_columns is not None:
        frame = frame.select(list(dict.fromkeys([ts] + required)))
    return frame


def identity_columns(feature: Feature) -> list[str]:
    """Source columns that identify an entity: plain join keys, then the columns surrogate keys come from."""
    derived = feature.derived_keys
    return [k for k in feature.join_keys if k not in derived] + sorted({c for cols in derived.values() for c in cols})


def null_time_error(feature: Feature, missing_time: int) -> DataError:
    ts = feature.timestamp
    return DataError(
        f"feature {feature.name!r}: timestamp column {ts!r} is null in {missing_time} row(s) of source "
        f"{feature.source.path!r}{' (after the transform)' if feature.transform is not None else ''}; expected "
        "an event time in every row (a row without one belongs to no partition). Fix the source, or drop such "
        f"rows on purpose in a transform: .filter(pl.col({ts!r}).is_not_null())"
    )


def finish_events(feature: Feature, events: pl.DataFrame) -> pl.DataFrame:
    """The eager half of `read_events` on collected rows: null-time check, UTC `__ts`, surrogate keys, key check."""
    ts = feature.timestamp
    dtype = events.schema[ts]
    missing_time = events[ts].null_count()
    if missing_time:
        raise null_time_error(feature, missing_time)
    stamp = pl.col(ts).cast(pl.Datetime("us", dtype.time_zone))
    stamp = stamp.dt.replace_time_zone("UTC") if dtype.time_zone is None else stamp.dt.convert_time_zone("UTC")
    events = events.with_columns(stamp.alias(TS))
    for key, cols in feature.derived_keys.items():
        events = with_surrogate_key(events, key, list(cols))
    _check_keys(feature, events)
    return events


def _check_keys(feature: Feature, events: pl.DataFrame) -> None:
    for key in feature.join_keys:
        column = events[key]
        bad = column.is_null()
        if column.dtype == pl.String:
            bad = bad | (column.str.len_bytes() == 0)
        if bad.any():
            sample = events.filter(bad).head(3).to_dicts()
            raise DataError(
                f"feature {feature.name!r}: join key {key!r} is null or empty in {int(bad.sum())} source row(s), "
                f"expected a value in every row; first offending rows: {sample}"
            )
