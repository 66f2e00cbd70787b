"""The polars engine: computes a feature for a range of partitions in one pass on one machine.

Two exact algorithms for rolling windows, chosen per feature:

* dense buckets (fixed-length intervals, every window a whole number of intervals, no median):
  events are reduced to per-(entity, interval) count/sum/centred sum of squares/min/max, laid out
  densely per entity, and each window is a difference of cumulative sums (min/max: fixed-size
  rolling kernels). Cost is linear in events + output rows.
* time-based rolling (any other case: calendar months, windows that cut intervals, median): the
  output stamps are interleaved with the events and polars' `rolling_*_by(closed="left")` kernels
  evaluate [t - window, t) per entity.

Both produce identical rows; the tests check each against a brute-force oracle.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl

from feature_pipelines.engine.source_reader import TS, read_events
from feature_pipelines.errors import DataError, DefinitionError
from feature_pipelines.spec.feature import FEATURE_TIMESTAMP, Feature

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


class PolarsEngine:
    """Computes partitions of a feature with polars (and numpy for the dense kernels)."""

    name = "polars"

    def compute(self, feature: Feature, partition_keys: list[str]) -> dict[str, pl.DataFrame]:
        """Frames for consecutive `partition_keys` of `feature`, keyed by partition, each sorted by keys then time."""
        if not partition_keys:
            return {}
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
        b_us = np.array([_us(b) for b in bounds], dtype=np.int64)
        lookback = timedelta(microseconds=feature.lookback_us)
        if feature.kind == "rolling":
            value_cols = list(dict.fromkeys(c for m in feature.rolling for c in m.aggregations))
            events = read_events(feature, bounds[0] - lookback, bounds[-1], value_cols)
            events = _check_numeric(feature, events, value_cols)
            frame = _rolling(feature, events, b_us)
        elif feature.kind == "latest":
            cols = [c for m in feature.latest for c in m.columns]
            events = read_events(feature, bounds[0], bounds[-1], cols)
            frame = _latest(feature, events, b_us)
        else:
            events = read_events(feature, bounds[0], bounds[-1], None)
            frame = _rows(feature, events, b_us)
        keys = [grain.key(b) for b in bounds[:-1]]
        # A stable sort on the partition index keeps each slice ordered by entity then time.
        frame = frame.sort("__part", maintain_order=True)
        counts = np.bincount(frame["__part"].to_numpy(), minlength=len(keys))
        frame = frame.drop("__part")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return {k: frame.slice(int(offsets[i]), int(counts[i])) for i, k in enumerate(keys)}


def _check_numeric(feature: Feature, events: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    """Count-only columns may have any dtype (they become 1.0/null markers); others must be numeric."""
    for c in cols:
        aggs = {a for m in feature.rolling for a in m.aggregations.get(c, [])}
        if aggs == {"count"}:
            events = events.with_columns(pl.when(pl.col(c).is_not_null()).then(1.0).alias(c))
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


def _rolling(feature: Feature, events: pl.DataFrame, b_us: np.ndarray) -> pl.DataFrame:
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
    if events.height == 0:
        return pl.DataFrame(schema=schema)
    if dense:
        result = _rolling_dense(events, outputs, b_us, grain_us, feature.lookback_us)
    else:
        result = _rolling_by_time(events, outputs, b_us, feature.lookback_us)
    # Both algorithms return rows ordered by (entity, partition); entity ids index `entities`.
    result = pl.concat([result, entities.drop("__eid")[result["__eid"].to_numpy()]], how="horizontal")
    result = result.with_columns(
        pl.Series(FEATURE_TIMESTAMP, b_us[result["__part"].to_numpy() + 1]).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    )
    return result.select(list(schema)).cast(schema)


def _rolling_dense(events: pl.DataFrame, outputs, b_us: np.ndarray, step: int, lookback: int) -> pl.DataFrame:
    n = len(b_us) - 1
    wb = lookback // step
    eid = events["__eid"].to_numpy()
    idx = (events["__t"].to_numpy() - b_us[0]) // step  # interval index, -wb .. n-1
    n_ent = int(eid.max()) + 1
    first = np.full(n_ent, np.iinfo(np.int64).max)
    last = np.full(n_ent, np.iinfo(np.int64).min)
    np.minimum.at(first, eid, idx)
    np.maximum.at(last, eid, idx)
    lo = np.maximum(first, 0) - wb  # wb leading rows keep every window inside its own entity
    hi = np.minimum(last + wb, n - 1)
    length = np.maximum(hi - lo + 1, 0)
    offset = np.zeros(n_ent + 1, dtype=np.int64)
    np.cumsum(length, out=offset[1:])
    total = int(offset[-1])
    row_eid = np.repeat(np.arange(n_ent), length)
    row_idx = np.arange(total) - offset[row_eid] + lo[row_eid]
    pos = offset[eid] + (idx - lo[eid])

    def window(cum: np.ndarray, w: int) -> np.ndarray:
        """Sum over the w rows ending at each row, from an exclusive cumulative array of length total+1."""
        out = np.empty(total, dtype=cum.dtype)
        out[w - 1 :] = cum[w:] - cum[: total + 1 - w]
        out[: w - 1] = cum[1:w] - cum[0]  # only padding rows start this close to the array's head
        return out

    def excl_cumsum(x: np.ndarray) -> np.ndarray:
        out = np.zeros(total + 1, dtype=x.dtype)
        np.cumsum(x, out=out[1:])
        return out

    ones = excl_cumsum(np.bincount(pos, minlength=total).astype(np.int64))
    # Rows before an entity's first event are padding: their windows may reach into the previous entity.
    active = (window(ones, wb + 1) > 0) & (row_idx >= np.maximum(first, 0)[row_eid])
    starts_cache: dict[int, np.ndarray] = {}

    def window_starts(w: int) -> np.ndarray:
        if w not in starts_cache:
            starts_cache[w] = np.maximum(np.arange(total) - (w - 1), 0)  # clipped rows are padding
        return starts_cache[w]

    columns: dict[str, np.ndarray | pl.Series] = {}
    for col in dict.fromkeys(c for c, *_ in outputs):
        raw = events[col].cast(pl.Float64)
        valid = raw.is_not_null().to_numpy()
        v = raw.to_numpy()[valid]
        p = pos[valid]
        # Per-interval statistics; bincount adds each interval's events in event order, so every value
        # below depends only on the events of the intervals it covers, never on the range computed.
        n_b = np.bincount(p, minlength=total).astype(np.int64)
        s_b = np.bincount(p, weights=v, minlength=total)
        cnt = excl_cumsum(n_b)
        col_aggs = {agg for c, agg, *_ in outputs if c == col}
        sums = _Pyramid((s_b,), _add) if col_aggs & {"sum", "mean"} else None
        moments = None
        if col_aggs & {"std", "var"}:
            mean_b = np.divide(s_b, n_b, out=np.zeros(total), where=n_b > 0)
            m2_b = np.bincount(p, weights=(v - mean_b[p]) ** 2, minlength=total)
            moments = _Pyramid((n_b.astype(np.float64), mean_b, m2_b), _chan)
        if col_aggs & {"min", "max"}:
            bucket_min, bucket_max = (np.full(total, np.nan) for _ in range(2))
            if len(p):
                starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]])
                bucket_min[p[starts]] = np.minimum.reduceat(v, starts)
                bucket_max[p[starts]] = np.maximum.reduceat(v, starts)
            bucket_min, bucket_max = pl.Series(bucket_min, nan_to_null=True), pl.Series(bucket_max, nan_to_null=True)
        for c, agg, w, out in outputs:
            if c != col:
                continue
            wk = w // step
            n_w = window(cnt, wk)
            with np.errstate(invalid="ignore", divide="ignore"):
                if agg == "count":
                    columns[out] = n_w
                elif agg in ("sum", "mean"):
                    (total_w,) = sums.query(window_starts(wk), wk)
                    columns[out] = np.where(n_w > 0, total_w if agg == "sum" else total_w / n_w, np.nan)
                elif agg in ("std", "var"):
                    _, _, m2 = moments.query(window_starts(wk), wk)
                    var = np.where(n_w > 1, np.maximum(m2, 0.0) / (n_w - 1), np.nan)
                    columns[out] = np.sqrt(var) if agg == "std" else var
                else:
                    series = bucket_min if agg == "min" else bucket_max
                    fn = series.rolling_min if agg == "min" else series.rolling_max
                    columns[out] = fn(wk, min_samples=1)
    frame = pl.DataFrame({"__eid": row_eid, "__part": row_idx})
    frame = frame.with_columns(
        [pl.Series(k, v, nan_to_null=True) if isinstance(v, np.ndarray) else v.alias(k) for k, v in columns.items()]
    )
    return frame.filter(pl.Series(active))


def _add(a: tuple, b: tuple) -> tuple:
    return (a[0] + b[0],)


def _chan(a: tuple, b: tuple) -> tuple:
    """Combine (count, mean, M2) of two disjoint samples (Chan et al.), numerically stable."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = mean_b - mean_a
        frac = np.where(n > 0, n_b / n, 0.0)
        mean = mean_a + delta * frac
        m2 = m2_a + m2_b + delta * delta * n_a * frac
    return n, mean, m2


