"""A new version starts empty: training says which label rows it cannot cover, and the build says how to backfill."""

from __future__ import annotations

import dataclasses
import warnings
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from feature_pipelines import DataError, Entity, Feature, FeatureStore, Rolling, Source, build_defs
from feature_pipelines.orchestration.resources import LocalStoreResource, SQLiteOnlineStoreResource
from feature_pipelines.registry import Registry
from feature_pipelines.retrieval import CoverageWarning


def _feature(tmp: Path, aggregations: list[str], granularity: str = "daily") -> Feature:
    return Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=Source(str(tmp / "events.parquet"), timestamp="ts"),
                   start="2024-01-01" if granularity != "weekly" else "2023-12-31", granularity=granularity,
                   metrics=[Rolling(["7d"], {"amount": aggregations})])


def _build(tmp: Path, feature: Feature, first: str, last: str) -> None:
    defs = build_defs(Registry.of([feature]), offline_store=LocalStoreResource(path=str(tmp / "store")),
                      online_store=SQLiteOnlineStoreResource(path=str(tmp / "online.sqlite")))
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("spend_job").execute_in_process(
            instance=instance, tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}).success


@pytest.fixture()
def tmp(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("FEATURE_PIPELINES_ENV_DIR", str(tmp_path / "env"))
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "t.yaml").write_text("offline_store:\n  kind: local\n  path: ./store\n")
    monkeypatch.setenv("FEATURE_PIPELINES_PROFILE", "t")
    rng = np.random.default_rng(0)
    ts = np.datetime64("2023-12-20T00:00:00", "us") + rng.integers(0, 60 * 86_400_000_000, 4000).astype("timedelta64[us]")
    pl.DataFrame({"customer_id": rng.integers(0, 20, 4000).astype(str), "ts": ts, "amount": rng.uniform(1, 9, 4000)}).write_parquet(
        tmp_path / "events.parquet")
    return tmp_path


def _labels(*days: int) -> pl.DataFrame:
    return pl.DataFrame({"customer_id": ["1"] * len(days), "label_time": [datetime(2024, 1, d, 12, tzinfo=timezone.utc) for d in days]})


def test_labels_on_materialized_partitions_raise_no_warning(tmp: Path) -> None:
    feature = _feature(tmp, ["sum"])
    _build(tmp, feature, "2024-01-01", "2024-01-10")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        frame = FeatureStore(registry=Registry.of([feature])).get_training_data(["spend"], _labels(2, 5, 11))
    assert frame["spend__amount_sum_7d"].null_count() == 0  # the 11th at noon reads the partition of the 10th


def test_a_new_minor_version_warns_for_the_labels_it_cannot_cover(tmp: Path) -> None:
    _build(tmp, _feature(tmp, ["sum"]), "2024-01-01", "2024-01-10")
    changed = _feature(tmp, ["sum", "max"])  # a column added: MINOR 1.1.0, which starts empty
    _build(tmp, changed, "2024-01-04", "2024-01-04")
    store = FeatureStore(registry=Registry.of([changed]))
    with pytest.warns(CoverageWarning) as caught:
        frame = store.get_training_data(["spend"], _labels(2, 5, 6, 9))
    message = str(caught[0].message)
    assert "version 1.1.0: 3 of 4 label row(s)" in message and "2024-01-01 … 2024-01-08" in message
    assert "feature-pipelines build --features spend --start 2024-01-01 --end 2024-01-08" in message
    # Exactly the silent failure the warning is about: the 2nd has no row at all, the 6th and 9th get the 4th's (stale) row.
    values = frame["spend__amount_max_7d"].to_list()
    assert values[0] is None and values[1] is not None and values[2] == values[3] == values[1]
    with pytest.raises(DataError, match="3 of 4 label row"):
        store.get_training_data(["spend"], _labels(2, 5, 6, 9), strict=True)
    # The pinned old version still covers them all.
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        assert store.get_training_data(["spend@1.0.0"], _labels(2, 5, 6, 9))["spend__amount_sum_7d"].null_count() == 0


