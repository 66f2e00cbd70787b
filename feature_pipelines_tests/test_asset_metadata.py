"""What a Dagster user reads on a feature's asset, through Dagster's own APIs: the source upstream with its data
version, freshness, column descriptions and lineage, per-partition statistics, the drift check and the version history."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
from dagster._core.definitions.observe import observe
import numpy as np
import polars as pl
import pytest

from feature_pipelines import Entity, Feature, Rolling, Source, build_defs, greater_than_or_equal
from feature_pipelines.orchestration.resources import LocalStoreResource, SQLiteOnlineStoreResource
from feature_pipelines.registry import Registry
from feature_pipelines.store import LocalStore

KEY = dg.AssetKey("spend")
SOURCE = dg.AssetKey(["sources", "events"])


def _events(path: Path, *, shift_day: int | None = None, seed: int = 1) -> None:
    """Two thousand customers, amounts around 50 every day from 2023-12-20 (so every window is full from the first partition);
    on `shift_day` (0 = 2024-01-01) amounts around 500."""
    rng = np.random.default_rng(seed)
    n = 120_000
    offsets = rng.integers(0, 42 * 86_400_000_000, n)
    amount = rng.normal(50, 10, n).clip(0)
    if shift_day is not None:
        day = (offsets // 86_400_000_000) == shift_day + 12
        amount = np.where(day, amount * 10, amount)
    ts = np.datetime64("2023-12-20T00:00:00", "us") + offsets.astype("timedelta64[us]")
    pl.DataFrame({"customer_id": rng.integers(0, 2_000, n).astype(str), "ts": ts, "amount": amount}).write_parquet(path)


def _defs(tmp: Path, **feature_kwargs) -> dg.Definitions:
    feature = Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=Source(str(tmp / "events.parquet"), timestamp="ts"),
                      start="2024-01-01", metrics=[Rolling(["1d", "3d"], {"amount": ["sum", "count", "mean"]})],
                      validators={"amount": [greater_than_or_equal(0)]}, **feature_kwargs)
    return build_defs(Registry.of([feature]), offline_store=LocalStoreResource(path=str(tmp / "store")),
                      online_store=SQLiteOnlineStoreResource(path=str(tmp / "online.sqlite")), automation="eager")


def _run(defs: dg.Definitions, instance, first: str, last: str):
    return defs.resolve_job_def("spend_job").execute_in_process(
        instance=instance, tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})


def _checks(instance, name: str) -> dict[str, dg.AssetCheckEvaluation]:
    history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(KEY, name), limit=1000)
    out = {}
    for record in sorted(history, key=lambda r: r.id):
        evaluation = record.event.dagster_event.asset_check_evaluation_data
        out[evaluation.partition] = evaluation
    return out


def test_source_asset_is_upstream_with_its_content_as_data_version(tmp_path: Path) -> None:
    _events(tmp_path / "events.parquet")
    defs = _defs(tmp_path)
    spec = defs.resolve_assets_def(KEY).specs_by_key[KEY]
    assert [d.asset_key for d in spec.deps] == [SOURCE]
    assert spec.automation_condition is not None and "eager" in (spec.automation_condition.get_label() or "").lower()
    source = defs.resolve_assets_def(SOURCE)
    assert source.is_observable
    with dg.instance_for_test() as instance:
        def observed_version() -> str:
            result = observe([source], instance=instance)  # dagster.observe is not re-exported in 1.13
            assert result.success
            return result.asset_observations_for_node(source.op.name)[0].tags["dagster/data_version"]

        first = observed_version()
        assert first == Source(str(tmp_path / "events.parquet")).fingerprint()
        assert observed_version() == first  # same bytes, same version
        _events(tmp_path / "events.parquet", seed=2)
        assert observed_version() != first  # new content, new data version


def test_freshness_follows_the_granularity_and_can_be_set(tmp_path: Path) -> None:
    _events(tmp_path / "events.parquet")
    policy = _defs(tmp_path).resolve_assets_def(KEY).specs_by_key[KEY].freshness_policy
    assert policy.fail_window.to_timedelta() == timedelta(days=2) and policy.warn_window.to_timedelta() == timedelta(hours=36)
    custom = _defs(tmp_path, freshness="6h").resolve_assets_def(KEY).specs_by_key[KEY].freshness_policy
    assert custom.fail_window.to_timedelta() == timedelta(hours=6)


def test_columns_are_described_and_traced_to_the_source(tmp_path: Path) -> None:
    _events(tmp_path / "events.parquet")
    defs = _defs(tmp_path)
    metadata = defs.resolve_assets_def(KEY).specs_by_key[KEY].metadata
    described = {c.name: c.description for c in metadata["dagster/column_schema"].columns}
    assert described["amount_sum_3d"] == "sum of amount over [t - 3d, t), t = feature_timestamp"
    assert described["amount_count_1d"].startswith("count of non-missing amount values over [t - 1d, t)")
    lineage = metadata["dagster/column_lineage"].deps_by_column
    assert [(d.asset_key, d.column_name) for d in lineage["amount_mean_3d"]] == [(SOURCE, "amount"), (SOURCE, "ts")]
    assert [d.column_name for d in lineage["customer_id"]] == ["customer_id"]
    with dg.instance_for_test() as instance:
        assert _run(defs, instance, "2024-01-02", "2024-01-03").success
        mat = instance.fetch_materializations(KEY, limit=1).records[0].asset_materialization
    schema = mat.metadata["dagster/column_schema"].schema
    assert {c.name: (c.type, c.description) for c in schema.columns}["amount_sum_3d"] == ("Float64", described["amount_sum_3d"])


def test_each_partition_carries_its_statistics(tmp_path: Path) -> None:
    _events(tmp_path / "events.parquet")
    defs = _defs(tmp_path)
    with dg.instance_for_test() as instance:
        assert _run(defs, instance, "2024-01-01", "2024-01-10").success
        records = {r.partition_key: r.asset_materialization.metadata for r in instance.fetch_materializations(KEY, limit=100).records}
    assert len(records) == 10
    stored = LocalStore(tmp_path / "store")
    for partition in ("2024-01-01", "2024-01-07"):
        frame = stored.read("spend", partitions=[partition])
        meta = records[partition]
        assert meta["entities"].value == frame["customer_id"].n_unique()
        assert meta["amount_sum_3d mean"].value == pytest.approx(frame["amount_sum_3d"].mean())
        assert meta["amount_sum_3d max"].value == pytest.approx(frame["amount_sum_3d"].max())
        assert meta["amount_mean_1d null_fraction"].value == pytest.approx(frame["amount_mean_1d"].null_count() / frame.height)
        assert meta["amount_count_1d min"].value == frame["amount_count_1d"].min()
        assert meta["amount_sum_3d p50"].value == pytest.approx(frame["amount_sum_3d"].quantile(0.5), rel=0.05)  # sampled: <= 1,000 rows
        assert isinstance(meta["amount_sum_3d p95"], dg.FloatMetadataValue)


def _drift(instance) -> list[dg.AssetCheckEvaluation]:
    history = instance.event_log_storage.get_asset_check_execution_history(dg.AssetCheckKey(KEY, "drift"), limit=100)
    return [r.event.dagster_event.asset_check_evaluation_data for r in sorted(history, key=lambda r: r.id)
            if r.event and r.event.dagster_event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]


def test_drift_check_warns_on_the_shifted_partition_only(tmp_path: Path) -> None:
    _events(tmp_path / "events.parquet", shift_day=14)  # events of 2024-01-15 are ten times larger
    defs = _defs(tmp_path)
    with dg.instance_for_test() as instance:
        assert _run(defs, instance, "2024-01-01", "2024-01-12").success
        # A later run takes its baseline from the stored partitions before it; non-blocking: the run succeeds.
        assert _run(defs, instance, "2024-01-13", "2024-01-17").success
        first, second = _drift(instance)
        records = {r.partition_key: r.asset_materialization.metadata for r in instance.fetch_materializations(KEY, limit=100).records}
    assert first.passed and first.severity == dg.AssetCheckSeverity.WARN and first.description.startswith("stable over 11 partition(s)")
    assert first.metadata["partitions_checked"].value == 12 and first.metadata["psi_max"].value < 0.25
    # Partition 2024-01-15 (stamped at its end, 2024-01-16 00:00) is the first to aggregate the shifted day.
    assert not second.passed and second.description.startswith("3 of 5 partition(s) drifted")
    assert second.metadata["drifted_partitions"].value == "2024-01-15, 2024-01-16, 2024-01-17"
    assert second.metadata["worst_partition"].value == "2024-01-15" and "amount" in second.metadata["column"].value
    # Every partition's PSI is in its own metadata: stable before the shift, large on it; none for the first (no baseline).
    assert "drift psi_max" not in records["2024-01-01"]
    assert all(records[f"2024-01-{d:02d}"]["drift psi_max"].value < 0.25 for d in range(2, 15))
    assert records["2024-01-15"]["drift psi_max"].value >= 0.25


def test_drift_is_not_judged_on_a_handful_of_entities(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    ts = np.datetime64("2023-12-25T00:00:00", "us") + rng.integers(0, 12 * 86_400_000_000, 600).astype("timedelta64[us]")
    pl.DataFrame({"customer_id": rng.integers(0, 30, 600).astype(str), "ts": ts, "amount": rng.uniform(0, 100, 600)}).write_parquet(
        tmp_path / "events.parquet")
    with dg.instance_for_test() as instance:
        assert _run(_defs(tmp_path), instance, "2024-01-01", "2024-01-05").success
        (only,) = _drift(instance)
    assert only.passed and "fewer than 200 values" in only.description


def test_version_history_is_on_the_newest_materialization(tmp_path: Path) -> None:
    _events(tmp_path / "events.parquet")
    defs = _defs(tmp_path)
    with dg.instance_for_test() as instance:
        assert _run(defs, instance, "2024-01-01", "2024-01-03").success
        _events(tmp_path / "events.parquet", seed=3)  # new data: the rebuilt partitions make a PATCH
        assert _run(defs, instance, "2024-01-02", "2024-01-02").success
        newest = instance.fetch_materializations(KEY, limit=1).records[0].asset_materialization.metadata
    rows = [r.data for r in newest["version_history"].records]
    assert [(r["version"], r["bump"]) for r in rows] == [("1.0.1", "patch"), ("1.0.0", "initial")]
    assert rows[0]["partitions"] == 3 and rows[0]["reason"]