class _Pyramid:
    """Power-of-two block summaries, so a window's aggregate is combined in an order fixed by its length.

    Level k holds the summary of rows [i, i + 2**k). A window of w rows starting at s combines the
    blocks of w's binary digits, largest first. The result therefore depends only on the rows inside
    the window, which makes a partition computed alone bit-identical to the same partition computed
    inside a longer backfill (a prefix-sum difference would not be).
    """

    def __init__(self, base: tuple, combine) -> None:
        self.combine = combine
        self.levels = [base]

    def _level(self, k: int) -> tuple:
        while len(self.levels) <= k:
            prev = self.levels[-1]
            half = 1 << (len(self.levels) - 1)
            shifted = tuple(np.concatenate([a[half:], np.zeros(half, dtype=a.dtype)]) for a in prev)
            self.levels.append(self.combine(prev, shifted))
        return self.levels[k]

    def query(self, starts: np.ndarray, w: int) -> tuple:
        acc = None
        pos = starts
        for k in range(w.bit_length() - 1, -1, -1):
            if w >> k & 1:
                level = self._level(k)
                at = np.minimum(pos, len(level[0]) - 1)
                block = tuple(a[at] for a in level)
                acc = block if acc is None else self.combine(acc, block)
                pos = pos + (1 << k)
        return acc


