"""Benchmarks (the contract in ../shared/DESIGN.md): one JSON line per workload, with a floor measured in the same run.

build_year      — compute (median of 3 fresh processes) a year of daily `customer_spend` (7d, 30d × 6 aggregations) from 1,000,000
                  transactions of 10,000 customers in one pass; floor: the same output hand-written in polars.
build_next_day  — compute one more day after 30 days and after 3 years of history; ratio = 3y / 30d.
s3_build_year   — write + read back the year of customer_spend on S3 (moto on loopback) vs the local store.
build_year_e2e  — in benchmarks/e2e.py: the whole `feature-pipelines build` process for the year vs engine + plain writes; dg launch beside.
build_scale, build_spark_year — in benchmarks/scale.py: 30M events with the sharded engine; the 1M-event year on Spark.
online_*        — in benchmarks/online.py (publish, in-process reads, HTTP against a redis-server it starts).
online_http_load — in benchmarks/http_load.py: `serve` under 1/8/32/128 keep-alive connections and connection churn
                  (one JSON line per level: online_http_load_c1 ... _churn).
training_*      — get_training_data for 100k / 1M labels on 10,000 customers x 365 days x 5 floats (1 or 5 features);
                  floor: a bare polars join_asof on the same tables already in memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_pipelines import Entity, Feature, Rolling, Source  # noqa: E402
from feature_pipelines.engine import PolarsEngine  # noqa: E402

AGGS = ["sum", "mean", "count", "std", "min", "max"]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _events(path: Path, rows: int, customers: int, days: int, start: str) -> None:
    rng = np.random.default_rng(0)
    ts = np.datetime64(start, "us") + rng.integers(0, days * 86_400_000_000, rows).astype("timedelta64[us]")
    pl.DataFrame({"customer_id": rng.integers(0, customers, rows).astype(str), "ts": ts, "amount": rng.gamma(2.0, 50.0, rows).round(2)}).sort("ts").write_parquet(path)


def _feature(path: Path, start: str) -> Feature:
    return Feature(name="customer_spend", entities=[Entity("customer", join_key="customer_id")], source=Source(str(path), timestamp="ts"),
                   start=start, metrics=[Rolling(["7d", "30d"], {"amount": AGGS})])


def _floor(path: Path, first: date, days: int) -> pl.DataFrame:
    """Hand-written polars: stamps interleaved with events, rolling_*_by(closed='left') per customer."""
    lo = pl.datetime(first.year, first.month, first.day) - pl.duration(days=30)
    ev = pl.scan_parquet(path).filter((pl.col("ts") >= lo) & (pl.col("ts") < pl.datetime(first.year, first.month, first.day) + pl.duration(days=days))).collect()
    day = pl.col("ts").dt.truncate("1d")
    grid = ev.select("customer_id", d=day).unique().select("customer_id", t=pl.datetime_ranges(pl.col("d") + pl.duration(days=1), pl.col("d") + pl.duration(days=31), "1d")).explode("t")
    grid = grid.filter((pl.col("t") > pl.lit(first)) & (pl.col("t") <= pl.lit(first + timedelta(days=days)))).unique()
    both = pl.concat([ev.with_columns(q=pl.lit(False)), grid.rename({"t": "ts"}).with_columns(amount=pl.lit(None, pl.Float64), q=pl.lit(True))]).sort("customer_id", "ts")
    exprs = []
    for w in ("7d", "30d"):
        x = pl.col("amount")
        n = x.is_not_null().cast(pl.Int64).rolling_sum_by("ts", w, closed="left").over("customer_id")
        exprs += [n.alias(f"count_{w}"), x.rolling_sum_by("ts", w, closed="left").over("customer_id").alias(f"sum_{w}"),
                  x.rolling_mean_by("ts", w, closed="left").over("customer_id").alias(f"mean_{w}"),
                  x.rolling_std_by("ts", w, closed="left").over("customer_id").alias(f"std_{w}"),
                  x.rolling_min_by("ts", w, closed="left").over("customer_id").alias(f"min_{w}"),
                  x.rolling_max_by("ts", w, closed="left").over("customer_id").alias(f"max_{w}")]
    return both.lazy().with_columns(exprs).filter(pl.col("q")).collect()


def _keys(first: date, days: int) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range(days)]


def _engine_year(path: Path) -> tuple[float, int]:
    feature = _feature(path, "2024-01-01")
    t0 = time.perf_counter()
    out = PolarsEngine().compute(feature, _keys(date(2024, 1, 1), 365))
    return time.perf_counter() - t0, sum(f.height for f in out.values())


def _floor_year(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    rows = _floor(path, date(2024, 1, 1), 365).height
    return time.perf_counter() - t0, rows


def _isolated(fn, *args) -> tuple:
    """Run fn in a fresh process so its peak RSS is its own: returns fn's result + (peak RSS MB,)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (fn, *args))


