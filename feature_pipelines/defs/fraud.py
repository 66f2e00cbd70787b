"""Fraud-detection features: spend and velocity per customer and merchant, affinity, and the latest transaction."""

import polars as pl

from feature_pipelines import FeatureService, Latest, Rolling, feature, greater_than_or_equal, less_than, not_null
from feature_pipelines.defs.entities import customer, customer_merchant, merchant
from feature_pipelines.defs.sources import transactions

SPEND = ["sum", "mean", "count", "std", "min", "max"]
# The example data covers 2024-01-01 … 2024-04-29 (see sample_data.py): the partitions end with it, so the
# catalog shows what is there instead of a year of missing days.
COMMON = dict(source=transactions, granularity="daily", start="2024-01-01", end="2024-04-30", owner="team:fraud",
              tags={"domain": "fraud"})
AMOUNT_RULES = {"amount": [greater_than_or_equal(0), less_than(100_000)]}


def approved(events: pl.LazyFrame) -> pl.LazyFrame:
    """Declined transactions never moved money, so spend features ignore them."""
    return events.filter(pl.col("status") == "approved")


@feature(entities=[customer], metrics=[Rolling(windows=["7d", "30d", "90d"], aggregations={"amount": SPEND})],
         validators={**AMOUNT_RULES, "customer_id": [not_null()]}, ttl="2d", online=True, **COMMON)
def customer_spend(events: pl.LazyFrame) -> pl.LazyFrame:
    """Approved spend per customer over the last 7, 30 and 90 days."""
    return approved(events)


@feature(entities=[merchant], metrics=[Rolling(windows=["7d", "30d", "90d"], aggregations={"amount": SPEND})],
         validators={**AMOUNT_RULES, "merchant_id": [not_null()]}, ttl="2d", online=True, **COMMON)
def merchant_spend(events: pl.LazyFrame) -> pl.LazyFrame:
    """Approved takings per merchant over the last 7, 30 and 90 days."""
    return approved(events)


@feature(entities=[customer], metrics=[Rolling(windows=["1d", "7d"], aggregations={"transaction_id": ["count"]})],
         validators={"transaction_id_count_1d": [greater_than_or_equal(0)]}, ttl="2d", online=True, **COMMON)
def customer_velocity(events: pl.LazyFrame) -> pl.LazyFrame:
    """How many transactions (approved or not) a customer attempted in the last day and week."""
    return events


@feature(entities=[customer], metrics=[Rolling(windows=["7d", "30d"], aggregations={"declined": ["sum", "mean"]})],
         ttl="2d", online=True, **COMMON)
def customer_declines(events: pl.LazyFrame) -> pl.LazyFrame:
    """How often a customer's recent attempts were declined: the strongest fraud signal in the example."""
    return events.with_columns(declined=(pl.col("status") == "declined").cast(pl.Float64))


@feature(entities=[customer_merchant], metrics=[Rolling(windows=["30d", "90d"], aggregations={"amount": ["sum", "count", "mean"]})],
         validators=AMOUNT_RULES, ttl="7d", **COMMON)
def customer_merchant_affinity(events: pl.LazyFrame) -> pl.LazyFrame:
    """How much a customer spends at one merchant: repeat business is rarely fraud."""
    return approved(events)


@feature(entities=[customer], metrics=[Latest(columns=["amount", "merchant_id", "channel", "country"])],
         online=True, **COMMON)
def customer_latest_transaction(events: pl.LazyFrame) -> pl.LazyFrame:
    """The customer's newest transaction as of each day's end: where, how and how much."""
    return events


fraud_model = FeatureService(
    "fraud_model",
    features=[customer_spend, customer_velocity, customer_declines, customer_latest_transaction, merchant_spend],
    description="Inputs of the card-fraud classifier.",
)
