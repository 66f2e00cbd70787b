"""The production Dagster instance (dagster.prod.yaml): runs and materializations in a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from feature_pipelines.orchestration import build_defs
from feature_pipelines.orchestration.publish import SENSOR
from feature_pipelines.registry import Registry
from feature_pipelines_tests.postgres_server import postgres_server
from feature_pipelines_tests.test_dagster import _events, _registry

ROOT = Path(__file__).resolve().parent.parent


def test_feature_runs_and_sensor_on_a_postgres_instance(project: Path, monkeypatch) -> None:
    with postgres_server() as pg:
        home = project / "prod_home"
        home.mkdir()
        shutil.copy(ROOT / "dagster.prod.yaml", home / "dagster.yaml")
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", pg.url)
        spend = dataclasses.replace(_registry(_events(project / "events.parquet")).feature("spend"), online=True)
        registry = Registry()
        registry.add(spend)
        defs = build_defs(registry)
        with dg.DagsterInstance.get() as instance:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            result = defs.resolve_job_def("spend_job").execute_in_process(
                instance=instance, tags={"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-03"})
            assert result.success
            records = instance.fetch_materializations(dg.AssetKey("spend"), limit=10).records
            assert sorted(r.partition_key for r in records) == ["2024-01-01", "2024-01-02", "2024-01-03"]
            tick = defs.resolve_sensor_def(SENSOR)(dg.build_sensor_context(instance=instance, definitions=defs))
            assert len(tick.run_requests) == 1  # one publish run for the three partitions
        # The rows really are in PostgreSQL.
        with sa.create_engine(pg.url).connect() as conn:
            assert conn.execute(sa.text("select count(*) from runs")).scalar() == 1
            assert conn.execute(sa.text("select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'")).scalar() == 3
