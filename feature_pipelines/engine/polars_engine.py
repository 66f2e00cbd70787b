"""The polars engine: computes a feature for a range of partitions in one pass on one machine.

Two exact algorithms for rolling windows, chosen per feature:

* dense intervals (fixed-length intervals, every window a whole number of intervals, no median):
  events are reduced to per-(entity, interval) count/sum/centred sum of squares/min/max, laid out
  densely per entity, and each window combines the power-of-two blocks of its length (min/max:
  fixed-size rolling kernels). Cost is linear in events + output rows (times log of the window).
* event runs (any other case: calendar months, windows that cut intervals, median): each output
  row's window [t - w, t) is located as a run of its entity's sorted events with one binary search,
  and combined from the same power-of-two block summaries over single events.

Both produce identical rows; the tests check each against a brute-force oracle. Neither uses a
difference of prefix sums: a window's value depends only on the events inside it, so a partition
computed alone is bit-identical to the same partition inside any backfill (otherwise re-materializing
a partition would report a spurious PATCH).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import polars as pl

from feature_pipelines.engine.blocks import IntervalStats, excl_cumsum, range_extreme, window_count
from feature_pipelines.engine.source_reader import TS, read_events
from feature_pipelines.errors import DataError, DefinitionError
from feature_pipelines.spec.feature import FEATURE_TIMESTAMP, Feature
from feature_pipelines.spec.granularity import epoch_us


@dataclass(frozen=True)
class RangePlan:
    """A validated range of consecutive partitions: their keys, interval boundaries and what to read."""

    keys: list[str]  # partition keys in time order
    b_us: np.ndarray  # boundaries b_0 .. b_n in µs since the epoch
    lo: datetime  # read events with time in [lo, hi)
    hi: datetime
    columns: list[str] | None  # source columns the kernel needs besides keys and time (None: all)


def plan_range(feature: Feature, partition_keys: list[str]) -> RangePlan | None:
    """Check that `partition_keys` are one consecutive range inside the feature; None when empty."""
    if not partition_keys:
        return None
    grain = feature.grain
    starts = [grain.parse_key(k) for k in partition_keys]
    for key, start in zip(partition_keys, starts):
        if start < feature.start or (feature.end is not None and start >= feature.end):
            raise DefinitionError(
                f"partition {key!r} is outside feature {feature.name!r}, which starts at "
                f"{grain.key(feature.start)}" + (f" and ends before {grain.key(feature.end)}" if feature.end else "")
            )
    bounds = grain.boundaries(min(starts), max(starts))
    if len(bounds) - 1 != len(set(starts)):
        raise DefinitionError(f"feature {feature.name!r}: partitions {partition_keys} are not one consecutive range")
    b_us = np.array([epoch_us(b) for b in bounds], dtype=np.int64)
    keys = [grain.key(b) for b in bounds[:-1]]
    if feature.kind == "rolling":
        cols = list(dict.fromkeys(c for m in feature.rolling for c in m.aggregations))
        return RangePlan(keys, b_us, bounds[0] - timedelta(microseconds=feature.lookback_us), bounds[-1], cols)
    if feature.kind == "latest":
        return RangePlan(keys, b_us, bounds[0], bounds[-1], [c for m in feature.latest for c in m.columns])
    return RangePlan(keys, b_us, bounds[0], bounds[-1], None)


def compute_frame(feature: Feature, events: pl.DataFrame, b_us: np.ndarray, *, keep_eid: bool = False) -> pl.DataFrame:
    """The kernel: output rows of every partition from events read by `read_events`, with partition index `__part`.

    Rows are ordered by partition, then by join keys (then time for features without metrics). The
    value of a row depends only on its own entity's events (in source order), so any split of the
    entities into buckets gives the same rows. `keep_eid` keeps `__eid` on rolling rows: the rank of the
    row's join keys among the distinct keys of `events` (the sharded engines merge buckets by it).
    """
    if feature.kind == "rolling":
        cols = list(dict.fromkeys(c for m in feature.rolling for c in m.aggregations))
        frame = _rolling(feature, check_numeric(feature, events, cols), b_us, keep_eid)
    elif feature.kind == "latest":
        frame = _latest(feature, events, b_us)
    else:
        frame = _rows(feature, events, b_us)
    # A stable sort on the partition index keeps each slice ordered by entity then time
    # (the dense algorithm already returns partition-major rows).
    if not frame["__part"].is_sorted():
        frame = frame.sort("__part", maintain_order=True)
    return frame


def split_partitions(frame: pl.DataFrame, keys: list[str]) -> Iterator[tuple[str, pl.DataFrame]]:
    """(key, rows of that partition) in partition order, from a frame sorted by `__part` (zero-copy slices)."""
    counts = np.bincount(frame["__part"].to_numpy(), minlength=len(keys))
    frame = frame.drop("__part")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for i, k in enumerate(keys):
        yield k, frame.slice(int(offsets[i]), int(counts[i]))


class PolarsEngine:
    """Computes partitions of a feature with polars (and numpy for the dense kernels), all in memory."""

    name = "polars"

    def compute(self, feature: Feature, partition_keys: list[str]) -> dict[str, pl.DataFrame]:
        """Frames for consecutive `partition_keys` of `feature`, keyed by partition, each sorted by keys then time."""
        return dict(self.compute_iter(feature, partition_keys))

    def compute_iter(self, feature: Feature, partition_keys: list[str]) -> Iterator[tuple[str, pl.DataFrame]]:
        """(partition key, frame) in partition order; here the whole range is computed before the first one."""
        plan = plan_range(feature, partition_keys)
        if plan is None:
            return
        events = read_events(feature, plan.lo, plan.hi, plan.columns)
        yield from split_partitions(compute_frame(feature, events, plan.b_us), plan.keys)


def check_numeric(feature: Feature, events: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    """Count-only columns may have any dtype (they become 1.0/null markers); others must be numeric.

    NaN is missing data, like null: a NaN in a float column is never counted or aggregated.
    """
    for c in cols:
        aggs = {a for m in feature.rolling for a in m.aggregations.get(c, [])}
        if aggs == {"count"}:
            present = pl.col(c).is_not_null() & (pl.col(c).is_not_nan() if events.schema[c].is_float() else True)
            events = events.with_columns(pl.when(present).then(1.0).alias(c))
        elif not events.schema[c].is_numeric():
            raise DataError(
                f"feature {feature.name!r}: column {c!r} has dtype {events.schema[c]}, but Rolling aggregations "
                "need a numeric column (only 'count' accepts any dtype); cast it in a transform"
            )
    return events


def _entity_ids(frame: pl.DataFrame, keys: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Attach a dense entity id `__eid` ordered by the keys; return (frame, distinct keys by id)."""
    entities = frame.select(keys).unique().sort(keys).with_row_index("__eid")
    entities = entities.with_columns(pl.col("__eid").cast(pl.Int64))
    return frame.join(entities, on=keys, how="left"), entities


