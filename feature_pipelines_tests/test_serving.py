"""Serving: publishing to the embedded online store, get_online_features, and the HTTP endpoint as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from feature_pipelines import Entity, Feature, FeatureService, FeatureStore, Rolling, Source
from feature_pipelines.errors import DefinitionError
from feature_pipelines.keys import with_surrogate_key
from feature_pipelines.orchestration.publish import publish_partitions
from feature_pipelines.profiles import load_profile
from feature_pipelines.registry import Registry
from feature_pipelines.store import LocalStore
from feature_pipelines_tests.servers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
UTC = timezone.utc


def _registry() -> tuple[Registry, Feature, Feature]:
    person = Entity("person", join_key="person_id", from_columns=["name", "born"])
    spend = Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=Source("unused.parquet", timestamp="ts"),
                    start="2024-01-01", metrics=[Rolling(["1d"], {"amount": ["sum", "count"]})], online=True)
    visits = Feature(name="visits", entities=[person], source=Source("unused.parquet", timestamp="ts"),
                     start="2024-01-01", metrics=[Rolling(["1d"], {"n": ["count"]})], online=True, ttl="3d")
    registry = Registry()
    for item in (spend, visits, FeatureService("model", [spend, "visits"])):
        registry.add(item)
    return registry, spend, visits


def _day(i: int) -> datetime:
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=i)


def _write(store: LocalStore, feature: Feature, day: int, frame: pl.DataFrame) -> None:
    frame = frame.with_columns(feature_timestamp=pl.lit(_day(day + 1)))
    frame = frame.select(*feature.join_keys, "feature_timestamp", *[c for c in frame.columns if c not in (*feature.join_keys, "feature_timestamp")])
    store.write_partition(feature.name, _day(day).date().isoformat(), frame, keys=feature.join_keys, timestamp="feature_timestamp",
                          config_hash=feature.config_hash)


def _spend_frame(seed: int, ids: list[str]) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({"customer_id": ids, "amount_sum_1d": rng.random(len(ids)) * 100, "amount_count_1d": rng.integers(0, 9, len(ids))})


@pytest.fixture()
def published(project: Path):
    """Three daily partitions of `spend` and one of `visits` in the offline store, published to SQLite."""
    registry, spend, visits = _registry()
    store = LocalStore(project / "store")
    frames = {0: _spend_frame(0, ["a", "b", "c"]), 1: _spend_frame(1, ["a", "b"]), 2: _spend_frame(2, ["b", "d"])}
    for day, frame in frames.items():
        _write(store, spend, day, frame)
    people = with_surrogate_key(pl.DataFrame({"name": ["Ada", "Alan"], "born": [datetime(1815, 12, 10).date(), datetime(1912, 6, 23).date()]}),
                                "person_id", ["name", "born"])
    _write(store, visits, 0, people.select("person_id", n_count_1d=pl.Series([3, 5])))
    active = load_profile()
    for day in (2, 0, 1):  # out of order: the older partitions must not overwrite newer values
        result = publish_partitions(spend, [_day(day).date().isoformat()], None, active.offline_store(), active.online)
        assert result.rows == frames[day].height
    publish_partitions(visits, None, None, active.offline_store(), active.online)
    return registry, frames


def test_online_values_are_the_newest_per_entity_in_input_order(published) -> None:
    registry, frames = published
    fs = FeatureStore(registry=registry)
    rows = [{"customer_id": "d"}, {"customer_id": "a"}, {"customer_id": "zzz"}, {"customer_id": "b"}, {"customer_id": "a"}, {"customer_id": "c"}]
    got = fs.get_online_features(["spend"], rows)
    newest = {"a": frames[1].row(0, named=True), "b": frames[2].row(0, named=True), "c": frames[0].row(2, named=True), "d": frames[2].row(1, named=True)}
    assert got.columns == ["customer_id", "spend__amount_sum_1d", "spend__amount_count_1d"]
    for row in got.iter_rows(named=True):
        want = newest.get(row["customer_id"])
        assert row["spend__amount_sum_1d"] == (want["amount_sum_1d"] if want else None)
        assert row["spend__amount_count_1d"] == (want["amount_count_1d"] if want else None)
    # pandas in, a column subset, and the same answer.
    subset = fs.get_online_features(["spend:amount_count_1d"], pd.DataFrame(rows))
    assert subset["spend__amount_count_1d"].to_list() == got["spend__amount_count_1d"].to_list()


def test_pii_rows_get_the_offline_surrogate_key(published) -> None:
    registry, _ = published
    fs = FeatureStore(registry=registry)
    got = fs.get_online_features(["model"], [{"customer_id": "a", "name": "Alan", "born": datetime(1912, 6, 23).date()},
                                             {"customer_id": "b", "name": "Ada", "born": datetime(1815, 12, 10).date()},
                                             {"customer_id": "b", "name": "Grace", "born": datetime(1906, 12, 9).date()}])
    assert got["visits__n_count_1d"].to_list() == [5, 3, None]
    assert "person_id" not in got.columns  # input columns only, then feature values


def test_online_errors_name_the_problem(published) -> None:
    registry, _ = published
    fs = FeatureStore(registry=registry)
    with pytest.raises(DefinitionError, match="unknown feature 'nope'"):
        fs.get_online_features(["nope"], [{"customer_id": "a"}])
    with pytest.raises(DefinitionError, match="no column"):
        fs.get_online_features(["spend:amount_max_1d"], [{"customer_id": "a"}])
    with pytest.raises(DefinitionError, match="newest published version"):
        fs.get_online_features(["spend@1.0.0"], [{"customer_id": "a"}])
    with pytest.raises(Exception, match="customer_id"):
        fs.get_online_features(["spend"], [{"client": "a"}])


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_endpoint_of_feature_pipelines_serve(project: Path) -> None:
    """`feature-pipelines serve` as a real process on the example features, built and published by the CLI."""
    from feature_pipelines.defs.sample_data import write_transactions

    data = project / "data"
    write_transactions(data / "transactions.parquet", rows=5_000, customers=50, days=10)
    env = {**os.environ, "FEATURE_PIPELINES_DATA_DIR": str(data)}
    cli = [sys.executable, "-m", "feature_pipelines.cli"]
    built = subprocess.run([*cli, "build", "--features", "customer_spend,merchant_spend", "--start", "2024-01-01", "--end", "2024-01-05"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr[-3000:]
    pub = subprocess.run([*cli, "publish", "--features", "customer_spend,merchant_spend"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert pub.returncode == 0 and "customer_spend 1.0.0: 5 partition(s)" in pub.stdout, pub.stdout + pub.stderr[-3000:]

    port = free_port()
    server = subprocess.Popen([*cli, "serve", "--port", str(port), "--max-batch", "10"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status, health = wait_for(lambda: _request(port, "GET", "/health"), what="feature-pipelines serve answering",
                                  timeout=60, alive=lambda: server.poll() is None, detail=lambda: server.stdout.read())
        assert status == 200 and health["status"] == "ok" and health["online_store"].startswith("sqlite:")
        status, listing = _request(port, "GET", "/features")
        assert status == 200 and {f["name"] for f in listing["features"]} >= {"customer_spend", "merchant_spend"}

        tx = pl.read_parquet(data / "transactions.parquet").filter(pl.col("timestamp") < datetime(2024, 1, 6, tzinfo=UTC))
        people = tx.select("first_name", "last_name", "date_of_birth", "merchant_id").unique(maintain_order=True).head(4)
        entities = [{**r, "date_of_birth": r["date_of_birth"].isoformat()} for r in people.to_dicts()] + [
            {"first_name": "No", "last_name": "Body", "date_of_birth": "2000-01-01", "merchant_id": "m9999"}]
        body = json.dumps({"features": ["customer_spend:amount_sum_7d", "merchant_spend:amount_count_30d"], "entities": entities}).encode()
        status, answer = _request(port, "POST", "/online-features", body)
        assert status == 200, answer
        # The same values as the newest offline row per entity (PII sent as JSON text hashes to the same key).
        store = LocalStore(project / "store")
        spend = with_surrogate_key(people, "customer_id", ["first_name", "last_name", "date_of_birth"]).join(
            store.read("customer_spend").sort("feature_timestamp").group_by("customer_id").last(), on="customer_id", how="left")
        merchant = people.join(store.read("merchant_spend").sort("feature_timestamp").group_by("merchant_id").last(), on="merchant_id", how="left")
        assert [r["customer_spend__amount_sum_7d"] for r in answer["rows"]] == spend["amount_sum_7d"].to_list() + [None]
        assert [r["merchant_spend__amount_count_30d"] for r in answer["rows"]] == merchant["amount_count_30d"].to_list() + [None]
        assert [r["merchant_id"] for r in answer["rows"]] == [e["merchant_id"] for e in entities]

        status, err = _request(port, "POST", "/online-features", json.dumps({"features": ["nope"], "entities": entities}).encode())
        assert status == 404 and "nope" in err["error"]
        status, err = _request(port, "POST", "/online-features", b"{not json")
        assert status == 400 and "JSON" in err["error"]
        status, err = _request(port, "POST", "/online-features", json.dumps({"features": ["customer_spend"], "entities": {"a": 1}}).encode())
        assert status == 400 and "entities" in err["error"]
        status, err = _request(port, "POST", "/online-features", json.dumps({"features": ["customer_spend"], "entities": entities * 3}).encode())
        assert status == 413 and "limit is 10" in err["error"]
        status, err = _request(port, "GET", "/nowhere")
        assert status == 404
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_make_server_serves_a_feature_store_in_this_process(published) -> None:
    """The embedded form: a FeatureStore you hold, served by uvicorn in a thread of this process; the store stays yours."""
    import threading

    from feature_pipelines.serving import make_server

    registry, frames = published
    store = FeatureStore(registry=registry)
    server = make_server(store, "127.0.0.1", 0, max_batch=10)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        status, health = wait_for(lambda: _request(port, "GET", "/health"), what="embedded server answering", timeout=60)
        assert status == 200 and health["online_store"].startswith("sqlite:")
        status, answer = _request(port, "POST", "/online-features", json.dumps({"features": ["spend"], "entities": [{"customer_id": "a"}]}).encode())
        assert status == 200 and answer["rows"] == [{"customer_id": "a", "spend__amount_sum_1d": frames[1]["amount_sum_1d"][0],
                                                     "spend__amount_count_1d": frames[1]["amount_count_1d"][0]}]
        status, err = _request(port, "POST", "/online-features", json.dumps({"features": ["spend"], "entities": [{"customer_id": None}]}).encode())
        assert status == 400 and "null" in err["error"]
        assert _request(port, "GET", "/ready")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert store.get_online_features(["spend"], [{"customer_id": "b"}]).height == 1  # not closed by the server
    store.close()


def test_staging_profile_runs_on_s3_and_redis(project: Path, monkeypatch) -> None:
    """Switching the profile is all it takes: the shipped env/staging.yaml with a real S3 server (moto) and a
    real redis-server started here: build to S3 through Dagster, publish to Redis, serve, secrets masked."""
    import shutil

    import boto3

    from feature_pipelines.profiles import load_profile
    from feature_pipelines.registry import load_registry
    from feature_pipelines.defs.sample_data import write_transactions
    from feature_pipelines.store import S3Store
    from feature_pipelines_tests.servers import moto_server, redis_server

    shutil.copy(ROOT / "env" / "staging.yaml", project / "env" / "staging.yaml")
    data = project / "data"
    write_transactions(data / "transactions.parquet", rows=3_000, customers=40, days=6)
    with redis_server() as url, moto_server() as s3:
        settings = {"REDIS_URL": url, "FEATURE_STORE_BUCKET": "fp-staging", "AWS_ENDPOINT_URL": s3.url, "AWS_REGION": "us-east-1",
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_EC2_METADATA_DISABLED": "true"}
        for key, value in settings.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1").create_bucket(Bucket="fp-staging")
        env = {**os.environ, "FEATURE_PIPELINES_DATA_DIR": str(data)}
        cli = [sys.executable, "-m", "feature_pipelines.cli", "--profile", "staging"]
        shown = subprocess.run([*cli, "profile"], cwd=ROOT, env={**env, "REDIS_PASSWORD": "s3cret-pw"}, capture_output=True, text=True, timeout=120)
        # The password is shown by its variable's name, never by value.
        assert shown.returncode == 0 and "s3cret-pw" not in shown.stdout, shown.stdout + shown.stderr
        assert json.loads(shown.stdout)["settings"]["online_store"]["password"] == "${REDIS_PASSWORD}"
        built = subprocess.run([*cli, "build", "--features", "customer_velocity", "--start", "2024-01-01", "--end", "2024-01-04"],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert built.returncode == 0 and "1.0.0 (initial)" in built.stdout, built.stdout + built.stderr[-3000:]
        assert isinstance(load_profile("staging").offline_store(), S3Store)
        listed = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1").list_objects_v2(Bucket="fp-staging")["Contents"]
        assert any(o["Key"].endswith("customer_velocity/_latest.json") for o in listed)
        pub = subprocess.run([*cli, "publish", "--features", "customer_velocity"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert pub.returncode == 0 and "redis://127.0.0.1" in pub.stdout, pub.stdout + pub.stderr[-3000:]
        store = FeatureStore("staging", load_registry("feature_pipelines.defs"))
        offline = store.offline.read("customer_velocity").sort("feature_timestamp").group_by("customer_id").last()
        assert offline.height > 0
        got = store.get_online_features(["customer_velocity"], offline.select("customer_id"))
        store.close()
        assert got["customer_velocity__transaction_id_count_7d"].to_list() == offline["transaction_id_count_7d"].to_list()
