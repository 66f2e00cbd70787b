"""End to end against a real redis-server: materialize → sensor → publish runs → values in Redis.

Everything runs through a real (SQLite) Dagster instance: the feature job, the sensor evaluated with
`build_sensor_context`, and the publish runs it requests executed with their own run config.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from feature_pipelines import Entity, Feature, FeatureStore, Rolling, Source, greater_than_or_equal
from feature_pipelines.orchestration import build_defs
from feature_pipelines.orchestration.publish import PUBLISH_JOB, SENSOR
from feature_pipelines.registry import Registry
from feature_pipelines.store import LocalStore
from feature_pipelines_tests.servers import redis_process, start_redis, wait_for


def _events(path: Path, *, bad_day: str | None = None) -> None:
    rng = np.random.default_rng(4)
    n = 2000
    ts = np.datetime64("2023-12-25T00:00:00", "us") + rng.integers(0, 20 * 86_400_000_000, n).astype("timedelta64[us]")
    amount = rng.uniform(1, 100, n)
    if bad_day:
        day = np.datetime64(bad_day, "us")
        amount[(ts >= day) & (ts < day + np.timedelta64(1, "D"))] *= -1
    pl.DataFrame({"customer_id": rng.integers(0, 30, n).astype(str), "ts": ts, "amount": amount}).write_parquet(path)


def _setup(project: Path, url: str) -> tuple[dg.Definitions, Registry]:
    (project / "env" / "test.yaml").write_text(
        f"offline_store:\n  kind: local\n  path: ./store\nonline_store:\n  kind: redis\n  url: {url}\n  key_prefix: e2e\n")
    source = project / "events.parquet"
    _events(source)
    registry = Registry()
    registry.add(Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=Source(str(source), timestamp="ts"),
                         start="2024-01-01", metrics=[Rolling(["1d", "3d"], {"amount": ["sum", "count"]})],
                         validators={"amount": [greater_than_or_equal(0)]}, online=True, ttl="30d"))
    return build_defs(registry), registry


def _materialize(defs: dg.Definitions, instance, first: str, last: str):
    return defs.resolve_job_def("spend_job").execute_in_process(
        instance=instance, raise_on_error=False,
        tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})


def _tick(defs: dg.Definitions, instance, cursor: str | None) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def(SENSOR)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs))


def _publish(defs: dg.Definitions, instance, request: dg.RunRequest):
    return defs.resolve_job_def(PUBLISH_JOB).execute_in_process(run_config=request.run_config, instance=instance, tags=request.tags,
                                                                raise_on_error=False)


def _online(registry: Registry, ids: list[str]) -> pl.DataFrame:
    store = FeatureStore(registry=registry)
    try:
        return store.get_online_features(["spend"], [{"customer_id": i} for i in ids])
    finally:
        store.close()


def _newest_offline(project: Path, ids: list[str]) -> pl.DataFrame:
    rows = LocalStore(project / "store").read("spend").sort("feature_timestamp").group_by("customer_id").last()
    return pl.DataFrame({"customer_id": ids}).join(rows, on="customer_id", how="left")


def test_sensor_publishes_every_partition_newer_wins(project: Path) -> None:
    with redis_process("--appendonly", "yes") as redis:
        defs, registry = _setup(project, redis.url)
        ids = [str(i) for i in range(30)] + ["unknown"]
        with dg.DagsterInstance.get() as instance:
            assert _materialize(defs, instance, "2024-01-01", "2024-01-05").success
            first = _tick(defs, instance, None)
            # One request for the feature covering every partition that landed since the last tick.
            assert len(first.run_requests) == 1
            config = first.run_requests[0].run_config["ops"]["publish_partitions"]["config"]
            assert config["partitions"] == [f"2024-01-0{d}" for d in range(1, 6)] and config["versions"] == ["1.0.0"] * 5
            for request in first.run_requests:
                assert _publish(defs, instance, request).success
            got, want = _online(registry, ids), _newest_offline(project, ids)
            assert got["spend__amount_sum_3d"].to_list() == want["amount_sum_3d"].to_list()
            assert got["spend__amount_count_1d"].to_list() == want["amount_count_1d"].to_list()
            assert got["spend__amount_sum_3d"][-1] is None  # unknown entity

            # Nothing new: the cursor remembers what was requested.
            assert _tick(defs, instance, first.cursor).run_requests == []

            # Re-publishing an older partition afterwards changes nothing: fresher values stay.
            old = dg.RunRequest(run_config={"ops": {"publish_partitions": {"config": {"feature": "spend", "partitions": ["2024-01-02"],
                                                                                      "versions": ["1.0.0"]}}}})
            rerun = _publish(defs, instance, old)
            assert rerun.success
            observed = instance.fetch_observations(dg.AssetKey("spend"), limit=10).records[0].event_log_entry.asset_observation.metadata
            assert observed["rows_written"].value == 0 and observed["rows_skipped_older"].value > 0
            assert _online(registry, ids).equals(got)

            # A failing blocking check: no materialization, so nothing is requested or published.
            _events(project / "events.parquet", bad_day="2024-01-06")
            assert not _materialize(defs, instance, "2024-01-06", "2024-01-06").success
            second = _tick(defs, instance, first.cursor)
            assert second.run_requests == []

            # Redis goes away during a publish: the run fails naming the server; after it is back, a retry publishes.
            _events(project / "events.parquet")
            assert _materialize(defs, instance, "2024-01-06", "2024-01-07").success
            third = _tick(defs, instance, second.cursor)
            assert len(third.run_requests) == 1
            assert third.run_requests[0].run_config["ops"]["publish_partitions"]["config"]["partitions"] == ["2024-01-06", "2024-01-07"]
            port = redis.port
            redis.stop()
            failed = _publish(defs, instance, third.run_requests[0])
            assert not failed.success
            failure = failed.failure_data_for_node("publish_partitions")
            message = failure.user_failure_data.description if failure.user_failure_data else failure.error.message
            assert f"127.0.0.1:{port}" in message and "spend" in message, message
            # The same server comes back (its append-only file kept): a retry publishes, nothing earlier is lost.
            back = start_redis("--appendonly", "yes", "--dir", str(redis.dir), port=port)
            try:
                for request in third.run_requests:
                    assert _publish(defs, instance, request).success
                got, want = _online(registry, ids), _newest_offline(project, ids)
                assert got["spend__amount_sum_3d"].to_list() == want["amount_sum_3d"].to_list()
                assert want["feature_timestamp"].max().isoformat().startswith("2024-01-08")
            finally:
                back.stop()


@pytest.mark.parametrize("kind", ["sqlite"])
def test_publish_run_records_what_it_did(project: Path, kind: str) -> None:
    """The embedded default: the same publish job writes to SQLite and reports rows, store and duration."""
    source = project / "events.parquet"
    _events(source)
    registry = Registry()
    registry.add(Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=Source(str(source), timestamp="ts"),
                         start="2024-01-01", metrics=[Rolling(["1d"], {"amount": ["sum"]})], online=True))
    defs = build_defs(registry)
    with dg.DagsterInstance.get() as instance:
        assert _materialize(defs, instance, "2024-01-01", "2024-01-02").success
        result = _tick(defs, instance, None)
        runs = [_publish(defs, instance, r) for r in result.run_requests]
        assert all(r.success for r in runs)
        records = instance.fetch_observations(dg.AssetKey("spend"), limit=10).records
        meta = records[0].event_log_entry.asset_observation.metadata
        assert meta["online_store"].value.startswith("sqlite:") and meta["rows"].value == meta["rows_written"].value > 0
        assert meta["seconds"].value >= 0 and meta["version"].value == "1.0.0"
    got = _online(registry, [str(i) for i in range(30)])
    want = _newest_offline(project, [str(i) for i in range(30)])
    assert got["spend__amount_sum_1d"].to_list() == want["amount_sum_1d"].to_list()


def test_dagster_dev_publishes_new_partitions_without_a_click(project: Path) -> None:
    """`dg dev` as a user runs it (`make dev`): the daemon ticks the (default-on) sensor and launches the publish runs."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from feature_pipelines.registry import load_registry
    from feature_pipelines.defs.sample_data import write_transactions
    from feature_pipelines_tests.servers import free_port

    root = Path(__file__).resolve().parent.parent
    data = project / "data"
    write_transactions(data / "transactions.parquet", rows=3_000, customers=40, days=6)
    env = {**os.environ, "FEATURE_PIPELINES_DATA_DIR": str(data)}
    port = free_port()
    dev = subprocess.Popen([str(Path(sys.executable).with_name("dg")), "dev", "--host", "127.0.0.1", "--port", str(port)],
                           cwd=root, env=env, stdout=(project / "dev.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log = lambda: (project / "dev.log").read_text()[-3000:]  # noqa: E731
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5).read(),
                 what="dg dev serving", timeout=120, alive=lambda: dev.poll() is None, detail=log, interval=0.5)
        built = subprocess.run([sys.executable, "-m", "feature_pipelines.cli", "build", "--features", "customer_velocity",
                                "--start", "2024-01-01", "--end", "2024-01-03"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, built.stdout + built.stderr[-3000:]

        def finished_publish_runs():
            with dg.DagsterInstance.get() as instance:
                runs = instance.get_runs(dg.RunsFilter(job_name=PUBLISH_JOB))
            return runs if runs and all(r.is_finished for r in runs) else None

        runs = wait_for(finished_publish_runs, what="a finished publish run launched by the sensor", timeout=180,
                        alive=lambda: dev.poll() is None, detail=log, interval=1)
        # The three partitions of the build are one publish run (the sensor ticks every 15 s; give it two more ticks).
        time.sleep(35)
        with dg.DagsterInstance.get() as instance:
            runs = instance.get_runs(dg.RunsFilter(job_name=PUBLISH_JOB))
        assert len(runs) == 1 and runs[0].is_success
        assert runs[0].tags["feature_pipelines/partitions"] == "2024-01-01...2024-01-03"
        assert runs[0].tags["feature_pipelines/partition_count"] == "3"
    finally:
        # dg dev runs a webserver, a daemon and code servers: stop the whole session we started.
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(dev.pid, sig)
            except ProcessLookupError:
                break
            try:
                dev.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(dev.pid, signal.SIGKILL)  # code servers may outlive `dg dev` itself
        except ProcessLookupError:
            pass
    store = FeatureStore(registry=load_registry("feature_pipelines.defs"))
    offline = store.offline.read("customer_velocity").sort("feature_timestamp").group_by("customer_id").last()
    got = store.get_online_features(["customer_velocity"], offline.select("customer_id"))
    store.close()
    assert got["customer_velocity__transaction_id_count_7d"].to_list() == offline["transaction_id_count_7d"].to_list()


def test_a_90_day_backfill_is_one_publish_run(project: Path) -> None:
    """A single-run backfill of 90 daily partitions reaches the online store through one publish run."""
    source = project / "events.parquet"
    rng = np.random.default_rng(9)
    n = 6000
    ts = np.datetime64("2024-01-01T00:00:00", "us") + rng.integers(0, 92 * 86_400_000_000, n).astype("timedelta64[us]")
    pl.DataFrame({"customer_id": rng.integers(0, 50, n).astype(str), "ts": ts, "amount": rng.uniform(1, 100, n)}).write_parquet(source)
    registry = Registry()
    registry.add(Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=Source(str(source), timestamp="ts"),
                         start="2024-01-01", metrics=[Rolling(["1d", "7d"], {"amount": ["sum", "count"]})], online=True))
    defs = build_defs(registry)
    with dg.DagsterInstance.get() as instance:
        assert _materialize(defs, instance, "2024-01-01", "2024-03-30").success
        tick = _tick(defs, instance, None)
        assert len(tick.run_requests) == 1
        config = tick.run_requests[0].run_config["ops"]["publish_partitions"]["config"]
        assert len(config["partitions"]) == 90
        run = _publish(defs, instance, tick.run_requests[0])
        assert run.success
        assert _tick(defs, instance, tick.cursor).run_requests == []
        meta = instance.fetch_observations(dg.AssetKey("spend"), limit=1).records[0].event_log_entry.asset_observation.metadata
        assert meta["partition_count"].value == 90 and meta["rows_written"].value == 50
        assert len(instance.get_runs(dg.RunsFilter(job_name=PUBLISH_JOB))) == 1
    ids = [str(i) for i in range(50)]
    got, want = _online(registry, ids), _newest_offline(project, ids)
    assert got["spend__amount_sum_7d"].to_list() == want["amount_sum_7d"].to_list()
    assert want["feature_timestamp"].max().isoformat().startswith("2024-03-31")
