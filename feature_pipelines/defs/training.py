"""A training set for the fraud model as a Dagster asset: one daily partition of labelled transactions.

It sits downstream of the features it reads, so the asset graph shows the lineage, and it reads
them point-in-time correct through `FeatureStore.get_training_data` (not as same-partition
inputs: a label needs the newest feature row at or before its own time, which may be in an
earlier partition). Stored with Dagster's default IO manager; load it with
`defs.load_asset_value("training_set", partition_key="2024-03-01")`.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
import polars as pl

from feature_pipelines.defs.fraud import fraud_model
from feature_pipelines.retrieval import FeatureStore
from feature_pipelines.defs.sample_data import data_dir

PII = ["first_name", "last_name", "date_of_birth"]


def fraud_labels(day: datetime) -> pl.DataFrame:
    """The day's transactions as label rows: who (PII), where, when, and whether it was declined."""
    start, end = day, day + timedelta(days=1)
    return (
        pl.scan_parquet(data_dir() / "transactions.parquet")
        .filter((pl.col("timestamp") >= start) & (pl.col("timestamp") < end))
        .select(*PII, "merchant_id", "amount", label_time="timestamp", is_fraud=pl.col("status") == "declined")
        .collect()
    )


@dg.asset(
    partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01", end_date="2024-04-30", timezone="UTC"),
    deps=[dg.AssetKey(name) for name in fraud_model.references],
    group_name="training",
    kinds={"polars"},
    owners=["team:fraud"],
)
def training_set(context: dg.AssetExecutionContext) -> pl.DataFrame:
    """Each of the day's transactions with the fraud_model features as of its timestamp."""
    day = datetime.fromisoformat(context.partition_key).replace(tzinfo=timezone.utc)
    frame = FeatureStore().get_training_data([fraud_model], fraud_labels(day)).drop(PII)
    context.add_output_metadata({"dagster/row_count": frame.height, "fraud_rate": float(frame["is_fraud"].mean() or 0.0)})
    return frame
