"""Features compiled to Dagster assets, run through a real (SQLite) Dagster instance and the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

from feature_pipelines import Entity, Feature, Rolling, Source, greater_than_or_equal, not_null
from feature_pipelines.orchestration import build_defs
from feature_pipelines.registry import Registry
from feature_pipelines.store import LocalStore
from feature_pipelines_tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _events(path: Path, bad_amount: bool = False) -> Path:
    rng = np.random.default_rng(3)
    n = 3000
    ts = np.datetime64("2023-12-01T00:00:00", "us") + rng.integers(0, 70 * 86_400_000_000, n).astype("timedelta64[us]")
    amount = rng.uniform(1, 100, n)
    if bad_amount:
        amount[(ts >= np.datetime64("2024-01-05")) & (ts < np.datetime64("2024-01-06"))] *= -1
    pl.DataFrame({"customer_id": rng.integers(0, 40, n).astype(str), "ts": ts, "amount": amount}).write_parquet(path)
    return path


def _registry(source: Path) -> Registry:
    registry = Registry()
    registry.add(
        Feature(
            name="spend",
            entities=[Entity("customer", join_key="customer_id")],
            source=Source(str(source), timestamp="ts"),
            start="2024-01-01",
            metrics=[Rolling(["1d", "7d"], {"amount": ["sum", "count", "std"]})],
            validators={"amount": [greater_than_or_equal(0)], "customer_id": [not_null()]},
            owner="team:fraud",
            tags={"domain": "fraud"},
        )
    )
    return registry


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, first: str, last: str):
    return defs.resolve_job_def("spend_job").execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        raise_on_error=False,
    )


def test_range_run_writes_each_partition_with_its_own_metadata(project: Path) -> None:
    defs = build_defs(_registry(_events(project / "events.parquet")))
    with dg.DagsterInstance.get() as instance:
        result = _run(defs, instance, "2024-01-01", "2024-01-10")
        assert result.success
        records = instance.fetch_materializations(dg.AssetKey("spend"), limit=100).records
        assert sorted(r.partition_key for r in records) == [f"2024-01-{d:02d}" for d in range(1, 11)]
        store = LocalStore(project / "store")
        manifest = store.latest("spend")
        for record in records:
            meta = record.asset_materialization.metadata
            entry = manifest["partitions"][record.partition_key]
            assert meta["version"].value == "1.0.0"
            assert meta["dagster/row_count"].value == entry["rows"]
            assert meta["content_hash"].value == entry["content_hash"]
            assert meta["dagster/uri"].value.endswith(entry["file"])
            assert {c.name for c in meta["dagster/column_schema"].schema.columns} >= {"customer_id", "amount_sum_7d"}
        # The partition loads back through the IO manager, alone and as part of the whole asset.
        one = defs.load_asset_value("spend", partition_key="2024-01-03", instance=instance)
        assert isinstance(one, pl.DataFrame) and one.height == manifest["partitions"]["2024-01-03"]["rows"]
        assert one["feature_timestamp"].unique().to_list() == [datetime.fromisoformat("2024-01-04T00:00:00+00:00")]
        with defs.get_asset_value_loader(instance=instance) as loader:
            span = loader.load_asset_value("spend", partition_key_range=dg.PartitionKeyRange("2024-01-02", "2024-01-04"))
        assert span.height == sum(manifest["partitions"][f"2024-01-0{d}"]["rows"] for d in (2, 3, 4))
        # Re-running identical data changes no version and writes no file.
        files = sorted(p.name for p in (project / "store").rglob("*.parquet"))
        assert _run(defs, instance, "2024-01-01", "2024-01-10").success
        assert store.latest("spend")["version"] == "1.0.0"
        assert sorted(p.name for p in (project / "store").rglob("*.parquet")) == files


def test_asset_carries_spec_fields_and_blocking_checks(project: Path) -> None:
    defs = build_defs(_registry(_events(project / "events.parquet")))
    asset = defs.resolve_assets_def("spend")
    spec = asset.specs_by_key[dg.AssetKey("spend")]
    assert spec.owners == ["team:fraud"] and spec.tags["domain"] == "fraud"
    assert spec.code_version == _registry(project / "events.parquet").feature("spend").config_hash
    assert isinstance(asset.partitions_def, dg.DailyPartitionsDefinition)
    checks = {c.name: c for c in asset.check_specs}
    assert set(checks) == {"amount__greater_than_or_equal", "customer_id__not_null", "drift"}
    assert all(c.blocking for n, c in checks.items() if n != "drift") and not checks["drift"].blocking
    assert all(isinstance(c.partitions_def, dg.DailyPartitionsDefinition) for n, c in checks.items() if n != "drift")
    assert checks["drift"].partitions_def is None  # one drift result per run; each partition's PSI is in its metadata
    assert defs.resolve_schedule_def("spend_job_schedule").cron_schedule == "0 1 * * *"


def test_failing_check_writes_nothing_and_names_the_rows(project: Path) -> None:
    defs = build_defs(_registry(_events(project / "events.parquet", bad_amount=True)))
    with dg.DagsterInstance.get() as instance:
        assert _run(defs, instance, "2024-01-01", "2024-01-03").success
        before = sorted((p.relative_to(project), p.read_bytes()) for p in (project / "store").rglob("*") if p.is_file())
        result = _run(defs, instance, "2024-01-04", "2024-01-06")
        assert not result.success
        failure = result.failure_data_for_node("spend").user_failure_data
        assert "amount" in failure.description and "greater_than_or_equal" in failure.description and "2024-01-05" in failure.description
        after = sorted((p.relative_to(project), p.read_bytes()) for p in (project / "store").rglob("*") if p.is_file())
        assert after == before
        # Each partition of the run has its own evaluation: only 2024-01-05 fails, with its offending rows.
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("spend"), "amount__greater_than_or_equal"), limit=20)
        latest = {}
        for record in sorted(history, key=lambda r: r.id):
            latest[record.event.dagster_event.asset_check_evaluation_data.partition] = record.event.dagster_event.asset_check_evaluation_data
        assert set(latest) == {f"2024-01-0{d}" for d in range(1, 7)}
        assert [k for k, e in sorted(latest.items()) if not e.passed] == ["2024-01-05"]
        evaluation = latest["2024-01-05"]
        assert evaluation.metadata["failing_rows"].value > 0 and evaluation.metadata["checked_rows"].value >= evaluation.metadata["failing_rows"].value
        assert "amount" in evaluation.metadata["sample"].value
        assert "sample" not in latest["2024-01-04"].metadata and latest["2024-01-04"].metadata["checked_rows"].value > 0
        assert not instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("spend"), asset_partitions=["2024-01-05"]), limit=1).records


def test_partition_outside_the_definition_is_refused(project: Path) -> None:
    defs = build_defs(_registry(_events(project / "events.parquet")))
    with dg.DagsterInstance.get() as instance:
        result = _run(defs, instance, "2023-12-30", "2023-12-31")
    assert not result.success
    assert "before the partitions definition start" in result.failure_data_for_node("spend").error.cause.message
    assert not (project / "store" / "spend").exists()


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_dagster_cli_materializes_the_example_features(project: Path) -> None:
    """`dagster asset materialize` as CI runs it, for one partition and for a range, on the example defs."""
    from feature_pipelines.defs.sample_data import write_transactions

    data = project / "data"
    write_transactions(data / "transactions.parquet", rows=20_000, customers=200, days=40)
    env = {**os.environ, "FEATURE_PIPELINES_DATA_DIR": str(data)}
    one = _cli("dagster", "asset", "materialize", "-m", "feature_pipelines.definitions", "--select", "customer_spend", "--partition", "2024-01-05", env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    span = _cli("dagster", "asset", "materialize", "-m", "feature_pipelines.definitions", "--select", "customer_spend",
                "--partition-range", "2024-01-01...2024-01-31", env=env)
    assert span.returncode == 0, span.stderr[-3000:]
    manifest = json.loads((project / "store" / "customer_spend" / "_latest.json").read_text())
    assert len(manifest["partitions"]) == 31 and manifest["version"] == "1.0.0"
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.is_success for r in runs)
    listing = _cli("feature_pipelines.cli", "versions", "customer_spend", env=env)
    assert listing.returncode == 0 and "1.0.0" in listing.stdout
    # The range is up to date (same definition, same source bytes): the CLI build skips it without a run.
    build = ("feature_pipelines.cli", "build", "--features", "customer_spend", "--start", "2024-01-01", "--end", "2024-01-31")
    again = _cli(*build, env=env)
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr[-2000:]
    forced = _cli(*build, "--force", env=env)
    assert forced.returncode == 0 and "1.0.0 (unchanged)" in forced.stdout, forced.stdout + forced.stderr[-2000:]
    # New source content: rebuilt, and the changed partitions make one PATCH for the whole run.
    write_transactions(data / "transactions.parquet", rows=20_000, customers=200, days=40, seed=8)
    changed = _cli(*build, env=env)
    assert changed.returncode == 0 and "1.0.1 (patch" in changed.stdout, changed.stdout + changed.stderr[-2000:]
    with dg.DagsterInstance.get() as instance:
        assert len(instance.get_runs()) == 4
    bad = _cli("feature_pipelines.cli", "build", "--features", "customer_spend", "--partition", "2023-06-01", env=env)
    assert bad.returncode == 2 and "2023-06-01" in bad.stderr and "customer_spend" in bad.stderr


def test_webserver_shows_every_feature_with_partitions_metadata_and_checks(project: Path) -> None:
    """What `dagster dev -w workspace.yaml` serves, asked through the UI's own GraphQL API."""
    import urllib.request

    from feature_pipelines.registry import load_registry

    port = free_port()
    log = (project / "webserver.log").open("w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("dagster-webserver")), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    query = ("{ assetNodes { assetKey { path } partitionDefinition { description } partitionKeys metadataEntries { label } "
             "opNames assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } }")
    def answer() -> dict | None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
        return body if body.get("data", {}).get("assetNodes") else None

    try:
        body = wait_for(answer, what="dagster-webserver serving the workspace", timeout=120, alive=lambda: proc.poll() is None,
                        detail=lambda: (project / "webserver.log").read_text()[-3000:], interval=0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    nodes = {n["assetKey"]["path"][-1]: n for n in body["data"]["assetNodes"]}
    registry = load_registry("feature_pipelines.defs")
    assert set(nodes) == {*registry.features, "training_set", "transactions"}  # the source: sources/transactions
    for name, feature in registry.features.items():
        node = nodes[name]
        assert node["partitionDefinition"]["description"].startswith(feature.granularity.capitalize())
        assert node["partitionKeys"][0] == "2024-01-01"
        labels = {m["label"] for m in node["metadataEntries"]}
        assert {"feature_pipelines/keys", "feature_pipelines/config_hash", "entities", "source"} <= labels
        checks = {c["name"]: c["blocking"] for c in node["assetChecksOrError"]["checks"]}
        assert checks.pop("drift") is False
        assert set(checks) == {f"{column}__{v.rule.split('(')[0]}" for column, rules in feature.validators.items() for v in rules} and all(checks.values())


def test_training_set_asset_reads_features_point_in_time(project: Path, monkeypatch) -> None:
    """The example `training_set` asset, materialized by the Dagster CLI and loaded back through its IO manager."""
    from datetime import timezone

    from feature_pipelines.defs.training import PII, fraud_labels
    from feature_pipelines.registry import load_registry
    from feature_pipelines.retrieval import FeatureStore
    from feature_pipelines.defs.sample_data import write_transactions

    data = project / "data"
    write_transactions(data / "transactions.parquet", rows=20_000, customers=200, days=30)
    env = {**os.environ, "FEATURE_PIPELINES_DATA_DIR": str(data)}
    built = _cli("feature_pipelines.cli", "build", "--features", "customer_spend,customer_velocity,customer_declines,customer_latest_transaction,merchant_spend",
                 "--start", "2024-01-01", "--end", "2024-01-19", env=env)
    assert built.returncode == 0, built.stdout + built.stderr[-3000:]
    made = _cli("dagster", "asset", "materialize", "-m", "feature_pipelines.definitions", "--select", "training_set", "--partition", "2024-01-20", env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    from feature_pipelines.definitions import defs

    with dg.DagsterInstance.get() as instance:
        loaded = defs.load_asset_value("training_set", partition_key="2024-01-20", instance=instance)
    monkeypatch.setenv("FEATURE_PIPELINES_DATA_DIR", str(data))
    labels = fraud_labels(datetime(2024, 1, 20, tzinfo=timezone.utc))
    expected = FeatureStore(registry=load_registry("feature_pipelines.defs")).get_training_data(["fraud_model"], labels).drop(PII)
    assert loaded.height == labels.height > 0
    assert loaded.equals(expected)
    # Labels of the 20th see the features stamped at the end of the 19th (and nothing later).
    assert loaded["customer_spend__amount_count_7d"].null_count() < loaded.height
    # The README's training script runs as written (on this smaller range).
    script = subprocess.run([sys.executable, "examples/train_fraud_model.py", "--train", "2024-01-05..2024-01-15", "--test", "2024-01-15..2024-01-20"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert script.returncode == 0, script.stderr[-3000:]
    assert "training rows" in script.stdout and "test AUC 0." in script.stdout, script.stdout
    # So does the README's training snippet.
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```python", readme.index("**Train**")) + len("```python")
    snippet = readme[start : readme.index("```", start)] + "\nassert frame.height == 1 and 'customer_spend__amount_sum_7d' in frame.columns\n"
    ran = subprocess.run([sys.executable, "-c", snippet], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