def _median_of(n: int, fn, *args) -> tuple:
    runs = sorted(_isolated(fn, *args) for _ in range(n))
    return runs[n // 2]


def _measure(fn, *args) -> tuple:
    return (*fn(*args), _rss_mb())


def build_year(tmp: Path) -> dict:
    path = tmp / "year.parquet"
    _events(path, 1_000_000, 10_000, 365, "2024-01-01")
    # Median of three fresh processes each: this machine is shared and single runs vary by +-50%.
    value, rows, rss = _median_of(3, _engine_year, path)
    floor, floor_rows, floor_rss = _median_of(3, _floor_year, path)
    return {"workload": "build_year", "metric": "seconds", "value": round(value, 3), "floor": round(floor, 3), "ratio": round(value / floor, 2),
            "peak_rss_mb": round(rss), "floor_peak_rss_mb": round(floor_rss), "rows": rows, "floor_rows": floor_rows, "events": 1_000_000,
            "machine": "2 cores"}


def build_next_day(tmp: Path) -> dict:
    """One more day with 30 days vs 3 years of history in the source (same density of events per day)."""
    timings = {}
    for label, days in (("30d", 30), ("3y", 3 * 365)):
        path = tmp / f"hist_{label}.parquet"
        _events(path, int(days * 2740), 10_000, days + 1, "2021-01-01")
        start = date(2021, 1, 1)
        feature = _feature(path, start.isoformat())
        key = (start + timedelta(days=days)).isoformat()
        best = min(_timed(lambda: PolarsEngine().compute(feature, [key])) for _ in range(5))
        timings[label] = best
    return {"workload": "build_next_day", "metric": "seconds", "value": round(timings["3y"], 4), "floor": round(timings["30d"], 4),
            "ratio": round(timings["3y"] / timings["30d"], 2), "peak_rss_mb": round(_rss_mb()), "machine": "2 cores"}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ---- training retrieval ------------------------------------------------------------------------

TRAIN_CUSTOMERS, TRAIN_DAYS = 10_000, 365


def _training_store(tmp: Path, n_features: int) -> tuple[Path, list[Feature]]:
    """n features, each 10,000 customers x 365 daily rows x 5 float columns, in a local offline store."""
    from feature_pipelines.store import LocalStore

    root = tmp / "training_store"
    store = LocalStore(root)
    rng = np.random.default_rng(1)
    customers = pl.Series("customer_id", [f"c{i:05d}" for i in range(TRAIN_CUSTOMERS)])
    features = []
    for f in range(n_features):
        feature = Feature(name=f"bench_f{f}", entities=[Entity("customer", join_key="customer_id")], source=Source("unused.parquet", timestamp="ts"),
                          start="2024-01-01", metrics=[Rolling(["7d"], {"amount": ["sum", "mean", "std", "min", "max"]})], ttl="2d")
        features.append(feature)
        if store.latest(feature.name):
            continue
        frames = {}
        for day in range(TRAIN_DAYS):
            start = date(2024, 1, 1) + timedelta(days=day)
            stamp = pl.lit(datetime(start.year, start.month, start.day) + timedelta(days=1)).dt.replace_time_zone("UTC")
            values = rng.random((TRAIN_CUSTOMERS, 5))
            frames[start.isoformat()] = pl.DataFrame([customers, *[pl.Series(c, values[:, i]) for i, c in enumerate(feature.metric_columns)]]).select(
                "customer_id", stamp.alias("feature_timestamp"), *feature.metric_columns)
        store.write_partitions(feature.name, frames, keys=["customer_id"], timestamp="feature_timestamp", config_hash=feature.config_hash)
    return root, features


def _labels(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(2)
    ts = np.datetime64("2024-01-01", "us") + rng.integers(0, TRAIN_DAYS * 86_400_000_000, n).astype("timedelta64[us]")
    return pl.DataFrame({"customer_id": [f"c{i:05d}" for i in rng.integers(0, TRAIN_CUSTOMERS, n)], "label_time": ts, "label": rng.random(n) < 0.1}).with_columns(
        pl.col("label_time").dt.replace_time_zone("UTC"))


def _ours_training(root: Path, n_features: int, n_labels: int) -> tuple[float, int]:
    import os

    from feature_pipelines.registry import Registry
    from feature_pipelines.retrieval import FeatureStore

    env = root.parent / "env"
    env.mkdir(exist_ok=True)
    (env / "bench.yaml").write_text(f"offline_store:\n  kind: local\n  path: {root}\n")
    os.environ["FEATURE_PIPELINES_ENV_DIR"] = str(env)
    _, features = _training_store(root.parent, n_features)
    registry = Registry()
    for feature in features:
        registry.add(feature)
    labels = _labels(n_labels)
    store = FeatureStore("bench", registry)
    t0 = time.perf_counter()
    frame = store.get_training_data([f.name for f in features], labels)
    return time.perf_counter() - t0, frame.height


def _floor_training(root: Path, n_features: int, n_labels: int) -> tuple[float, int]:
    """Bare polars: the feature tables already in memory, sorted by time; sort labels, join_asof per feature."""
    tables = [pl.read_parquet(sorted((root / f"bench_f{f}").glob("1.0.0/*.parquet"))) for f in range(n_features)]
    labels = _labels(n_labels)
    t0 = time.perf_counter()
    out = labels.sort("label_time")
    for f, table in enumerate(tables):
        joined = out.join_asof(table.rename(lambda c: c if c == "customer_id" else f"f{f}_{c}"), left_on="label_time", right_on=f"f{f}_feature_timestamp",
                               by="customer_id", strategy="backward", tolerance="2d", check_sortedness=False)
        out = joined
    return time.perf_counter() - t0, out.height


def _training(tmp: Path, name: str, n_features: int, n_labels: int) -> dict:
    root, _ = _training_store(tmp, n_features)
    value, rows, rss = _median_of(3, _ours_training, root, n_features, n_labels)
    floor, floor_rows, floor_rss = _median_of(3, _floor_training, root, n_features, n_labels)
    assert rows == floor_rows == n_labels
    return {"workload": name, "metric": "seconds", "value": round(value, 3), "floor": round(floor, 3), "ratio": round(value / floor, 2),
            "peak_rss_mb": round(rss), "floor_peak_rss_mb": round(floor_rss), "rows": rows, "features": n_features,
            "feature_rows": n_features * TRAIN_CUSTOMERS * TRAIN_DAYS, "machine": "2 cores"}


def training_100k(tmp: Path) -> dict:
    return _training(tmp, "training_100k", 1, 100_000)


def training_1m(tmp: Path) -> dict:
    return _training(tmp, "training_1m", 1, 1_000_000)


def training_1m_5features(tmp: Path) -> dict:
    return _training(tmp, "training_1m_5features", 5, 1_000_000)


# ---- cloud store ---------------------------------------------------------------------------------


def s3_build_year(tmp: Path) -> dict:
    """Write (one batched commit) and read back a year of customer_spend: S3 (moto on loopback) vs local disk."""
    import os

    import boto3

    from feature_pipelines.store import LocalStore, S3Store
    from feature_pipelines_tests.servers import start_moto

    path = tmp / "year.parquet"
    if not path.exists():
        _events(path, 1_000_000, 10_000, 365, "2024-01-01")
    feature = _feature(path, "2024-01-01")
    frames = PolarsEngine().compute(feature, _keys(date(2024, 1, 1), 365))
    rows = sum(f.height for f in frames.values())

    def cycle(store) -> float:
        t0 = time.perf_counter()
        store.write_partitions(feature.name, frames, keys=feature.join_keys, timestamp="feature_timestamp", config_hash=feature.config_hash)
        back = store.read(feature.name)
        assert back.height == rows
        return time.perf_counter() - t0

    local = cycle(LocalStore(tmp / "local_store"))
    for var, value in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}.items():
        os.environ.setdefault(var, value)
    server = start_moto()
    try:
        boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket="bench")
        s3 = cycle(S3Store("bench", "features", endpoint_url=server.url))
    finally:
        server.stop()
    return {"workload": "s3_build_year", "metric": "seconds", "value": round(s3, 3), "floor": round(local, 3), "ratio": round(s3 / local, 2),
            "peak_rss_mb": round(_rss_mb()), "rows": rows, "partitions": len(frames), "note": "write 365 partitions + read back; compute excluded",
            "machine": "2 cores"}


