"""Scale benchmarks (issue 11; the contract in ../shared/DESIGN.md): one JSON line per workload, floor measured in the same run.

build_scale      — a year of daily `customer_spend` (7d, 30d x 6 aggregations) from 30,000,000 transactions of 300,000
                   customers with ShardedEngine(workers=2).compute_iter, each partition counted and dropped as it comes.
                   floor = 30 x the PolarsEngine time of the same year from 1,000,000 transactions of 10,000 customers
                   (median of 3); ratio = value / floor (target <= 1.2). peak_rss_mb is the peak of the summed RSS of the
                   whole process tree (engine process + worker processes), sampled every 20 ms (target < 4,096 MB).
                   Beside it: PolarsEngine's peak at 1M, 3M, 6M, 10M events (10k customers per 1M events), smallest first,
                   until one passes a 12 GB cap (a watchdog kills it there; it is never run on 30M).
build_spark_year — the 1M-event year on SparkEngine (local[2], 2 buckets of Python workers) beside PolarsEngine's
                   time; differing_cells (must be 0) compares every cell of every partition, plus the content hashes.
                   value excludes the session start (reported apart), includes the Python workers' first start.
Every figure comes from a fresh process (`python scale.py --child ...`) so that peaks are the engine's own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AGGS = ["sum", "mean", "count", "std", "min", "max"]
CAP_MB = 12_288
MACHINE = f"{os.cpu_count()} cores"


def generate(path: Path, rows: int, customers: int, seed: int = 0) -> Path:
    """Transactions over 2024 sorted by time, written month by month (memory stays ~ one month), like run.py's `_events`."""
    import polars as pl
    import pyarrow.parquet as pq

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    span, months = 366 * 86_400_000_000, 12
    writer = None
    for m in range(months):
        n = rows // months + (rows % months if m == months - 1 else 0)
        ts = np.sort(np.datetime64("2024-01-01", "us") + rng.integers(span * m // months, span * (m + 1) // months, n).astype("timedelta64[us]"))
        chunk = pl.DataFrame({"customer_id": pl.Series(rng.integers(0, customers, n)).cast(pl.String), "ts": ts,
                              "amount": rng.gamma(2.0, 50.0, n).round(2)}).to_arrow()
        writer = writer or pq.ParquetWriter(str(path) + ".tmp", chunk.schema, compression="zstd")
        writer.write_table(chunk, row_group_size=1_000_000)
    writer.close()
    os.replace(str(path) + ".tmp", path)
    return path


def _feature(path: str):
    from feature_pipelines import Entity, Feature, Rolling, Source

    return Feature(name="customer_spend", entities=[Entity("customer", join_key="customer_id")], source=Source(path, timestamp="ts"),
                   start="2024-01-01", metrics=[Rolling(["7d", "30d"], {"amount": AGGS})])


KEYS = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(365)]


# ---- children: each runs in a fresh process and prints one JSON line --------------------------------------------


def child(what: str, path: str, scratch: str) -> dict:
    from feature_pipelines.engine import PolarsEngine, ShardedEngine

    feature = _feature(path)
    if what == "polars":
        t0 = time.perf_counter()
        out = PolarsEngine().compute(feature, KEYS)
        return {"seconds": time.perf_counter() - t0, "rows": sum(f.height for f in out.values())}
    if what == "sharded":
        engine = ShardedEngine(workers=2, tmp_dir=scratch)
        t0, rows, first = time.perf_counter(), 0, None
        for _, frame in engine.compute_iter(feature, KEYS):
            first = first or time.perf_counter() - t0
            rows += frame.height
        return {"seconds": time.perf_counter() - t0, "rows": rows, "first_partition_seconds": first}
    if what == "spark":
        return _spark_child(feature, scratch)
    raise ValueError(f"unknown child {what!r}; expected polars, sharded or spark")


def _spark_child(feature, scratch: str) -> dict:

    from feature_pipelines.engine import PolarsEngine
    from feature_pipelines.engine.spark import SparkEngine, local_session
    from feature_pipelines.store.hashing import content_hash

    t0 = time.perf_counter()
    session = local_session(Path(scratch) / "session")
    started = time.perf_counter() - t0
    try:
        engine = SparkEngine(session, buckets=2, tmp_dir=scratch)
        t0 = time.perf_counter()
        got = engine.compute(feature, KEYS)
        cold = time.perf_counter() - t0
        del got
        t0 = time.perf_counter()
        got = engine.compute(feature, KEYS)
        warm = time.perf_counter() - t0
    finally:
        session.stop()
    want = PolarsEngine().compute(feature, KEYS)
    cells = hashes = 0
    for key, frame in want.items():
        other = got[key]
        if other.shape != frame.shape or other.schema != frame.schema:
            cells += frame.height * frame.width
            continue
        cells += sum(int(frame[c].ne_missing(other[c]).sum()) for c in frame.columns)
        hashes += content_hash(frame) != content_hash(other)
    return {"seconds": cold, "warm_seconds": warm, "session_start_seconds": started, "rows": sum(f.height for f in got.values()),
            "differing_cells": cells, "differing_hashes": hashes, "cells": sum(f.height * f.width for f in want.values())}


# ---- the parent: runs children, samples the process tree's RSS --------------------------------------------------


def isolated(what: str, path: Path, scratch: Path, cap_mb: float = CAP_MB) -> dict:
    """Run one child; returns its JSON plus peak_rss_mb (process tree, sampled), or {'killed': True} above `cap_mb`."""
    import psutil

    load = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, __file__, "--child", what, str(path), str(scratch)], stdout=subprocess.PIPE, text=True)
    tree = psutil.Process(proc.pid)
    peak, killed = 0.0, False
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)]) / 2**20
        except psutil.Error:
            rss = 0.0
        peak = max(peak, rss)
        if rss > cap_mb:
            for p in [*tree.children(recursive=True), tree]:
                p.kill()
            killed = True
        time.sleep(0.02)
    out = proc.stdout.read()
    if killed:
        return {"killed": True, "peak_rss_mb": round(peak)}
    if proc.returncode:
        raise RuntimeError(f"benchmark child {what} on {path} failed with exit code {proc.returncode}")
    # The machine is shared: the 1-minute load average before and after says how much others ran meanwhile.
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": round(peak), "load": [round(load, 1), round(os.getloadavg()[0], 1)]}


