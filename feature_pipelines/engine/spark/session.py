"""A local Spark session for the Spark engine: `local[2]`, Arrow on, small driver, every temp folder under one root.

On Databricks the session exists already (and Pipes will launch the job); this is for a laptop, CI
and the tests. Dagster users can instead pass `PySparkResource(spark_config=local_spark_config(...))
.spark_session` from dagster-pyspark: the same settings as a dict.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def local_spark_config(tmp_dir: str | Path, cores: int = 2, driver_memory: str = "1g") -> dict[str, str]:
    """Settings of a local session whose scratch files (shuffle, spills, Python workers, JVM temp) stay in `tmp_dir`."""
    tmp = Path(tmp_dir).resolve()
    for sub in ("local", "warehouse", "java"):
        (tmp / sub).mkdir(parents=True, exist_ok=True)
    # -XX:-UsePerfData: no /tmp/hsperfdata_<user> (the JVM puts it in /tmp whatever java.io.tmpdir says).
    java_opts = f"-Djava.io.tmpdir={tmp / 'java'} -Dderby.system.home={tmp / 'java'} -XX:-UsePerfData"
    return {
        "spark.master": f"local[{cores}]",
        "spark.app.name": "feature_pipelines",
        "spark.driver.memory": driver_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(cores),
        "spark.local.dir": str(tmp / "local"),
        "spark.sql.warehouse.dir": str(tmp / "warehouse"),
        "spark.driver.extraJavaOptions": java_opts,
        "spark.executor.extraJavaOptions": java_opts,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        "spark.python.worker.reuse": "true",
        # Each Python worker runs one bucket with polars: one polars thread per Spark core.
        "spark.executorEnv.POLARS_MAX_THREADS": "1",
    }


def local_session(tmp_dir: str | Path | None = None, cores: int = 2, driver_memory: str = "1g"):
    """Start (or return the running) local SparkSession with `local_spark_config`; the caller stops it."""
    from pyspark.sql import SparkSession

    tmp = Path(tmp_dir) if tmp_dir is not None else Path(tempfile.mkdtemp(prefix="fp-spark-"))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in local_spark_config(tmp, cores, driver_memory).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
