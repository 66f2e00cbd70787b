"""Engines compute feature partitions from specs; the polars engine serves one machine.

This is the seam where a Spark engine (dagster-pyspark locally, Databricks through Pipes) would plug
in: anything with `compute(feature, partition_keys) -> {partition_key: polars.DataFrame}`.
"""

from typing import Protocol

import polars as pl

from feature_pipelines.engine.polars_engine import PolarsEngine
from feature_pipelines.spec.feature import Feature


class Engine(Protocol):
    name: str

    def compute(self, feature: Feature, partition_keys: list[str]) -> dict[str, pl.DataFrame]: ...


__all__ = ["Engine", "PolarsEngine"]
