"""Online store benchmarks (the contract in ../shared/DESIGN.md): one JSON line per workload, floor measured in the same run.

Each workload starts its own redis-server on a free loopback port (feature_pipelines_tests.servers) and stops it.

online_publish_1m  — RedisOnlineStore.write of 1,000,000 entities x 5 Float64 columns into an empty Redis, in keys/s
                     (validation, encoding and the server-side newer-wins compare included); floor: raw redis-py pipelined
                     SET of the same keys and the same encoded bytes (encoding not timed), 10,000 SETs per round trip.
                     Median of 3 runs each, FLUSHALL before every run. ratio = floor rate / project rate.
online_read_b1/b100/b1000
                   — 1,000 calls of FeatureStore.get_online_features (polars entity frame in, polars out) for a batch of 1 / 100 / 1,000 random entities (of the 1M
                     published) x 5 columns, returning a polars DataFrame; floor: the hand-written minimum from the same
                     input — keys built from the frame's id column, one redis-py MGET, raw bytes left undecoded. Calls
                     of the two alternate (each on its own random batch, so neither finds the other's keys in a warm
                     cache). ratio = p50 / floor p50.
online_http_b1/b100 — `feature-pipelines serve` in its own process, 1,000 sequential POST /online-features over one
                     keep-alive connection (JSON in and out); floor: the raw MGET of the same batch size.
online_postgres_read_b1/b100/b1000
                   — PostgresOnlineStore.read (polars keys in, decoded polars out) of 1 / 100 / 1,000 random entities of the 1M
                     published x 5 columns, on a PostgreSQL this run starts (Debian's binaries); floor: raw psycopg on a held
                     connection, the same `entity = ANY(...)` query, binary results, bytes left undecoded. Alternating, as above.
online_dynamodb_read_b1/b100
                   — DynamoDBOnlineStore.read of 1 / 100 random entities of 2,000 published, 200 calls, against moto's server
                     (a Python server: these measure moto more than DynamoDB); floor: one raw boto3 BatchGetItem of the same keys.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from feature_pipelines.online import RedisOnlineStore  # noqa: E402
from feature_pipelines.online.base import encode_frame  # noqa: E402
from feature_pipelines_tests.servers import start_redis  # noqa: E402

ENTITIES = 1_000_000
COLUMNS = [f"amount_{i}" for i in range(5)]
PREFIX = "bench"
FEATURE = "customer_spend"
CALLS = 1_000
MACHINE = f"{os.cpu_count()} cores"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _frame(n: int) -> pl.DataFrame:
    rng = np.random.default_rng(0)
    ts = datetime(2024, 1, 5, tzinfo=timezone.utc)
    return pl.DataFrame({"customer_id": pl.int_range(n, eager=True).cast(pl.String).str.pad_start(7, "0"),
                         "feature_timestamp": pl.Series([ts], dtype=pl.Datetime("us", "UTC")).new_from_index(0, n),
                         **{c: rng.gamma(2.0, 50.0, n) for c in COLUMNS}})


def _server():
    try:
        return start_redis()
    except LookupError as e:
        raise SystemExit(f"online benchmarks need redis-server: {e}") from None


def online_publish_1m(tmp: Path) -> dict:
    server = _server()
    try:
        frame = _frame(ENTITIES)
        store = RedisOnlineStore(server.url, key_prefix=PREFIX)
        raw = redis.Redis.from_url(server.url)
        times = []
        for _ in range(3):
            raw.flushall()
            t0 = time.perf_counter()
            result = store.write(FEATURE, 1, ["customer_id"], frame)
            times.append(time.perf_counter() - t0)
            assert result.written == ENTITIES, result
        t0 = time.perf_counter()
        again = store.write(FEATURE, 1, ["customer_id"], frame)  # re-publishing the same partition: all skipped
        republish = time.perf_counter() - t0
        assert again.written == 0, again

        batch = encode_frame(FEATURE, 1, ["customer_id"], frame, "feature_timestamp")
        keys, values = batch.entities(f"{PREFIX}:{FEATURE}:v1:"), batch.values
        floor_times = []
        for _ in range(3):
            raw.flushall()
            t0 = time.perf_counter()
            for i in range(0, len(keys), 10_000):
                pipe = raw.pipeline(transaction=False)
                for k, v in zip(keys[i:i + 10_000], values[i:i + 10_000]):
                    pipe.set(k, v)
                pipe.execute()
            floor_times.append(time.perf_counter() - t0)
        assert raw.dbsize() == ENTITIES
        store.close()
        raw.close()
    finally:
        server.stop()
    value = ENTITIES / statistics.median(times)
    floor = ENTITIES / statistics.median(floor_times)
    return {"workload": "online_publish_1m", "metric": "keys_per_s", "value": round(value), "floor": round(floor),
            "ratio": round(floor / value, 2), "republish_keys_per_s": round(ENTITIES / republish),
            "peak_rss_mb": round(_rss_mb()), "rows": ENTITIES, "columns": len(COLUMNS), "machine": MACHINE}


def _latency(name: str, batch: int, lat: list[float], floor_lat: list[float]) -> dict:
    p50, p99 = np.percentile(lat, [50, 99]) * 1000
    f50, f99 = np.percentile(floor_lat, [50, 99]) * 1000
    return {"workload": name, "metric": "p50_ms", "value": round(p50, 4), "floor": round(f50, 4),
            "ratio": round(p50 / f50, 2), "p50_ms": round(p50, 4), "p99_ms": round(p99, 4), "floor_p50_ms": round(f50, 4),
            "floor_p99_ms": round(f99, 4), "peak_rss_mb": round(_rss_mb()), "rows": CALLS * batch, "calls": CALLS,
            "columns": len(COLUMNS), "machine": MACHINE}


def _profile(tmp: Path, url: str) -> Path:
    """A `bench` profile (offline: a local store holding the feature's manifest; online: this Redis); returns its env dir."""
    from feature_pipelines.store import LocalStore

    env = tmp / "env"
    env.mkdir(exist_ok=True)
    (env / "bench.yaml").write_text(f"offline_store:\n  kind: local\n  path: {tmp / 'store'}\nonline_store:\n  kind: redis\n"
                                    f"  url: {url}\n  key_prefix: {PREFIX}\n")
    LocalStore(tmp / "store").write_partition(FEATURE, "2024-01-04", _frame(10), keys=["customer_id"], timestamp="feature_timestamp",
                                              config_hash="bench")
    return env


def _feature_store(tmp: Path, url: str):
    """FeatureStore.get_online_features as serving code calls it, on a registry with one online feature."""
    from feature_pipelines import Entity, Feature, FeatureStore, Rolling, Source
    from feature_pipelines.registry import Registry

    os.environ["FEATURE_PIPELINES_ENV_DIR"] = str(_profile(tmp, url))
    registry = Registry()
    registry.add(Feature(name=FEATURE, entities=[Entity("customer", join_key="customer_id")], source=Source("unused.parquet", timestamp="ts"),
                         start="2024-01-01", metrics=[Rolling(["1d"], {"amount": ["sum"]})], online=True))
    return FeatureStore("bench", registry)


def _read(batch: int, tmp: Path) -> dict:
    server = _server()
    try:
        RedisOnlineStore(server.url, key_prefix=PREFIX).write(FEATURE, 1, ["customer_id"], _frame(ENTITIES))
        store = _feature_store(tmp, server.url)
        raw = redis.Redis.from_url(server.url)
        prefix = f"{PREFIX}:{FEATURE}:v1:"
        rng = np.random.default_rng(batch)
        warmup = 50

        def batches() -> list[pl.DataFrame]:
            picks = rng.integers(0, ENTITIES, (CALLS + warmup, batch))
            return [pl.DataFrame({"customer_id": pl.Series(row, dtype=pl.Int64).cast(pl.String).str.pad_start(7, "0")}) for row in picks]

        ours, theirs = batches(), batches()

        def project(keys: pl.DataFrame) -> None:
            out = store.get_online_features([FEATURE], keys)
            assert out.height == batch

        def floor(keys: pl.DataFrame) -> None:
            raw.mget([prefix + k for k in keys.get_column("customer_id").to_list()])

        lat, floor_lat = _alternate(project, floor, ours, theirs, CALLS, warmup)
        store.close()
        raw.close()
    finally:
        server.stop()
    return _latency(f"online_read_b{batch}", batch, lat, floor_lat)


def _alternate(project, floor, ours: list, theirs: list, calls: int, warmup: int) -> tuple[list[float], list[float]]:
    """Time project(ours[i]) and floor(theirs[i]) alternately (which goes first flips each call); latencies after warmup."""
    # GC stays on, as in a serving process: disabling it or gc.freeze() changed neither p50 nor p99 measurably here.
    lat, floor_lat = [], []
    for i in range(calls + warmup):
        order = ((project, ours, lat), (floor, theirs, floor_lat))
        for fn, inputs, sink in (order if i % 2 else order[::-1]):
            t0 = time.perf_counter()
            fn(inputs[i])
            elapsed = time.perf_counter() - t0
            if i >= warmup:
                sink.append(elapsed)
    return lat, floor_lat


def _random_keys(n_entities: int, batch: int, count: int, seed: int) -> list[pl.DataFrame]:
    picks = np.random.default_rng(seed).integers(0, n_entities, (count, batch))
    return [pl.DataFrame({"customer_id": pl.Series(row, dtype=pl.Int64).cast(pl.String).str.pad_start(7, "0")}) for row in picks]


def _postgres_read(batch: int, tmp: Path) -> dict:
    try:
        import psycopg

        from feature_pipelines.online import OnlineRead, PostgresOnlineStore
        from feature_pipelines_tests.postgres_server import postgres_bin, postgres_server
    except ImportError as e:
        raise SystemExit(f"online_postgres_* need psycopg[binary,pool]: {e}") from None
    if postgres_bin() is None:
        raise SystemExit("online_postgres_* need PostgreSQL's binaries under /usr/lib/postgresql (Debian package postgresql)")
    with postgres_server() as pg:
        store = PostgresOnlineStore(pg.conninfo, table="bench")
        store.write(FEATURE, 1, ["customer_id"], _frame(ENTITIES))
        raw = psycopg.connect(pg.conninfo, autocommit=True)
        query = "SELECT entity, value FROM bench WHERE feature = %s AND major = 1 AND entity = ANY(%b::text[])"
        warmup = 50

        def project(keys: pl.DataFrame) -> None:
            [out] = store.read([OnlineRead(FEATURE, 1, keys, COLUMNS)])
            assert out.height == batch

        def floor(keys: pl.DataFrame) -> None:
            raw.cursor(binary=True).execute(query, (FEATURE, keys.get_column("customer_id").to_list())).fetchall()

        ours, theirs = (_random_keys(ENTITIES, batch, CALLS + warmup, seed) for seed in (batch, batch + 1))
        lat, floor_lat = _alternate(project, floor, ours, theirs, CALLS, warmup)
        store.close()
        raw.close()
    return _latency(f"online_postgres_read_b{batch}", batch, lat, floor_lat)


def _dynamodb_read(batch: int, tmp: Path) -> dict:
    try:
        import boto3

        from feature_pipelines.online import DynamoDBOnlineStore, OnlineRead
        from feature_pipelines_tests.servers import start_moto
        server = start_moto()
    except (ImportError, LookupError) as e:
        raise SystemExit(f"online_dynamodb_* need boto3 and moto[server]: {e}") from None
    entities, calls, warmup = 2_000, 200, 20
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")  # moto's dummy keys, never the developer's
    os.environ.pop("AWS_SESSION_TOKEN", None)
    try:
        store = DynamoDBOnlineStore("fp-bench", region="us-east-1", endpoint_url=server.url)
        store.write(FEATURE, 1, ["customer_id"], _frame(entities))
        raw = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=server.url)

        def project(keys: pl.DataFrame) -> None:
            [out] = store.read([OnlineRead(FEATURE, 1, keys, COLUMNS)])
            assert out.height == batch

        def floor(keys: pl.DataFrame) -> None:
            pks = [{"pk": {"S": f"{FEATURE}:v1:{k}"}} for k in dict.fromkeys(keys.get_column("customer_id").to_list())]
            raw.batch_get_item(RequestItems={"fp-bench": {"Keys": pks, "ProjectionExpression": "pk, v"}})

        ours, theirs = (_random_keys(entities, batch, calls + warmup, seed) for seed in (batch, batch + 1))
        lat, floor_lat = _alternate(project, floor, ours, theirs, calls, warmup)
        store.close()
        raw.close()
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    result = _latency(f"online_dynamodb_read_b{batch}", batch, lat, floor_lat)
    return {**result, "rows": calls * batch, "calls": calls, "notes": "moto's server on loopback, not DynamoDB"}


