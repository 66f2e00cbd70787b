"""The Spark engine: the polars kernel per bucket of entities through `groupBy(bucket).applyInArrow` (pyspark >= 4.0).

Needs pyspark (`pip install pyspark>=4` or dagster-pyspark); `feature_pipelines.engine` does not import it.
"""

try:
    import pyspark  # noqa: F401
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("the Spark engine needs pyspark >= 4.0: pip install 'pyspark>=4,<5' (or dagster-pyspark)") from err

from feature_pipelines.engine.spark.engine import SparkEngine, spark_bucket
from feature_pipelines.engine.spark.session import local_session, local_spark_config

__all__ = ["SparkEngine", "local_session", "local_spark_config", "spark_bucket"]