def _rolling(feature: Feature, events: pl.DataFrame, b_us: np.ndarray, keep_eid: bool = False) -> pl.DataFrame:
    keys = feature.join_keys
    outputs = [o for m in feature.rolling for o in m.outputs()]
    grain_us = feature.grain.fixed_us
    dense = (
        grain_us is not None
        and all(w % grain_us == 0 for *_, w, _ in outputs)
        and not any(agg == "median" for _, agg, _, _ in outputs)
    )
    events = events.with_columns(pl.col(TS).dt.epoch("us").alias("__t"))
    events, entities = _entity_ids(events, keys)
    events = events.sort(["__eid", "__t"], maintain_order=True)
    schema = {**{k: entities.schema[k] for k in keys}, FEATURE_TIMESTAMP: pl.Datetime("us", "UTC")}
    schema.update({out: pl.Int64 if agg == "count" else pl.Float64 for _, agg, _, out in outputs})
    schema["__part"] = pl.Int64
    if keep_eid:
        schema["__eid"] = pl.Int64
    if events.height == 0:
        return pl.DataFrame(schema=schema)
    if dense:
        result = _rolling_dense(events, outputs, b_us, grain_us, feature.lookback_us)
    else:
        result = _rolling_by_time(events, outputs, b_us, feature.lookback_us)
    # Entity ids index `entities`; rows are ordered by entity within each partition.
    result = pl.concat([result, entities.drop("__eid")[result["__eid"].to_numpy()]], how="horizontal")
    result = result.with_columns(
        pl.Series(FEATURE_TIMESTAMP, b_us[result["__part"].to_numpy() + 1]).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    )
    return result.select(list(schema)).cast(schema)