WORKLOADS = {"build_year": build_year, "build_next_day": build_next_day,
             "training_100k": training_100k, "training_1m": training_1m, "training_1m_5features": training_1m_5features,
             "s3_build_year": s3_build_year}


def build_year_e2e(tmp: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import e2e  # noqa: PLC0415 - benchmarks/e2e.py: whole CLI / dg launch processes

    return e2e.build_year_e2e(tmp)


WORKLOADS["build_year_e2e"] = build_year_e2e


def _scale(name: str):
    def run(tmp: Path) -> dict:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import scale  # noqa: PLC0415 - benchmarks/scale.py: 30M events sharded, the year on Spark (minutes; fresh processes)

        return scale.WORKLOADS[name](tmp)

    return run


WORKLOADS.update({name: _scale(name) for name in ("build_scale", "build_spark_year")})


def _online_workloads() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import online  # noqa: PLC0415 - benchmarks/online.py: the online_* workloads (they start their own redis-server)

    return online.WORKLOADS


def _http_workloads() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import http_load  # noqa: PLC0415 - benchmarks/http_load.py: online_http_load (one JSON line per load level)

    return http_load.WORKLOADS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="workload name prefix")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in {**WORKLOADS, **_online_workloads(), **_http_workloads()}.items():
            if name.startswith(args.only):
                result = fn(Path(tmp))
                for line in result if isinstance(result, list) else [result]:  # a workload may report several levels
                    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
