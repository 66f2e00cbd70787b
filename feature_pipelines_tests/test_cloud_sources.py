"""Sources given as s3:// URIs, read from a real S3 server (moto) with credentials from the environment."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path

import boto3
import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

from feature_pipelines import Entity, Feature, Rolling, Source
from feature_pipelines.engine import PolarsEngine
from feature_pipelines_tests.servers import moto_server


def test_s3_source_gives_the_local_result(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(9)
    n = 3000
    events = pl.DataFrame({
        "customer_id": rng.choice(["a", "b", "c", "d"], n),
        "ts": np.datetime64("2023-12-20", "us") + rng.integers(0, 25 * 86_400_000_000, n).astype("timedelta64[us]"),
        "amount": np.round(rng.uniform(0, 100, n), 2),
    })
    events.write_parquet(tmp_path / "events.parquet")
    with moto_server() as s3:
        for key, value in {"AWS_ENDPOINT_URL": s3.url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing-secret", "AWS_EC2_METADATA_DISABLED": "true"}.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="raw-events")
        buf = io.BytesIO()
        events.write_parquet(buf)
        client.put_object(Bucket="raw-events", Key="tx/events.parquet", Body=buf.getvalue())

        def feature(source: Source) -> Feature:
            return Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=source, start="2024-01-01",
                           metrics=[Rolling(["1d", "7d"], {"amount": ["sum", "count", "max"]})])

        keys = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(10)]
        remote = Source("s3://raw-events/tx/events.parquet", timestamp="ts")
        assert remote.format == "parquet" and remote.fingerprint() is None  # remote content is not fingerprinted (always rebuilt)
        got = PolarsEngine().compute(feature(remote), keys)
    want = PolarsEngine().compute(feature(Source(str(tmp_path / "events.parquet"), timestamp="ts")), keys)
    for key in keys:
        assert_frame_equal(got[key], want[key], check_exact=True)


def test_gs_source_gives_the_local_result_and_follows_generations(tmp_path: Path, monkeypatch) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from feature_pipelines_tests.servers import fake_gcs_server

    rng = np.random.default_rng(10)
    n = 2000
    events = pl.DataFrame({
        "customer_id": rng.choice(["a", "b", "c"], n),
        "ts": np.datetime64("2023-12-25", "us") + rng.integers(0, 20 * 86_400_000_000, n).astype("timedelta64[us]"),
        "amount": np.round(rng.uniform(0, 100, n), 2),
    })
    events.write_parquet(tmp_path / "events.parquet")
    with fake_gcs_server() as gcs:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
        monkeypatch.setenv("FEATURE_PIPELINES_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setenv("NO_GCE_CHECK", "true")
        client = storage.Client(project="fp", credentials=AnonymousCredentials(), client_options={"api_endpoint": gcs.url})
        bucket = client.create_bucket("raw-events")
        bucket.blob("tx/events.parquet").upload_from_filename(str(tmp_path / "events.parquet"))

        def feature(source: Source) -> Feature:
            return Feature(name="spend", entities=[Entity("customer", join_key="customer_id")], source=source, start="2024-01-01",
                           metrics=[Rolling(["1d", "7d"], {"amount": ["sum", "count"]})])

        keys = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(7)]
        remote = Source("gs://raw-events/tx/events.parquet", timestamp="ts")
        first = remote.fingerprint()
        got = PolarsEngine().compute(feature(remote), keys)
        assert remote.fingerprint() == first  # unchanged object, same generation
        changed = events.with_columns(pl.col("amount") + 1)
        changed.write_parquet(tmp_path / "changed.parquet")
        bucket.blob("tx/events.parquet").upload_from_filename(str(tmp_path / "changed.parquet"))
        assert remote.fingerprint() != first
        again = PolarsEngine().compute(feature(remote), keys)
        globbed = PolarsEngine().compute(feature(Source("gs://raw-events/tx/*.parquet", timestamp="ts")), keys)
    want = PolarsEngine().compute(feature(Source(str(tmp_path / "events.parquet"), timestamp="ts")), keys)
    want_changed = PolarsEngine().compute(feature(Source(str(tmp_path / "changed.parquet"), timestamp="ts")), keys)
    for key in keys:
        assert_frame_equal(got[key], want[key], check_exact=True)
        assert_frame_equal(again[key], want_changed[key], check_exact=True)
        assert_frame_equal(globbed[key], want_changed[key], check_exact=True)