def test_weekly_coverage_uses_sunday_weeks(tmp: Path) -> None:
    feature = _feature(tmp, ["sum"], granularity="weekly")
    _build(tmp, feature, "2023-12-31", "2024-01-07")
    store = FeatureStore(registry=Registry.of([feature]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)
        store.get_training_data(["spend"], _labels(8, 13))  # weeks of Dec 31 and Jan 7 are held
    with pytest.warns(CoverageWarning, match="1 of 1 label row.*2024-01-14"):
        store.get_training_data(["spend"], _labels(21))


def test_build_says_a_new_version_starts_empty(tmp: Path, monkeypatch, capsys) -> None:
    from feature_pipelines.cli import main

    package = tmp / "coverage_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from feature_pipelines import Entity, Feature, Rolling, Source\n"
        f"spend = Feature(name='spend', entities=[Entity('customer', join_key='customer_id')], source=Source({str(tmp / 'events.parquet')!r}, "
        "timestamp='ts'), start='2024-01-01', end='2024-02-01', metrics=[Rolling(['7d'], {'amount': AGGS})])\n")
    monkeypatch.syspath_prepend(str(tmp))
    monkeypatch.setenv("FEATURE_PIPELINES_PACKAGE", "coverage_pkg")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp / "home"))
    (package / "aggs.py").write_text("")
    for aggs, args in ((["sum"], ["--start", "2024-01-01", "--end", "2024-01-10"]), (["sum", "max"], ["--partition", "2024-01-04"])):
        init = (package / "__init__.py").read_text()
        (package / "__init__.py").write_text(f"AGGS = {aggs!r}\n" + "\n".join(l for l in init.splitlines() if not l.startswith("AGGS")) + "\n")
        import importlib
        import sys

        for name in [m for m in sys.modules if m.startswith("coverage_pkg")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        assert main(["build", *args]) == 0
    out = capsys.readouterr().out
    assert "spend 1.1.0 is a new version and starts empty: it holds 1 partition(s), 2024-01-04 … 2024-01-04" in out
    assert "backfill the rest with: feature-pipelines build --features spend" in out


def test_a_training_frame_is_reproducible_from_its_snapshot(tmp: Path) -> None:
    """Appending partitions keeps version 1.0.0 but makes a new commit: the snapshot pin reads the frame as it was."""
    feature = _feature(tmp, ["sum"])
    _build(tmp, feature, "2024-01-01", "2024-01-03")
    store = FeatureStore(registry=Registry.of([feature]))
    labels = _labels(3, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoverageWarning)  # the 7th is not covered yet: that is the point
        before = store.get_training_data(["spend"], labels)
    snapshot = store.last_snapshot["spend"]
    assert snapshot.startswith("1.0.0+r")
    _build(tmp, feature, "2024-01-04", "2024-01-08")  # appended: still 1.0.0
    after = store.get_training_data(["spend"], labels)
    assert store.last_snapshot["spend"] != snapshot and store.last_snapshot["spend"].startswith("1.0.0+r")
    assert not after.equals(before)  # the 7th now sees the row of the 6th
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoverageWarning)
        again = store.get_training_data([f"spend@{snapshot}"], labels)
    assert again.equals(before) and store.last_snapshot["spend"] == snapshot
    with pytest.raises(Exception, match=r"has no snapshot r99"):
        store.get_training_data(["spend@1.0.0+r99"], labels)
    with pytest.raises(Exception, match=r"is not VERSION\+rN"):
        store.get_training_data(["spend@1.0.0+rx"], labels)


def test_online_reads_after_a_new_version_explain_what_to_publish(tmp: Path) -> None:
    from feature_pipelines import StoreError
    from feature_pipelines.orchestration.publish import publish_partitions
    from feature_pipelines.profiles import load_profile

    old = dataclasses.replace(_feature(tmp, ["sum"]), online=True)
    _build(tmp, old, "2024-01-01", "2024-01-05")
    profile = load_profile()
    publish_partitions(old, None, None, profile.offline_store(), profile.online)
    new = dataclasses.replace(_feature(tmp, ["sum", "max"]), online=True)  # MINOR 1.1.0: a column added
    _build(tmp, new, "2024-01-05", "2024-01-05")
    store = FeatureStore(registry=Registry.of([new]))
    try:
        assert store.get_online_features(["spend:amount_sum_7d"], [{"customer_id": "1"}])["spend__amount_sum_7d"][0] is not None
        with pytest.raises(StoreError, match=r"has no column\(s\) \['amount_max_7d'\].*feature-pipelines publish --features spend"):
            store.get_online_features(["spend"], [{"customer_id": "1"}])
    finally:
        store.close()
