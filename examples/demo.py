"""`make demo`: the fraud example end to end on the embedded defaults, as a user would run it.

Generates the example transactions (once), backfills every feature for 90 daily partitions with
`feature-pipelines build`, lists the offline store, prints a point-in-time training frame, publishes
to the online store and prints an online lookup. Run from the repository root:

    .venv/bin/python examples/demo.py
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone

import polars as pl

from feature_pipelines import FeatureStore
from feature_pipelines.cli import main as feature_pipelines
from feature_pipelines.defs.sample_data import data_dir, write_transactions

START, DAYS = "2024-01-01", 90
PII = ["first_name", "last_name", "date_of_birth"]


def run(*args: str) -> None:
    """One `feature-pipelines` command, in this process; stop the demo with its exit code if it fails."""
    code = feature_pipelines(list(args))
    if code:
        sys.exit(code)


def main() -> None:
    t0 = time.perf_counter()
    path = data_dir() / "transactions.parquet"
    if not path.exists():
        print(f"generating example transactions → {path}")
        write_transactions(path)
    end = (datetime.fromisoformat(START) + timedelta(days=DAYS - 1)).date().isoformat()
    print(f"$ feature-pipelines build --start {START} --end {end}")
    run("build", "--start", START, "--end", end)
    with pl.Config(tbl_rows=20, tbl_cols=12, tbl_width_chars=160, fmt_str_lengths=40):
        print("\n$ feature-pipelines list")
        run("list")
        store = FeatureStore()
        tx = pl.read_parquet(path, columns=["timestamp", *PII, "merchant_id", "status"])
        labels = tx.filter(pl.col("timestamp") >= datetime(2024, 3, 1, tzinfo=timezone.utc)).head(5)
        labels = labels.select(*PII, "merchant_id", label_time="timestamp", is_fraud=pl.col("status") == "declined")
        frame = store.get_training_data(["customer_spend:amount_sum_7d", "customer_spend:amount_count_30d", "customer_velocity",
                                         "merchant_spend:amount_mean_30d"], labels)
        print("\nA point-in-time training frame (each label sees only features stamped at or before its time):")
        print(frame.drop(PII))
        print(f"\n$ feature-pipelines publish --start {START} --end {end}")
        run("publish", "--start", START, "--end", end)
        online = store.get_online_features(["customer_spend:amount_sum_7d", "customer_velocity", "merchant_spend:amount_mean_30d"],
                                           labels.select(*PII, "merchant_id").head(3).to_dicts())
        store.close()
        print("\nAn online lookup (newest published values; what `feature-pipelines serve` returns):")
        print(online.drop(PII))
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
