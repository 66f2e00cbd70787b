"""Deterministic example data for the fraud-detection features: card transactions with PII columns."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # this repository: the example's data lives in its ./data

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Margaret", "Dennis", "Radia", "John"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Hamilton", "Ritchie", "Perlman", "Backus"]


def data_dir() -> Path:
    """Where the example source data lives: $FEATURE_PIPELINES_DATA_DIR or ./data in the project."""
    return Path(os.environ.get("FEATURE_PIPELINES_DATA_DIR") or PROJECT_ROOT / "data")


def transactions(rows: int = 200_000, customers: int = 2_000, merchants: int = 300, days: int = 120, seed: int = 7, start: datetime = datetime(2024, 1, 1)) -> pl.DataFrame:
    """`rows` transactions over `days` days from 2024-01-01 (UTC), the same for the same arguments everywhere."""
    rng = np.random.default_rng(seed)
    cust = rng.zipf(1.3, rows) % customers  # a few very active customers, a long tail
    first = np.array(FIRST)[np.arange(customers) % len(FIRST)]
    last = np.array(LAST)[(np.arange(customers) // len(FIRST)) % len(LAST)]
    dob = np.datetime64("1950-01-01") + (np.arange(customers) * 7919 % 18_000).astype("timedelta64[D]")
    offsets = rng.integers(0, days * 86_400_000_000, rows).astype("timedelta64[us]")
    amount = np.round(rng.lognormal(3.5, 1.1, rows), 2).clip(0.5, 50_000)
    risky = (np.arange(customers) * 2_654_435_761) % 100 < 10
    frame = pl.DataFrame(
        {
            "transaction_id": [f"t{i:08d}" for i in range(rows)],
            "timestamp": np.datetime64(start, "us") + offsets,
            "first_name": first[cust],
            "last_name": last[cust] + pl.Series((cust // (len(FIRST) * len(LAST))).astype(str)).to_numpy(),
            "date_of_birth": dob[cust],
            "merchant_id": [f"m{m:04d}" for m in rng.integers(0, merchants, rows)],
            "amount": amount,
            "channel": np.array(["web", "pos", "app"])[rng.integers(0, 3, rows)],
            "country": np.array(["GB", "FR", "DE", "US", "NL"])[rng.integers(0, 5, rows)],
            # One customer in ten is risky: 30% of their attempts are declined (else 1%),
            # so spend and velocity features carry a signal the example model can learn.
            "status": np.where(rng.random(rows) < np.where(risky[cust], 0.3, 0.01), "declined", "approved"),
        }
    )
    frame = frame.with_columns(pl.col("timestamp").dt.replace_time_zone("UTC"), pl.col("date_of_birth").cast(pl.Date))
    return frame.sort("timestamp")


def write_transactions(path: Path | None = None, **kwargs) -> Path:
    """Write the example transactions parquet (atomically) and return its path."""
    path = Path(path) if path else data_dir() / "transactions.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    transactions(**kwargs).write_parquet(tmp, compression="zstd", row_group_size=64_000)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write the example transactions parquet (default ./data/transactions.parquet).")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--path", type=Path, default=None)
    args = parser.parse_args()
    print(write_transactions(args.path, rows=args.rows, days=args.days))