def build_scale(tmp: Path) -> dict:
    data = tmp / "scale"
    data.mkdir(exist_ok=True)
    small = generate(data / "events_1m.parquet", 1_000_000, 10_000)
    runs = [isolated("polars", small, data) for _ in range(3)]
    one = statistics.median(r["seconds"] for r in runs)
    big = generate(data / "events_30m.parquet", 30_000_000, 300_000)
    sharded = isolated("sharded", big, data)
    plain = {"1m": {"seconds": round(one, 2), "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)}}
    for label, rows in (("3m", 3_000_000), ("6m", 6_000_000), ("10m", 10_000_000)):
        found = isolated("polars", generate(data / f"events_{label}.parquet", rows, rows // 100), data)
        plain[label] = {"killed_above_mb": CAP_MB} if found.get("killed") else {"seconds": round(found["seconds"], 2), "peak_rss_mb": found["peak_rss_mb"]}
        if found.get("killed"):
            break
    survived = [k for k, v in plain.items() if "peak_rss_mb" in v][-1]
    return {"workload": "build_scale", "metric": "seconds", "value": round(sharded["seconds"], 2), "floor": round(30 * one, 2),
            "ratio": round(sharded["seconds"] / (30 * one), 2), "peak_rss_mb": sharded["peak_rss_mb"], "rows": sharded["rows"],
            "events": 30_000_000, "customers": 300_000, "first_partition_seconds": round(sharded["first_partition_seconds"], 2),
            "polars_1m_seconds": round(one, 2), "polars_largest_survived": survived,
            "polars_largest_survived_peak_rss_mb": plain[survived]["peak_rss_mb"], "polars_by_size": plain,
            "load_during": sharded["load"], "machine": MACHINE}


def build_spark_year(tmp: Path) -> dict:
    data = tmp / "scale"
    data.mkdir(exist_ok=True)
    small = generate(data / "events_1m.parquet", 1_000_000, 10_000)
    runs = [isolated("polars", small, data) for _ in range(3)]
    one = statistics.median(r["seconds"] for r in runs)
    spark = isolated("spark", small, data)
    return {"workload": "build_spark_year", "metric": "seconds", "value": round(spark["seconds"], 2), "floor": round(one, 2),
            "ratio": round(spark["seconds"] / one, 2), "warm_seconds": round(spark["warm_seconds"], 2),
            "session_start_seconds": round(spark["session_start_seconds"], 2), "differing_cells": spark["differing_cells"],
            "differing_content_hashes": spark["differing_hashes"], "cells": spark["cells"], "rows": spark["rows"],
            "peak_rss_mb": spark["peak_rss_mb"], "peak_note": "Spark JVM + Python workers + the polars run it is compared with",
            "events": 1_000_000, "load_during": spark["load"], "machine": MACHINE}


WORKLOADS = {"build_scale": build_scale, "build_spark_year": build_spark_year}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="workload name prefix")
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "PATH", "SCRATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)), flush=True)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in WORKLOADS.items():
            if name.startswith(args.only):
                print(json.dumps(fn(Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
