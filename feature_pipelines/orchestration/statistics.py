"""Per-partition statistics of a feature's output columns, and drift against the partitions before.

Statistics become numeric materialization metadata (`<column> mean`, ...), so Dagster plots each one over
partitions. Null fraction, mean, min and max are exact; the quantiles (p50, p95) and the drift figure
use a deterministic sample of at most SAMPLE rows per partition, which keeps a year backfill's cost to a
fraction of a second. Drift is the population stability index (PSI) of each numeric column's values in
a partition against the BASELINE partitions before it, over ten bins fixed per column (the deciles of
the values seen), with 0.5 added to empty bins: below 0.1 is stable, above 0.25 a significant shift. A
column with fewer than MIN_VALUES values in the partition is not judged: on a few dozen entities PSI
measures sampling noise (about bins / n), not drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

SAMPLE = 1_000
BASELINE = 7
DRIFT_WARN = 0.25
MIN_VALUES = 200
_PART = "__part"


def numeric_columns(frame: pl.DataFrame, exclude: set[str]) -> list[str]:
    return [c for c, t in frame.schema.items() if c not in exclude and t.is_numeric()]


def _stacked(frames: list[pl.DataFrame]) -> pl.DataFrame:
    # diagonal: a baseline read from an older version may lack (or have extra) columns; they are simply not compared
    return pl.concat([f.with_columns(pl.lit(i, pl.Int32).alias(_PART)) for i, f in enumerate(frames)], how="diagonal_relaxed")


def _sample(stacked: pl.DataFrame) -> pl.DataFrame:
    """At most SAMPLE rows of each partition, spread evenly over it (deterministic)."""
    step = pl.max_horizontal(pl.len().over(_PART) // SAMPLE, pl.lit(1))
    return stacked.filter((pl.int_range(pl.len()).over(_PART) % step) == 0)


def partition_statistics(frames: dict[str, pl.DataFrame], keys: list[str]) -> dict[str, dict[str, float | int]]:
    """{partition: {"entities": n, "<column> null_fraction": .., "<column> mean": .., ...}} for every numeric output column."""
    if not frames:
        return {}
    parts = list(frames)
    stacked = _stacked(list(frames.values()))
    columns = numeric_columns(stacked, {*keys, _PART})
    exact = [pl.len().alias("rows"), pl.struct(keys).n_unique().alias("entities")]
    for c in columns:
        x = pl.col(c).cast(pl.Float64)
        exact += [x.is_null().mean().alias(f"{c} null_fraction"), x.mean().alias(f"{c} mean"), x.min().alias(f"{c} min"),
                  x.max().alias(f"{c} max")]
    sampled = [q for c in columns for q in (pl.col(c).cast(pl.Float64).quantile(0.5).alias(f"{c} p50"),
                                            pl.col(c).cast(pl.Float64).quantile(0.95).alias(f"{c} p95"))]
    table = stacked.group_by(_PART).agg(exact)
    if sampled:
        table = table.join(_sample(stacked).group_by(_PART).agg(sampled), on=_PART, how="left")
    out: dict[str, dict[str, float | int]] = {p: {"entities": 0} for p in parts}
    for row in table.iter_rows(named=True):
        values = {k: v for k, v in row.items() if k not in (_PART, "rows") and v is not None and not (isinstance(v, float) and np.isnan(v))}
        out[parts[row[_PART]]] = values
    return out


@dataclass(frozen=True)
class Drift:
    partition: str
    baseline: int  # partitions in the baseline (0: nothing to compare with)
    psi: dict[str, float]  # column -> PSI

    @property
    def worst(self) -> tuple[str, float] | None:
        return max(self.psi.items(), key=lambda kv: kv[1]) if self.psi else None

    @property
    def passed(self) -> bool:
        worst = self.worst
        return worst is None or worst[1] < DRIFT_WARN


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = (expected + 0.5) / (expected.sum() + 0.5 * len(expected))
    a = (actual + 0.5) / (actual.sum() + 0.5 * len(actual))
    return float(np.sum((a - e) * np.log(a / e)))


def drift(frames: dict[str, pl.DataFrame], keys: list[str], history: list[pl.DataFrame]) -> list[Drift]:
    """PSI of each partition of `frames` against the BASELINE partitions before it (`history`: the stored ones before
    the first, oldest first, then the run's own)."""
    if not frames:
        return []
    history = history[-BASELINE:]
    ordered = [*history, *frames.values()]
    sample = _sample(_stacked(ordered))
    columns = numeric_columns(sample, {*keys, _PART})
    counts: dict[str, np.ndarray] = {}  # column -> (partitions, bins) histogram of the sample
    n_parts = len(ordered)
    part = sample[_PART].to_numpy()
    for c in columns:
        values = sample[c].cast(pl.Float64).to_numpy()
        ok = ~np.isnan(values)
        if ok.sum() < 20:
            continue
        edges = np.unique(np.quantile(values[ok], np.linspace(0.1, 0.9, 9)))
        bins = np.searchsorted(edges, values[ok], side="right")
        counts[c] = np.bincount(part[ok] * (len(edges) + 1) + bins, minlength=n_parts * (len(edges) + 1)).reshape(n_parts, -1)
    out = []
    for i, key in enumerate(frames, start=len(history)):
        lo = max(0, i - BASELINE)
        psi = {c: round(_psi(h[lo:i].sum(axis=0), h[i]), 4) for c, h in counts.items()
               if i > lo and h[lo:i].sum() >= MIN_VALUES and h[i].sum() >= MIN_VALUES}
        out.append(Drift(key, i - lo, psi))
    return out
