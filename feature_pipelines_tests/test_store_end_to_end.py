"""The same end-to-end run on every offline store: a ranged Dagster backfill, load_asset_value, get_training_data.

Only the profile changes between runs (local disk, S3 on moto's server, GCS on fake-gcs-server, Unity
Catalog on the REST stand-in in uc_server.py with local Delta tables).
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feature_pipelines import FeatureStore
from feature_pipelines.engine import PolarsEngine
from feature_pipelines.orchestration import build_defs
from feature_pipelines_tests.servers import fake_gcs_server, moto_server
from feature_pipelines_tests.test_dagster import _events, _registry

KEYS = [f"2024-01-{d:02d}" for d in range(1, 11)]


@contextmanager
def _store_profile(kind: str, project: Path, monkeypatch):
    """Yield the offline_store YAML of `kind`, with its server running and its bucket created."""
    if kind == "local":
        yield "  kind: local\n  path: ./store\n"
        return
    for var, value in {"AWS_ACCESS_KEY_ID": "AKIAFPE2E", "AWS_SECRET_ACCESS_KEY": "e2e-secret", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "true"}.items():
        monkeypatch.setenv(var, value)
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    if kind == "unity_catalog":
        from feature_pipelines_tests.uc_server import UnityCatalogServer

        server = UnityCatalogServer(project / "uc", "e2e-token", ("ml.features",)).start()
        try:
            monkeypatch.setenv("DATABRICKS_HOST", server.url)
            monkeypatch.setenv("DATABRICKS_TOKEN", "e2e-token")
            yield "  kind: unity_catalog\n  catalog: ml\n  schema: features\n  host: ${DATABRICKS_HOST}\n"
        finally:
            server.stop()
        return
    if kind == "s3":
        import boto3

        with moto_server() as server:
            boto3.client("s3", endpoint_url=server.url).create_bucket(Bucket="e2e")
            yield f"  kind: s3\n  bucket: e2e\n  prefix: features\n  endpoint_url: {server.url}\n"
    else:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        with fake_gcs_server() as server:
            storage.Client(project="e2e", credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}).create_bucket("e2e")
            yield f"  kind: gcs\n  bucket: e2e\n  prefix: features\n  project: e2e\n  endpoint: {server.url}\n"


@pytest.mark.parametrize("kind", ["local", "s3", "gcs", "unity_catalog"])
def test_same_run_on_every_store(kind: str, project: Path, monkeypatch) -> None:
    registry = _registry(_events(project / "events.parquet"))
    feature = registry.feature("spend")
    expected = PolarsEngine().compute(feature, KEYS)
    rng = np.random.default_rng(5)
    labels = pl.DataFrame({
        "customer_id": rng.integers(0, 40, 300).astype(str),
        "label_time": [datetime(2024, 1, 2, tzinfo=timezone.utc) + timedelta(minutes=int(m)) for m in rng.integers(0, 10 * 24 * 60, 300)],
    })
    with _store_profile(kind, project, monkeypatch) as offline:
        (project / "env" / "e2e.yaml").write_text("offline_store:\n" + offline)
        defs = build_defs(registry, profile="e2e")
        with dg.DagsterInstance.get() as instance:
            run = defs.resolve_job_def("spend_job").execute_in_process(
                instance=instance, tags={"dagster/asset_partition_range_start": KEYS[0], "dagster/asset_partition_range_end": KEYS[-1]})
            assert run.success
            one = defs.load_asset_value("spend", partition_key="2024-01-05", instance=instance)
            with defs.get_asset_value_loader(instance=instance) as loader:
                span = loader.load_asset_value("spend", partition_key_range=dg.PartitionKeyRange("2024-01-03", "2024-01-06"))
        assert_frame_equal(one, expected["2024-01-05"], check_exact=True)
        assert_frame_equal(span, pl.concat([expected[k] for k in KEYS[2:6]]), check_exact=True)
        store = FeatureStore("e2e", registry)
        assert type(store.offline).__name__ == {"local": "LocalStore", "s3": "S3Store", "gcs": "GCSStore",
                                                "unity_catalog": "UnityCatalogStore"}[kind]
        got = store.get_training_data(["spend"], labels)
    # The same answer as a plain as-of join on the engine's frames (rows stamped <= label time).
    rows = pl.concat(expected.values()).sort("feature_timestamp")
    want = labels.with_row_index("i").sort("label_time").join_asof(rows, left_on="label_time", right_on="feature_timestamp",
                                                                 by="customer_id", strategy="backward", check_sortedness=False).sort("i")
    for column in feature.metric_columns:
        assert got[f"spend__{column}"].to_list() == want[column].to_list(), column


@pytest.mark.parametrize("name, offline, online", [
    ("dev", "LocalStore", "SQLiteOnlineStore"),
    ("staging", "S3Store", "RedisOnlineStore"),
    ("prod", "S3Store", "RedisOnlineStore"),
    ("gcp", "GCSStore", "RedisOnlineStore"),
    ("databricks", "UnityCatalogStore", "DatabricksOnlineStore"),
])
def test_shipped_profiles_build_their_stores(name: str, offline: str, online: str, project: Path, monkeypatch) -> None:
    """Every profile in env/ resolves (with its variables set) to the stores the README promises.

    S3/GCS stores touch their bucket when built (the run above covers that against real servers), so
    for those only the resolved kind is checked here; the others are built without connecting."""
    import shutil

    from feature_pipelines.profiles import load_profile

    shutil.copy(Path(__file__).resolve().parent.parent / "env" / f"{name}.yaml", project / "env" / f"{name}.yaml")
    for var, value in {"FEATURE_STORE_BUCKET": "my-features", "REDIS_URL": "redis://127.0.0.1:1/0", "REDIS_PASSWORD": "pw-not-shown",
                       "DATABRICKS_HOST": "http://127.0.0.1:1", "AWS_REGION": "eu-west-1", "GOOGLE_CLOUD_PROJECT": "p",
                       "FEATURE_STORE_PATH": str(project / "store"), "ONLINE_STORE_PATH": str(project / "online.sqlite"),
                       "AWS_EC2_METADATA_DISABLED": "true", "NO_GCE_CHECK": "true"}.items():
        monkeypatch.setenv(var, value)
    profile = load_profile(name)
    if offline in ("S3Store", "GCSStore"):
        assert profile.offline.kind == {"S3Store": "s3", "GCSStore": "gcs"}[offline]
        assert profile.offline.value("bucket") == "my-features"
    else:
        assert type(profile.offline_store()).__name__ == offline
    assert type(profile.online_store()).__name__ == online
    assert "pw-not-shown" not in str(profile.masked()) + repr(profile) + repr(profile.online)
