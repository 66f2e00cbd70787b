"""Train a fraud classifier on a point-in-time-correct frame from the offline store.

Run after `make demo` (which materializes the example features for 2024-01-01 … 2024-03-30):

    .venv/bin/python examples/train_fraud_model.py

Labels are the example transactions (declined = positive); features are the `fraud_model`
service as of each transaction's own timestamp, so no value from the future leaks in. The model is
a plain-numpy logistic regression, to keep the example free of extra dependencies.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

import numpy as np
import polars as pl

from feature_pipelines import FeatureStore
from feature_pipelines.defs.sample_data import data_dir


def labels(start: datetime, end: datetime) -> pl.DataFrame:
    return (
        pl.scan_parquet(data_dir() / "transactions.parquet")
        .filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < end))
        .select("first_name", "last_name", "date_of_birth", "merchant_id", label_time="timestamp", is_fraud=pl.col("status") == "declined")
        .collect()
    )


def fit_logistic(x: np.ndarray, y: np.ndarray, steps: int = 300, lr: float = 0.5) -> np.ndarray:
    """Gradient descent on the mean log-loss; x is standardised, a bias column is appended."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w)))
        w -= lr * x.T @ (p - y) / len(y)
    return w


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve by ranks (Mann-Whitney U)."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score, kind="stable")] = np.arange(1, len(score) + 1)
    pos = y.sum()
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos))) if 0 < pos < len(y) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default="2024-02-01..2024-03-01", help="label time range for training (start..end, UTC)")
    parser.add_argument("--test", default="2024-03-01..2024-03-31", help="label time range for evaluation")
    args = parser.parse_args()
    (a, b), (c, d) = ([datetime.fromisoformat(x).replace(tzinfo=timezone.utc) for x in r.split("..")] for r in (args.train, args.test))

    store = FeatureStore()
    train = store.get_training_data(["fraud_model"], labels(a, b))
    test = store.get_training_data(["fraud_model"], labels(c, d))
    columns = [c for c, t in train.schema.items() if "__" in c and t.is_numeric()]
    print(f"{train.height} training rows, {test.height} test rows, {len(columns)} numeric features")

    def matrix(frame: pl.DataFrame, mean=None, std=None):
        x = frame.select(columns).fill_null(0.0).to_numpy().astype(float)
        mean = x.mean(axis=0) if mean is None else mean
        std = x.std(axis=0) + 1e-9 if std is None else std
        return np.hstack([(x - mean) / std, np.ones((len(x), 1))]), mean, std

    x_train, mean, std = matrix(train)
    x_test, _, _ = matrix(test, mean, std)
    w = fit_logistic(x_train, train["is_fraud"].to_numpy().astype(float))
    print(f"test AUC {auc(x_test @ w, test['is_fraud'].to_numpy().astype(int)):.3f}")


if __name__ == "__main__":
    main()
