"""Online stores on real servers for the tests: fixtures and small helpers shared by the online test modules.

Each kind gets a real backend started once per session on a free loopback port and stopped by its
own handle: SQLite on a temp file, redis-server, PostgreSQL (Debian's binaries, `postgres_server`)
and moto's server speaking DynamoDB over HTTP (no in-process mocks). Every test gets its own
namespace (file, key prefix, table), so tests never see each other's values. A kind whose server is
not installed skips its tests. Test modules import the fixtures they use from here.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from feature_pipelines.online import (
    OnlineRead,
    OnlineStore,
    RedisOnlineStore,
    SQLiteOnlineStore,
)
from feature_pipelines_tests.servers import free_port, moto_server, redis_server

KINDS = ["sqlite", "redis", "postgres", "dynamodb"]
REGION = "us-east-1"
UTC = timezone.utc
T0 = datetime(2024, 1, 5, tzinfo=UTC)
TS = pl.Datetime("us", "UTC")


@pytest.fixture(scope="session")
def redis_url():
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster for the session (trust auth); yields its PostgresProcess (`.conninfo`)."""
    pytest.importorskip("psycopg_pool", reason="the PostgreSQL online store needs psycopg[binary,pool]")
    from feature_pipelines_tests.postgres_server import postgres_server  # noqa: PLC0415

    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def moto():
    """moto's server for the session: DynamoDB (and S3) over HTTP on loopback."""
    with moto_server() as server:
        yield server


@pytest.fixture()
def aws_env(monkeypatch):
    """Dummy credentials and a region for moto, and nothing from the developer's AWS config."""
    for var in ["AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path, name: str | None = None) -> OnlineStore:
    """A fresh, empty store of `kind` on its session server (`name`: the same namespace again, e.g. a second client)."""
    name = name or f"t{uuid.uuid4().hex[:10]}"
    if kind == "sqlite":
        return SQLiteOnlineStore(tmp_path / f"{name}.db")
    if kind == "redis":
        return RedisOnlineStore(request.getfixturevalue("redis_url"), key_prefix=name)
    if kind == "postgres":
        from feature_pipelines.online import PostgresOnlineStore  # noqa: PLC0415

        return PostgresOnlineStore(request.getfixturevalue("postgres").conninfo, table=name, max_connections=4)
    if kind == "dynamodb":
        pytest.importorskip("boto3")
        from feature_pipelines.online import DynamoDBOnlineStore  # noqa: PLC0415

        request.getfixturevalue("aws_env")
        return DynamoDBOnlineStore(f"fp-{name}", region=REGION, endpoint_url=request.getfixturevalue("moto").url)
    raise ValueError(kind)


def unreachable_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> OnlineStore:
    """A store whose backend is gone: a closed SQLite store, else a server address nobody listens on."""
    port = free_port()
    if kind == "sqlite":
        store = SQLiteOnlineStore(tmp_path / "closed.db")
        store.close()
        return store
    if kind == "redis":
        return RedisOnlineStore(host="127.0.0.1", port=port, key_prefix="gone", connect_timeout=2)
    if kind == "postgres":
        pytest.importorskip("psycopg_pool")
        from feature_pipelines.online import PostgresOnlineStore  # noqa: PLC0415

        return PostgresOnlineStore(f"postgresql://postgres@127.0.0.1:{port}/postgres", pool_timeout=1, connect_timeout=2)
    if kind == "dynamodb":
        pytest.importorskip("boto3")
        from feature_pipelines.online import DynamoDBOnlineStore  # noqa: PLC0415

        request.getfixturevalue("aws_env")
        return DynamoDBOnlineStore("fp-gone", region=REGION, endpoint_url=f"http://127.0.0.1:{port}", connect_timeout=2, max_attempts=1)
    raise ValueError(kind)


@pytest.fixture(params=KINDS)
def store(request, tmp_path):
    s = make_store(request.param, request, tmp_path)
    yield s
    s.close()


def at(*seconds: float) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in seconds]


def spend(ids: list, ts: list[datetime], amount: list, key: str = "customer_id") -> pl.DataFrame:
    return pl.DataFrame({key: ids, "feature_timestamp": pl.Series(ts, dtype=TS), "amount": pl.Series(amount, dtype=pl.Float64)})


def read1(store: OnlineStore, feature: str, keys: pl.DataFrame, columns: list[str], major: int = 1) -> pl.DataFrame:
    [out] = store.read([OnlineRead(feature, major, keys, columns)])
    return out


def ids(*values) -> pl.DataFrame:
    return pl.DataFrame({"customer_id": list(values)}, schema={"customer_id": pl.String})


def kind_of(store: OnlineStore) -> str:
    return {"SQLiteOnlineStore": "sqlite", "RedisOnlineStore": "redis", "PostgresOnlineStore": "postgres",
            "DynamoDBOnlineStore": "dynamodb"}[type(store).__name__]


def scaled(store: OnlineStore, n: int, dynamodb: int) -> int:
    """`n` rows, or `dynamodb` for DynamoDB: moto answers a few hundred conditional puts a second on this machine."""
    return dynamodb if kind_of(store) == "dynamodb" else n
