"""Engines compute feature partitions from specs; all of them give bit-identical frames.

* `PolarsEngine`: the kernel, the whole range in memory on one machine.
* `ShardedEngine`: the same kernel per bucket of entities, in worker processes, with memory bounded
  by a bucket; finished partitions are handed out one at a time.
* `SparkEngine` (`feature_pipelines.engine.spark`, needs pyspark >= 4): the same kernel per bucket
  through `groupBy(bucket).applyInArrow` on a SparkSession.

The contract (`Engine`): `compute(feature, partition_keys) -> {partition_key: DataFrame}` and the
streaming form `compute_iter(feature, partition_keys) -> Iterator[(partition_key, DataFrame)]`, which
yields partitions in order, each complete, so a store can write every partition's file as it comes
and commit the run once at the end.
"""

from collections.abc import Iterator
from typing import Protocol

import polars as pl

from feature_pipelines.engine.polars_engine import PolarsEngine
from feature_pipelines.engine.sharded import ShardedEngine
from feature_pipelines.spec.feature import Feature


class Engine(Protocol):
    name: str

    def compute(self, feature: Feature, partition_keys: list[str]) -> dict[str, pl.DataFrame]: ...

    def compute_iter(self, feature: Feature, partition_keys: list[str]) -> Iterator[tuple[str, pl.DataFrame]]: ...


__all__ = ["Engine", "PolarsEngine", "ShardedEngine"]