def online_read_b1(tmp: Path) -> dict:
    return _read(1, tmp)


def online_read_b100(tmp: Path) -> dict:
    return _read(100, tmp)


def online_read_b1000(tmp: Path) -> dict:
    return _read(1000, tmp)


def _http(batch: int, tmp: Path) -> dict:
    """`feature-pipelines serve` in its own process, called sequentially over one keep-alive connection."""
    import http.client
    import subprocess

    from feature_pipelines_tests.servers import free_port

    server = _server()
    serve = None
    try:
        RedisOnlineStore(server.url, key_prefix=PREFIX).write(FEATURE, 1, ["customer_id"], _frame(ENTITIES))
        env = {**os.environ, "FEATURE_PIPELINES_ENV_DIR": str(_profile(tmp, server.url))}
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "feature_pipelines.cli", "--profile", "bench", "serve", "--port", str(port)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for _ in range(600):
            try:
                conn.request("GET", "/health")
                conn.getresponse().read()
                break
            except OSError:
                conn.close()
                time.sleep(0.1)
        raw = redis.Redis.from_url(server.url)
        prefix = f"{PREFIX}:{FEATURE}:v1:"
        rng = np.random.default_rng(batch)
        warmup = 50
        lat, floor_lat = [], []
        for i in range(CALLS + warmup):
            ids = [f"{x:07d}" for x in rng.integers(0, ENTITIES, batch)]
            body = json.dumps({"features": [FEATURE], "entities": [{"customer_id": x} for x in ids]})
            t0 = time.perf_counter()
            conn.request("POST", "/online-features", body, {"Content-Type": "application/json"})
            answer = conn.getresponse().read()
            t1 = time.perf_counter()
            raw.mget([prefix + x for x in rng.integers(0, ENTITIES, batch).astype(str)])
            t2 = time.perf_counter()
            if i >= warmup:
                lat.append(t1 - t0)
                floor_lat.append(t2 - t1)
        assert len(json.loads(answer)["rows"]) == batch
        conn.close()
        raw.close()
    finally:
        if serve is not None:
            serve.terminate()
            serve.wait(timeout=30)
        server.stop()
    return _latency(f"online_http_b{batch}", batch, lat, floor_lat)


def online_http_b1(tmp: Path) -> dict:
    return _http(1, tmp)


def online_http_b100(tmp: Path) -> dict:
    return _http(100, tmp)


WORKLOADS = {"online_publish_1m": online_publish_1m, "online_read_b1": online_read_b1,
             "online_read_b100": online_read_b100, "online_read_b1000": online_read_b1000,
             "online_http_b1": online_http_b1, "online_http_b100": online_http_b100,
             **{f"online_postgres_read_b{b}": (lambda tmp, b=b: _postgres_read(b, tmp)) for b in (1, 100, 1000)},
             **{f"online_dynamodb_read_b{b}": (lambda tmp, b=b: _dynamodb_read(b, tmp)) for b in (1, 100)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="workload name prefix")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name, fn in WORKLOADS.items():
            if name.startswith(args.only):
                print(json.dumps(fn(Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
