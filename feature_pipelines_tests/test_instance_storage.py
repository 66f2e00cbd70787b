"""The batching SQLite storage answers every asset query exactly as Dagster's own SQLite storage does."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from feature_pipelines import Entity, Feature, Rolling, Source, build_defs
from feature_pipelines.orchestration.resources import LocalStoreResource, SQLiteOnlineStoreResource
from feature_pipelines.registry import Registry

CUSTOM = """storage:
  custom:
    module: feature_pipelines.orchestration.instance
    class: BatchingSqliteStorage
    config:
      base_dir:
        env: DAGSTER_HOME
telemetry:
  enabled: false
"""
PLAIN = "storage:\n  sqlite:\n    base_dir:\n      env: DAGSTER_HOME\ntelemetry:\n  enabled: false\n"


def _defs(tmp: Path, name: str) -> dg.Definitions:
    rng = np.random.default_rng(2)
    n = 3000
    ts = np.datetime64("2024-01-01T00:00:00", "us") + rng.integers(0, 40 * 86_400_000_000, n).astype("timedelta64[us]")
    pl.DataFrame({"customer_id": rng.integers(0, 20, n).astype(str), "ts": ts, "amount": rng.uniform(0, 9, n)}).write_parquet(tmp / "e.parquet")
    feature = Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=Source(str(tmp / "e.parquet"), timestamp="ts"),
                      start="2024-01-01", metrics=[Rolling(["3d"], {"amount": ["sum"]})], online=True)
    return build_defs(Registry.of([feature]), offline_store=LocalStoreResource(path=str(tmp / f"store_{name}")),
                      online_store=SQLiteOnlineStoreResource(path=str(tmp / f"online_{name}.sqlite")))


def _answers(home: Path, defs: dg.Definitions, monkeypatch) -> dict:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    key = dg.AssetKey("spend")
    with dg.DagsterInstance.get() as instance:
        for first, last in (("2024-01-01", "2024-01-20"), ("2024-01-15", "2024-01-25")):
            run = defs.resolve_job_def("spend_job").execute_in_process(
                instance=instance, tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})
            assert run.success
        records = instance.fetch_materializations(key, limit=1000).records
        latest = instance.get_latest_materialization_event(key)
        planned = instance.event_log_storage.get_latest_planned_materialization_info(key)
        tick = defs.resolve_sensor_def("online_publish_sensor")(dg.build_sensor_context(instance=instance, definitions=defs))
        return {
            "storage": type(instance.event_log_storage).__name__,
            "materialized": sorted(instance.get_materialized_partitions(key)),
            "records": [(r.partition_key, r.asset_materialization.metadata["version"].value) for r in records],
            "by_partition": sorted((r.partition_key for r in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=["2024-01-16", "2024-01-02"]), limit=10).records)),
            "latest_partition": latest.dagster_event.partition,
            "planned_partition_run": planned is not None,
            "asset_keys": sorted(k.to_user_string() for k in instance.get_asset_keys()),
            "count_by_partition": dict(sorted(Counter(r.partition_key for r in records).items())),
            "attempts_without_materialization": dict(
                instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(key)),
            "latest_by_partition": len(instance.event_log_storage.get_latest_storage_id_by_partition(
                key, dg.DagsterEventType.ASSET_MATERIALIZATION)),
            "sensor_partitions": tick.run_requests[0].run_config["ops"]["publish_partitions"]["config"]["partitions"],
        }


def test_batching_storage_answers_like_dagsters_own(tmp_path: Path, monkeypatch) -> None:
    from feature_pipelines.orchestration.instance import BatchingSqliteEventLogStorage

    batches = []
    real = BatchingSqliteEventLogStorage.store_event_batch

    def recording(self, events):  # the real write, recording how many events each batch held
        batches.append(len(events))
        return real(self, events)

    monkeypatch.setattr(BatchingSqliteEventLogStorage, "store_event_batch", recording)
    monkeypatch.delenv("DAGSTER_EVENT_BATCH_SIZE", raising=False)
    answers = {}
    for name, config in (("plain", PLAIN), ("custom", CUSTOM)):
        home = tmp_path / name
        home.mkdir()
        (home / "dagster.yaml").write_text(config)
        answers[name] = _answers(home, _defs(tmp_path, name), monkeypatch)
    assert answers["plain"].pop("storage") == "SqliteEventLogStorage"
    assert answers["custom"].pop("storage") == "BatchingSqliteEventLogStorage"
    assert answers["custom"] == answers["plain"]
    assert len(answers["custom"]["materialized"]) == 25 and answers["custom"]["count_by_partition"]["2024-01-16"] == 2
    assert answers["custom"]["latest_partition"] == "2024-01-25"
    # The run's 20 planned and 20 materialization events really went through the batch path.
    assert max(batches) >= 20, batches


def test_the_shipped_dagster_yaml_uses_it() -> None:
    shipped = (Path(__file__).resolve().parent.parent / "dagster.yaml").read_text()
    assert "class: BatchingSqliteStorage" in shipped