def _rolling_by_time(events: pl.DataFrame, outputs, b_us: np.ndarray, lookback: int) -> pl.DataFrame:
    n = len(b_us) - 1
    t = events["__t"].to_numpy()
    # Partitions i whose output reads this event: b_i - lookback <= t < b_{i+1}.
    i_min = np.searchsorted(b_us[1:], t, side="right")
    i_max = np.searchsorted(b_us[:-1], t + lookback, side="right") - 1
    spans = pl.DataFrame({"__eid": events["__eid"], "a": np.clip(i_min, 0, n - 1), "b": np.clip(i_max, 0, n - 1)})
    spans = spans.filter(pl.col("a") <= pl.col("b")).unique().sort("__eid", "a")
    # Merge overlapping spans per entity, then list every (entity, partition) pair once.
    spans = spans.with_columns(reach=pl.col("b").cum_max().over("__eid"))
    spans = spans.with_columns(
        run=((pl.col("a") > pl.col("reach").shift(1).over("__eid") + 1) | pl.col("reach").shift(1).over("__eid").is_null()).cum_sum()
    )
    grid = spans.group_by("run", maintain_order=True).agg(pl.col("__eid").first(), pl.col("a").min(), pl.col("b").max())
    grid = grid.select("__eid", __part=pl.int_ranges("a", pl.col("b") + 1)).explode("__part")
    stamps = grid.with_columns(__t=pl.Series(b_us[grid["__part"].to_numpy() + 1]))
    value_cols = list(dict.fromkeys(c for c, *_ in outputs))
    ev = events.select("__eid", "__t", *[pl.col(c).cast(pl.Float64) for c in value_cols]).with_columns(__part=pl.lit(None, pl.Int64))
    both = pl.concat([ev, stamps.with_columns([pl.lit(None, pl.Float64).alias(c) for c in value_cols])], how="diagonal")
    both = both.sort(["__eid", "__t"], maintain_order=True).with_columns(pl.col("__t").cast(pl.Datetime("us")))
    exprs = []
    counts = {}
    for c, agg, w, out in outputs:
        size = f"{w}us"
        x = pl.col(c)
        count = x.is_not_null().cast(pl.Int64).rolling_sum_by("__t", size, closed="left").over("__eid").fill_null(0)
        counts[(c, w)] = count
        if agg == "count":
            e = count
        elif agg == "sum":
            e = pl.when(count > 0).then(x.rolling_sum_by("__t", size, closed="left").over("__eid"))
        elif agg == "std" or agg == "var":
            fn = x.rolling_std_by if agg == "std" else x.rolling_var_by
            e = pl.when(count > 1).then(fn("__t", size, closed="left").over("__eid"))
        else:
            e = getattr(x, f"rolling_{agg}_by")("__t", size, closed="left").over("__eid")
            e = pl.when(count > 0).then(e)
        exprs.append(e.alias(out))
    out = both.lazy().with_columns(exprs).filter(pl.col("__part").is_not_null()).collect()
    return out.drop(value_cols + ["__t"], strict=False)


def _latest(feature: Feature, events: pl.DataFrame, b_us: np.ndarray) -> pl.DataFrame:
    keys = feature.join_keys
    t = events[TS].dt.epoch("us").to_numpy()
    part = np.searchsorted(b_us[1:], t, side="right")
    events = events.with_columns(__part=pl.Series(part, dtype=pl.Int64)).sort([*keys, "__part", TS], maintain_order=True)
    cols = [(c, out) for m in feature.latest for c, out in m.outputs()]
    latest = events.group_by([*keys, "__part"], maintain_order=True).agg(
        *[pl.col(c).last().alias(out) for c, out in cols], pl.col(TS).last().alias("latest_event_timestamp")
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