def _rolling_dense(events: pl.DataFrame, outputs, b_us: np.ndarray, step: int, lookback: int) -> pl.DataFrame:
    """Rows ordered by (partition, entity id): windows are sums over per-interval summaries."""
    n = len(b_us) - 1
    wb = lookback // step
    eid = events["__eid"].to_numpy()
    idx = (events["__t"].to_numpy() - b_us[0]) // step  # interval index, -wb .. n-1
    n_ent = int(eid.max()) + 1
    first = np.full(n_ent, np.iinfo(np.int64).max)
    last = np.full(n_ent, np.iinfo(np.int64).min)
    np.minimum.at(first, eid, idx)
    np.maximum.at(last, eid, idx)
    # Each entity gets a run of consecutive intervals; wb leading rows keep every window inside it.
    lo = np.maximum(first, 0) - wb
    hi = np.minimum(last + wb, n - 1)
    length = np.maximum(hi - lo + 1, 0)
    offset = np.zeros(n_ent + 1, dtype=np.int64)
    np.cumsum(length, out=offset[1:])
    total = int(offset[-1])
    row_eid = np.repeat(np.arange(n_ent), length)
    row_idx = np.arange(total) - offset[row_eid] + lo[row_eid]
    pos = offset[eid] + (idx - lo[eid])
    ones = excl_cumsum(np.bincount(pos, minlength=total))
    # An output row needs an event within the longest window, at or after the entity's first interval.
    active = (window_count(ones, wb + 1) > 0) & (row_idx >= np.maximum(first, 0)[row_eid])
    keep = np.flatnonzero(active)
    # Partition-major order, entity order within a partition (numpy's stable sort is a radix sort for 16 bits).
    part = row_idx[keep]
    order = keep[np.argsort(part.astype(np.uint16) if n <= 1 << 16 else part, kind="stable")]
    del keep, part, active, ones

    columns: dict[str, pl.Series] = {}
    for col in dict.fromkeys(c for c, *_ in outputs):
        raw = events[col].cast(pl.Float64).fill_nan(None)  # NaN is missing, like null
        valid = raw.is_not_null().to_numpy()
        v = raw.to_numpy()[valid]
        p = pos[valid]
        col_outputs = [(agg, w // step, out) for c, agg, w, out in outputs if c == col]
        aggs = {agg for agg, *_ in col_outputs}
        stats = IntervalStats(v, p, total, moments=bool(aggs & {"std", "var"}))
        gathered: dict[int, tuple] = {}
        if aggs & {"min", "max"}:
            bucket_min, bucket_max = (np.full(total, np.nan) for _ in range(2))
            if len(p):
                starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
                bucket_min[p[starts]] = np.minimum.reduceat(v, starts)
                bucket_max[p[starts]] = np.maximum.reduceat(v, starts)
            bucket_min, bucket_max = pl.Series(bucket_min, nan_to_null=True), pl.Series(bucket_max, nan_to_null=True)
        for agg, wk, out in col_outputs:
            if agg == "count":
                columns[out] = pl.Series(out, window_count(stats.count, wk)[order])
                continue
            if agg in ("min", "max"):
                series = bucket_min if agg == "min" else bucket_max
                rolled = (series.rolling_min if agg == "min" else series.rolling_max)(wk, min_samples=1)
                columns[out] = rolled.gather(order).alias(out)
                continue
            if wk not in gathered:
                at = order - (wk - 1)  # active rows are never within wk - 1 rows of the array's head
                gathered[wk] = tuple(None if x is None else x[at] for x in stats.window(wk))
            n_w, s_w, m2_w = gathered[wk]
            with np.errstate(invalid="ignore", divide="ignore"):
                if agg == "sum":
                    value = np.where(n_w > 0, s_w, np.nan)
                elif agg == "mean":
                    value = np.where(n_w > 0, s_w / n_w, np.nan)
                else:
                    value = np.where(n_w > 1, np.maximum(m2_w, 0.0) / (n_w - 1), np.nan)
                    if agg == "std":
                        value = np.sqrt(value)
            columns[out] = pl.Series(out, value, nan_to_null=True)
    return pl.DataFrame([pl.Series("__eid", row_eid[order]), pl.Series("__part", row_idx[order]), *columns.values()])


def _rolling_by_time(events: pl.DataFrame, outputs, b_us: np.ndarray, lookback: int) -> pl.DataFrame:
    """Rows ordered by (entity, partition): each window is the run of an entity's events in [t - w, t)."""
    n = len(b_us) - 1
    eid = events["__eid"].to_numpy()
    t = events["__t"].to_numpy()
    # Partitions i whose output reads this event: b_i - lookback <= t < b_{i+1}.
    i_min = np.searchsorted(b_us[1:], t, side="right")
    i_max = np.searchsorted(b_us[:-1], t + lookback, side="right") - 1
    spans = pl.DataFrame({"__eid": eid, "a": np.clip(i_min, 0, n - 1), "b": np.clip(i_max, 0, n - 1)})
    spans = spans.filter(pl.col("a") <= pl.col("b")).unique().sort("__eid", "a")
    # Merge overlapping spans per entity, then list every (entity, partition) pair once.
    spans = spans.with_columns(reach=pl.col("b").cum_max().over("__eid"))
    spans = spans.with_columns(
        run=((pl.col("a") > pl.col("reach").shift(1).over("__eid") + 1) | pl.col("reach").shift(1).over("__eid").is_null()).cum_sum()
    )
    grid = spans.group_by("run", maintain_order=True).agg(pl.col("__eid").first(), pl.col("a").min(), pl.col("b").max())
    grid = grid.select("__eid", __part=pl.int_ranges("a", pl.col("b") + 1)).explode("__part")
    g_eid = grid["__eid"].to_numpy()
    stamp = b_us[grid["__part"].to_numpy() + 1]
    # Window bounds are found with one sorted search over (entity, time): every time a window can start
    # or end at is one of the few values in `cuts`, so an event's time is replaced by its rank among them.
    windows = sorted({w for *_, w, _ in outputs})
    cuts = np.unique(np.concatenate([b_us[1:] - w for w in [0, *windows]]))
    stride = len(cuts) + 1
    ev_key = eid * stride + np.searchsorted(cuts, t, side="right")

    columns: dict[str, np.ndarray | pl.Series] = {}
    for col in dict.fromkeys(c for c, *_ in outputs):
        raw = events[col].cast(pl.Float64).fill_nan(None)  # NaN is missing, like null
        valid = raw.is_not_null().to_numpy()
        v = raw.to_numpy()[valid]
        key = ev_key[valid]

        def first_at(x: np.ndarray) -> np.ndarray:
            """Index (among valid events) of each row's entity's first event at or after time x."""
            return np.searchsorted(key, g_eid * stride + np.searchsorted(cuts, x) + 1, side="left")

        col_outputs = [(agg, w, out) for c, agg, w, out in outputs if c == col]
        aggs = {agg for agg, *_ in col_outputs}
        # Each event is its own "interval": the block summaries make sums depend only on the window's events.
        stats = IntervalStats(v, np.arange(len(v)), len(v), moments=bool(aggs & {"std", "var"}))
        hi = first_at(stamp)
        for agg, w, out in col_outputs:
            lo = first_at(stamp - w)
            n_w = hi - lo
            if agg == "count":
                columns[out] = n_w
            elif agg in ("min", "max"):
                columns[out] = range_extreme(v, lo, hi, np.minimum if agg == "min" else np.maximum)
            elif agg == "median":
                columns[out] = _range_median(events, col, g_eid, stamp, w).alias(out)
            else:
                _, s_w, m2_w = stats.ranges(lo, hi)
                with np.errstate(invalid="ignore", divide="ignore"):
                    if agg == "sum":
                        columns[out] = np.where(n_w > 0, s_w, np.nan)
                    elif agg == "mean":
                        columns[out] = np.where(n_w > 0, s_w / n_w, np.nan)
                    else:
                        var = np.where(n_w > 1, np.maximum(m2_w, 0.0) / (n_w - 1), np.nan)
                        columns[out] = np.sqrt(var) if agg == "std" else var
    return grid.with_columns(
        [v.alias(k) if isinstance(v, pl.Series) else pl.Series(k, v, nan_to_null=v.dtype.kind == "f") for k, v in columns.items()]
    )


def _range_median(events: pl.DataFrame, col: str, g_eid: np.ndarray, stamp: np.ndarray, w: int) -> pl.Series:
    """Median over [t - w, t) per row (null when empty) with polars' rolling kernel on stamps interleaved with events.

    A median depends only on the window's values, so this is range-independent without block summaries.
    """
    ev = events.select("__eid", "__t", pl.col(col).cast(pl.Float64).fill_nan(None).alias("v"))
    rows = pl.DataFrame({"__eid": g_eid, "__t": stamp, "__row": np.arange(len(stamp))})
    both = pl.concat([ev, rows], how="diagonal").sort(["__eid", "__t"], maintain_order=True)
    x = pl.col("v")
    median = x.rolling_median_by(pl.col("__t").cast(pl.Datetime("us")), f"{w}us", closed="left").over("__eid")
    both = both.with_columns(median.alias("median")).filter(pl.col("__row").is_not_null()).sort("__row")
    return both["median"]


def _latest(feature: Feature, events: pl.DataFrame, b_us: np.ndarray) -> pl.DataFrame:
    """Per entity and interval, the values of its newest event.

    Newest by the source's own timestamp at its full precision (two events 300 ns apart are not a tie
    although both are stored as the same microsecond); among events with equal timestamps, the one
    last in source order (the order the transform returns, else the file's) wins. NaN is stored as null.
    """
    keys = feature.join_keys
    t = events[TS].dt.epoch("us").to_numpy()
    part = np.searchsorted(b_us[1:], t, side="right")
    order = [*keys, "__part", feature.timestamp]  # a stable sort: ties keep their source order
    events = events.with_columns(__part=pl.Series(part, dtype=pl.Int64)).sort(order, maintain_order=True)
    cols = [(c, out) for m in feature.latest for c, out in m.outputs()]
    latest = events.group_by([*keys, "__part"], maintain_order=True).agg(
        *[(pl.col(c).last().fill_nan(None) if events.schema[c].is_float() else pl.col(c).last()).alias(out) for c, out in cols],
        pl.col(TS).last().alias("latest_event_timestamp"),
    )
    latest = latest.with_columns(
        pl.Series(FEATURE_TIMESTAMP, b_us[latest["__part"].to_numpy() + 1]).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    )
    return latest.select(*keys, FEATURE_TIMESTAMP, *[o for _, o in cols], "latest_event_timestamp", "__part")


def _rows(feature: Feature, events: pl.DataFrame, b_us: np.ndarray) -> pl.DataFrame:
    keys = feature.join_keys
    t = events[TS].dt.epoch("us").to_numpy()
    events = events.with_columns(__part=pl.Series(np.searchsorted(b_us[1:], t, side="right"), dtype=pl.Int64))
    pii = {c for cols in feature.derived_keys.values() for c in cols} - set(keys)
    events = events.drop(feature.timestamp, *pii).rename({TS: FEATURE_TIMESTAMP})
    rest = [c for c in events.columns if c not in (*keys, FEATURE_TIMESTAMP, "__part")]
    return events.select(*keys, FEATURE_TIMESTAMP, *rest, "__part").sort([*keys, FEATURE_TIMESTAMP], maintain_order=True)
