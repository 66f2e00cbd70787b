"""Store-specific online store tests: layouts, credentials, locking, pools, outages, legacy records.

What every store must do is in test_online_contract.py (one suite over SQLite, Redis, PostgreSQL and
DynamoDB). Here: what only one store has. Real servers only, started on free loopback ports by the
fixtures in `online_stores` (and, for outage and password tests, by the test itself) and stopped by
their own handles.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import traceback
import uuid
from datetime import timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_pipelines.errors import StoreError
from feature_pipelines.online import (
    OnlineRead,
    RedisOnlineStore,
    SQLiteOnlineStore,
    WriteResult,
)
from feature_pipelines.online.base import (
    RowSchema,
    encode_frame,
    entity_series,
    entity_texts,
)
from feature_pipelines_tests.online_stores import (  # noqa: F401 - fixtures
    REGION,
    T0,
    TS,
    at,
    aws_env,
    ids,
    moto,
    postgres,
    read1,
    redis_url,
    spend,
)
from feature_pipelines_tests.servers import (
    moto_set_auth,
    redis_process,
    start_moto,
    wait_for,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=6)), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
                          st.one_of(st.none(), st.booleans()), st.one_of(st.none(), st.dates())), max_size=20))
def test_python_and_polars_entity_texts_agree(rows):
    frame = pl.DataFrame(rows, schema={"s": pl.String, "i": pl.Int64, "b": pl.Boolean, "d": pl.Date}, orient="row")
    for keys in (["s"], ["i"], ["b"], ["d"], ["s", "i"], ["d", "s", "b"]):
        assert entity_texts(frame, keys) == entity_series(frame, keys).to_list()


def test_entity_texts_are_injective_for_composites():
    frame = pl.DataFrame({"a": ["a|b", "a", "1:a", "", "x"], "b": ["c", "b|c", "", "1:a", ""]})
    texts = entity_texts(frame, ["a", "b"])
    assert len(set(texts)) == 5


# ---------------------------------------------------------------------------------------------
# SQLite only


def test_sqlite_locked_write_fails_clearly_and_writes_nothing(tmp_path):
    path = tmp_path / "online.db"
    store = SQLiteOnlineStore(path, timeout_seconds=0.2)
    store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreError, match=r"online store sqlite:.*online.db failed while writing spend v1: database is locked; nothing was written"):
            store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(2, 2), [2.0, 2.0]))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert read1(store, "spend", ids("a", "b"), ["amount"])["amount"].to_list() == [1.0, None]
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(2, 2), [2.0, 2.0])) == WriteResult(2, 0)
    store.close()
    with pytest.raises(StoreError, match="is closed"):
        store.read([OnlineRead("spend", 1, ids("a"), ["amount"])])


def _writer(path: str, rounds: int) -> None:
    store = SQLiteOnlineStore(path)
    for r in range(1, rounds + 1):
        frame = pl.DataFrame({"customer_id": [f"c{i}" for i in range(2000)], "feature_timestamp": pl.Series([T0 + timedelta(seconds=r)] * 2000, dtype=TS),
                              "x": [float(r)] * 2000, "y": [float(r)] * 2000})
        store.write("live", 1, ["customer_id"], frame)
    store.close()


def test_sqlite_reader_sees_whole_writes_while_another_process_publishes(tmp_path):
    path = tmp_path / "online.db"
    store = SQLiteOnlineStore(path)
    _writer(str(path), 1)
    writer = multiprocessing.get_context("spawn").Process(target=_writer, args=(str(path), 30))
    writer.start()
    asked = ids(*[f"c{i}" for i in range(0, 2000, 7)])
    seen = []
    try:
        while writer.is_alive() or not seen:
            out = read1(store, "live", asked, ["x", "y"])
            rounds = set(out["x"].to_list())
            assert len(rounds) == 1, "a read saw two publishes at once"
            assert out["x"].to_list() == out["y"].to_list()
            seen.append(rounds.pop())
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert seen == sorted(seen)  # never backwards
    assert read1(store, "live", asked, ["x"])["x"].unique().to_list() == [30.0]
    store.close()



# ---------------------------------------------------------------------------------------------
# Redis only


def test_redis_key_layout(redis_url):
    import redis

    store = RedisOnlineStore(redis_url, key_prefix="layout")
    store.write("spend", 1, ["customer_id"], spend(["a", "__x"], at(1, 1), [1.0, 2.0]), ttl_seconds=30)
    raw = redis.Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() for k in raw.scan_iter("layout:*"))
        assert keys == ["layout:__features__", "layout:spend:v1:___x", "layout:spend:v1:__schema__", "layout:spend:v1:a"]
        assert 0 < raw.pttl("layout:spend:v1:a") <= 30_000
        assert raw.pttl("layout:spend:v1:__schema__") == -1
        value = raw.get("layout:spend:v1:a")
        assert int.from_bytes(value[:8], "big", signed=True) == int(at(1)[0].timestamp() * 1_000_000)
    finally:
        raw.close()
        store.close()


def test_redis_recovers_when_the_server_forgets_the_script(redis_url):
    import redis

    store = RedisOnlineStore(redis_url, key_prefix=f"t{uuid.uuid4().hex[:8]}")
    store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]))
    raw = redis.Redis.from_url(redis_url)
    raw.script_flush()
    raw.close()
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(2, 2), [2.0, 2.0])) == WriteResult(2, 0)
    store.close()


def test_redis_down_gives_a_clear_error_then_recovers():
    with redis_process() as server:
        store = RedisOnlineStore(host="127.0.0.1", port=server.port, key_prefix="down")
        store.write("customer_spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]))
        server.stop()
        with pytest.raises(StoreError, match=rf"online store redis://127.0.0.1:{server.port}/0 is unreachable: .*refused.* while writing customer_spend v1"):
            store.write("customer_spend", 1, ["customer_id"], spend(["a"], at(2), [2.0]))
        with pytest.raises(StoreError, match=rf"redis://127.0.0.1:{server.port}/0 is unreachable: .* while reading customer_spend v1"):
            read1(store, "customer_spend", ids("a"), ["amount"])
        port = server.port
    with redis_process(port=port):  # a fresh, empty server on the same port: the same store object reconnects
        assert store.write("customer_spend", 1, ["customer_id"], spend(["a"], at(2), [2.0])) == WriteResult(1, 0)
        assert read1(store, "customer_spend", ids("a"), ["amount"])["amount"].to_list() == [2.0]
        store.close()


def test_redis_password_is_used_and_never_shown():
    secret = "s3cr3t-" + uuid.uuid4().hex
    with redis_process("--requirepass", secret) as server:
        store = RedisOnlineStore(host="127.0.0.1", port=server.port, password=secret, key_prefix="auth")
        assert store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0])).written == 1
        assert read1(store, "spend", ids("a"), ["amount"])["amount"].to_list() == [1.0]
        by_url = RedisOnlineStore(f"redis://:{secret}@127.0.0.1:{server.port}/0", key_prefix="auth")
        assert read1(by_url, "spend", ids("a"), ["amount"])["amount"].to_list() == [1.0]
        for s in (store, by_url):
            assert secret not in repr(s) and secret not in str(s) and secret not in s.description
            assert s.description == f"redis://127.0.0.1:{server.port}/0 (prefix auth)"

        wrong = RedisOnlineStore(host="127.0.0.1", port=server.port, password=secret + "-wrong", key_prefix="auth")
        with pytest.raises(StoreError) as info:
            read1(wrong, "spend", ids("a"), ["amount"])
        message = str(info.value)
        assert f"redis://127.0.0.1:{server.port}/0 rejected the credentials" in message
        assert secret not in "".join(traceback.format_exception(info.value))  # nor in the chained exceptions

        missing = RedisOnlineStore(host="127.0.0.1", port=server.port, key_prefix="auth")
        with pytest.raises(StoreError, match="rejected the credentials"):
            missing.write("spend", 1, ["customer_id"], spend(["a"], at(2), [2.0]))
        for s in (store, by_url, wrong, missing):
            s.close()


def test_redis_settings_from_a_profile_may_be_strings():
    store = RedisOnlineStore(host="127.0.0.1", port="6380", db="2", ssl="false", key_prefix="p")
    assert store.description == "redis://127.0.0.1:6380/2 (prefix p)"
    with pytest.raises(StoreError, match=r"setting port must be an integer, got 'sixty'"):
        RedisOnlineStore(port="sixty")
    with pytest.raises(StoreError, match=r"key_prefix must be a non-empty string without ':'"):
        RedisOnlineStore(key_prefix="a:b")


def test_redis_bad_url_does_not_echo_the_password():
    with pytest.raises(StoreError) as info:
        RedisOnlineStore("http://:hunter2@example.com:1/0")
    assert "hunter2" not in str(info.value) and "example.com" in str(info.value)



# ---------------------------------------------------------------------------------------------
# records written before versions (layout 1) stay readable and order as version 0.0


def legacy_records(frame: pl.DataFrame) -> tuple[RowSchema, list[str], list[int], list[bytes]]:
    """spend v1 records exactly as a writer from before versions made them: no version words, schema JSON without "layout"."""
    batch = encode_frame("spend", 1, ["customer_id"], frame, "feature_timestamp")
    old = RowSchema(batch.schema.keys, batch.schema.columns, layout=1)
    assert old.json == '{"keys":["customer_id"],"columns":[["amount","Float64"]]}'
    values = [v[:8] + old.id.to_bytes(4, "little") + v[20:] for v in batch.values]
    return old, batch.entities(), batch.timestamps.tolist(), values


_OLD_SQLITE_DDL = """
CREATE TABLE online_values (feature TEXT NOT NULL, major INTEGER NOT NULL, entity TEXT NOT NULL, ts INTEGER NOT NULL,
                            expires_at INTEGER, value BLOB NOT NULL, PRIMARY KEY (feature, major, entity)) WITHOUT ROWID;
CREATE TABLE online_schemas (feature TEXT NOT NULL, major INTEGER NOT NULL, schema_id INTEGER NOT NULL, definition TEXT NOT NULL,
                             PRIMARY KEY (feature, major, schema_id));
"""


def test_sqlite_file_from_before_versions_is_migrated_and_still_read(tmp_path):
    path = tmp_path / "old.db"
    old, entities, stamps, values = legacy_records(spend(["a", "b"], at(10, 10), [None, 2.0]))
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_SQLITE_DDL)
        conn.executemany("INSERT INTO online_values VALUES ('spend', 1, ?, ?, NULL, ?)", zip(entities, stamps, values))
        conn.execute("INSERT INTO online_schemas VALUES ('spend', 1, ?, ?)", (old.id, old.json))
    conn.close()
    store = SQLiteOnlineStore(path)
    assert read1(store, "spend", ids("a", "b"), ["amount"])["amount"].to_list() == [None, 2.0]
    # old rows order as version 0.0: the same partition again is a no-op, its correction replaces them
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(10, 10), [5.0, 5.0])) == WriteResult(0, 2)
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [1.0]), version="1.0.1") == WriteResult(1, 0)
    assert read1(store, "spend", ids("a", "b"), ["amount"])["amount"].to_list() == [1.0, 2.0]  # both layouts in one read
    store.close()
    assert SQLiteOnlineStore(path).write("spend", 1, ["customer_id"], spend(["b"], at(10), [3.0]), version="1.0.1").written == 1


def test_redis_records_from_before_versions_are_read_and_order_as_version_0_0(redis_url):
    import redis

    prefix = f"t{uuid.uuid4().hex[:10]}"
    # a's null bitmap sits where version words would be: read as a version, it would order far above 1.0.1
    old, entities, _, values = legacy_records(spend(["a", "b"], at(10, 10), [None, 2.0]))
    raw = redis.Redis.from_url(redis_url)
    raw.hset(f"{prefix}:spend:v1:__schema__", str(old.id), old.json)
    raw.mset({f"{prefix}:spend:v1:{e}": v for e, v in zip(entities, values)})
    raw.close()
    store = RedisOnlineStore(redis_url, key_prefix=prefix)
    assert read1(store, "spend", ids("a", "b"), ["amount"])["amount"].to_list() == [None, 2.0]
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(10, 10), [5.0, 5.0])) == WriteResult(0, 2)
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [1.0]), version="1.0.1") == WriteResult(1, 0)
    assert read1(store, "spend", ids("a", "b"), ["amount"])["amount"].to_list() == [1.0, 2.0]
    store.close()


def test_record_layout_holds_the_version_words():
    batch = encode_frame("spend", 3, ["customer_id"], spend(["a"], at(1), [1.5]), "feature_timestamp", version="3.7.258")
    record = batch.values[0]
    assert int.from_bytes(record[:8], "big", signed=True) == int(at(1)[0].timestamp() * 1_000_000)
    assert int.from_bytes(record[8:12], "little") == batch.schema.id and '"layout":2' in batch.schema.json
    assert (int.from_bytes(record[12:16], "big"), int.from_bytes(record[16:20], "big")) == (7, 258)
    assert batch.order == (7 << 32) | 258 and len(record) == 20 + 1 + 8  # + null bitmap + one Float64


# ---------------------------------------------------------------------------------------------
# PostgreSQL only


def _pg_store(conninfo: str, **kw):
    pytest.importorskip("psycopg_pool")
    from feature_pipelines.online import PostgresOnlineStore

    return PostgresOnlineStore(conninfo, **kw)


def test_postgres_table_layout_and_expired_rows_purged_by_the_next_ttl_write(postgres):
    import psycopg

    table = f"t{uuid.uuid4().hex[:10]}"
    store = _pg_store(postgres.conninfo, table=table)
    store.write("spend", 3, ["customer_id"], spend(["a", "__x"], at(1, 1), [1.0, 2.0]), ttl_seconds=0.2, version="3.2.1")
    with psycopg.connect(postgres.conninfo, autocommit=True) as raw:
        rows = raw.execute(f"SELECT feature, major, entity, ts, ver, expires_at, value FROM {table} ORDER BY entity").fetchall()
        micros = int(at(1)[0].timestamp() * 1_000_000)
        assert [r[:5] for r in rows] == [("spend", 3, "___x", micros, (2 << 32) | 1), ("spend", 3, "a", micros, (2 << 32) | 1)]
        assert all(r[5] is not None for r in rows) and bytes(rows[1][6])[12:20] == (2).to_bytes(4, "big") + (1).to_bytes(4, "big")
        assert raw.execute(f"SELECT feature, major, definition FROM {table}_schemas").fetchall() == [
            ("spend", 3, '{"keys":["customer_id"],"columns":[["amount","Float64"]],"layout":2}')]
        wait_for(lambda: read1(store, "spend", ids("a"), ["amount"], major=3)["amount"].to_list() == [None],
                 what="values written with ttl 0.2 s expiring", timeout=30, interval=0.1)
        assert raw.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)  # hidden from reads, still stored
        store.write("spend", 3, ["customer_id"], spend(["b"], at(1), [3.0]), ttl_seconds=600)
        assert raw.execute(f"SELECT entity FROM {table}").fetchall() == [("b",)]  # a TTL write deleted the expired rows
    store.close()
    with pytest.raises(StoreError, match=r"online store postgresql://postgres@127.0.0.1:\d+/postgres \(table t\w+\) is closed"):
        read1(store, "spend", ids("a"), ["amount"], major=3)


def test_postgres_password_is_used_and_never_shown():
    secret = "s3cr3t-" + uuid.uuid4().hex
    pytest.importorskip("psycopg_pool")
    from feature_pipelines_tests.postgres_server import postgres_server

    with postgres_server(password=secret) as pg:
        host = f"127.0.0.1:{pg.port}"
        by_kwarg = _pg_store(pg.conninfo, password=secret, table="auth")
        by_url = _pg_store(f"postgresql://postgres:{secret}@{host}/postgres", table="auth")
        by_keywords = _pg_store(f"host=127.0.0.1 port={pg.port} user=postgres password={secret} dbname=postgres", table="auth")
        assert by_kwarg.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0])).written == 1
        for s in (by_kwarg, by_url, by_keywords):
            assert read1(s, "spend", ids("a"), ["amount"])["amount"].to_list() == [1.0]
            assert secret not in repr(s) and secret not in str(s) and secret not in s.description
            assert s.description == f"postgresql://postgres@{host}/postgres (table auth)"

        wrong = _pg_store(pg.conninfo, password=secret + "-wrong", table="auth", pool_timeout=1)
        missing = _pg_store(pg.conninfo, table="auth", pool_timeout=1)
        for s in (wrong, missing):
            with pytest.raises(StoreError) as info:
                read1(s, "spend", ids("a"), ["amount"])
            assert f"postgresql://postgres@{host}/postgres rejected the credentials while reading spend v1" in str(info.value)
            assert secret not in "".join(traceback.format_exception(info.value))  # nor in the chained exceptions
        for s in (by_kwarg, by_url, by_keywords, wrong, missing):
            s.close()
    with pytest.raises(StoreError) as info:
        _pg_store(f"host=127.0.0.1 password={secret} dbname")  # malformed: the text is not echoed
    assert secret not in str(info.value) and "invalid PostgreSQL conninfo" in str(info.value)
    with pytest.raises(StoreError) as info:
        _pg_store(f"postgresql://postgres:{secret}@127.0.0.1:5432/postgres?bogus_option=1")
    assert secret not in str(info.value) and "postgresql://127.0.0.1:5432/postgres?bogus_option=1" in str(info.value)


def test_postgres_down_gives_a_clear_error_then_recovers():
    pytest.importorskip("psycopg_pool")
    from feature_pipelines_tests.postgres_server import postgres_server

    with postgres_server() as pg:
        store = _pg_store(pg.conninfo, table="down", pool_timeout=1)
        assert store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0])).written == 1
        pg.stop()
        where = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        with pytest.raises(StoreError, match=rf"online store {where} is unreachable: .*refused.* while writing spend v1"):
            store.write("spend", 1, ["customer_id"], spend(["a"], at(2), [2.0]))
        with pytest.raises(StoreError, match=rf"online store {where} is unreachable: .* while reading spend v1"):
            read1(store, "spend", ids("a"), ["amount"])
        pg.start()  # the same cluster again: the same store object reconnects, with nothing left over from the outage
        assert store.write("spend", 1, ["customer_id"], spend(["a"], at(2), [2.0])) == WriteResult(1, 0)
        assert read1(store, "spend", ids("a"), ["amount"])["amount"].to_list() == [2.0]
        store.close()


def test_postgres_pool_never_opens_more_than_max_connections(postgres):
    import psycopg

    name = f"pool{uuid.uuid4().hex[:8]}"
    store = _pg_store(f"{postgres.conninfo}?application_name={name}", table=name, max_connections=2, pool_timeout=30)
    store.write("spend", 1, ["customer_id"], spend([f"c{i}" for i in range(50)], [T0] * 50, [float(i) for i in range(50)]))
    seen, errors = [], []

    def reader(k: int) -> None:
        try:
            for _ in range(40):
                assert read1(store, "spend", ids(f"c{k}"), ["amount"])["amount"].to_list() == [float(k)]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    with psycopg.connect(postgres.conninfo, autocommit=True) as watch:
        def count() -> int:
            return watch.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (name,)).fetchone()[0]

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            seen.append(count())
        for t in threads:
            t.join()
        assert not errors
        assert max(seen) <= 2 and count() <= 2
        store.close()
        wait_for(lambda: count() == 0, what="the pool's connections closing with the store", timeout=30)


def test_postgres_settings_may_be_strings_and_sqlalchemy_urls(postgres):
    store = _pg_store(postgres.url, table="settings", max_connections="3", pool_timeout="2", statement_timeout="10")
    assert postgres.url.startswith("postgresql+psycopg2://")
    assert store.description == f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres (table settings)"
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0])).written == 1
    store.close()
    with pytest.raises(StoreError, match=r"setting max_connections must be an integer, got 'many'"):
        _pg_store(postgres.conninfo, max_connections="many")
    with pytest.raises(StoreError, match=r"setting table must be a plain identifier .* got 'a;drop'"):
        _pg_store(postgres.conninfo, table="a;drop")
    with pytest.raises(StoreError, match=r"setting pool_timeout must be a positive number of seconds, got -1"):
        _pg_store(postgres.conninfo, pool_timeout=-1)


# ---------------------------------------------------------------------------------------------
# DynamoDB only


def _dynamodb(moto, table: str | None = None, **kw):
    pytest.importorskip("boto3")
    from feature_pipelines.online import DynamoDBOnlineStore

    return DynamoDBOnlineStore(table or f"fp-{uuid.uuid4().hex[:10]}", region=REGION, endpoint_url=moto.url, **kw)


def _raw_dynamodb(moto):
    import boto3

    return boto3.client("dynamodb", region_name=REGION, endpoint_url=moto.url)


def test_dynamodb_table_is_created_on_demand_with_ttl_and_expired_items_are_hidden(moto, aws_env):
    store = _dynamodb(moto)
    store.write("spend", 3, ["customer_id"], spend(["a"], at(1), [1.0]), ttl_seconds=0.3, version="3.2.1")
    raw = _raw_dynamodb(moto)
    table = raw.describe_table(TableName=store.table)["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    ttl = raw.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert ttl["TimeToLiveStatus"] == "ENABLED" and ttl["AttributeName"] == "expires_at"
    item = raw.get_item(TableName=store.table, Key={"pk": {"S": "spend:v3:a"}})["Item"]
    assert item["ts"] == {"N": str(int(at(1)[0].timestamp() * 1e6))} and item["ver"] == {"N": str((2 << 32) | 1)}
    assert int(item["expires_at"]["N"]) * 1_000_000 >= int(item["exp_us"]["N"]) and item["v"]["B"][12:20] == bytes([0, 0, 0, 2, 0, 0, 0, 1])
    wait_for(lambda: read1(store, "spend", ids("a"), ["amount"], major=3)["amount"].to_list() == [None],
             what="an item written with ttl 0.3 s expiring", timeout=30, interval=0.1)
    assert "Item" in raw.get_item(TableName=store.table, Key={"pk": {"S": "spend:v3:a"}})  # DynamoDB deletes lazily: the read filtered it
    store.close()
    raw.create_table(TableName="fp-other-key", BillingMode="PAY_PER_REQUEST", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}])
    with pytest.raises(StoreError, match=r"DynamoDB table fp-other-key in us-east-1 has key \[\('id', 'HASH'\)\].*needs a partition key 'pk'"):
        _dynamodb(moto, "fp-other-key").write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]))
    raw.close()


def test_dynamodb_unprocessed_keys_are_retried_and_bounded(moto, aws_env):
    """moto, like DynamoDB, answers at most 16 MB per BatchGetItem and returns the rest as UnprocessedKeys."""
    store = _dynamodb(moto)
    n = 60
    big = pl.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "feature_timestamp": pl.Series([T0] * n, dtype=TS),
                        "blob": [f"{i:04d}" + "x" * 350_000 for i in range(n)]})  # 60 x 350 kB = 21 MB
    assert store.write("big", 1, ["customer_id"], big).written == n
    raw = _raw_dynamodb(moto)
    first = raw.batch_get_item(RequestItems={store.table: {"Keys": [{"pk": {"S": f"big:v1:c{i}"}} for i in range(n)]}})
    assert first["UnprocessedKeys"], "the test needs a BatchGetItem that leaves keys unprocessed"
    raw.close()
    out = read1(store, "big", ids(*[f"c{i}" for i in reversed(range(n))]), ["blob"])
    assert out["blob"].str.slice(0, 4).to_list() == [f"{i:04d}" for i in reversed(range(n))]
    stingy = _dynamodb(moto, store.table, unprocessed_retries=0)
    with pytest.raises(StoreError, match=rf"left \d+ of {n} keys unprocessed after 0 retries while reading big v1"):
        read1(stingy, "big", ids(*[f"c{i}" for i in range(n)]), ["blob"])
    store.close()
    stingy.close()


def test_dynamodb_rejected_credentials_and_missing_region(aws_env, monkeypatch):
    pytest.importorskip("boto3")
    from feature_pipelines.online import DynamoDBOnlineStore

    try:
        server = start_moto()
    except LookupError as e:
        pytest.skip(str(e))
    try:
        moto_set_auth(server, True)  # from now on moto checks keys against its IAM: "testing" is unknown
        store = DynamoDBOnlineStore("fp-auth", region=REGION, endpoint_url=server.url)
        with pytest.raises(StoreError) as info:
            store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]))
        assert f"online store dynamodb://us-east-1/fp-auth at {server.url} rejected the credentials while writing spend v1" in str(info.value)
        assert "testing" not in str(info.value).replace("fp-auth", "")  # the secret key is never shown
        store.close()
    finally:
        server.stop()
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    with pytest.raises(StoreError, match=r"DynamoDB online store 'fp-x' has no AWS region: pass region="):
        DynamoDBOnlineStore("fp-x")
    with pytest.raises(StoreError, match=r"setting max_connections must be an integer, got 'lots'"):
        DynamoDBOnlineStore("fp-x", region=REGION, max_connections="lots")
    assert DynamoDBOnlineStore("fp-x", region=REGION, max_connections="4", consistent_reads="true").description == "dynamodb://us-east-1/fp-x"


def test_postgres_tables_in_a_schema_and_a_role_that_may_not_create_tables(postgres):
    """Tables go in `schema`; once they exist, a role with only row privileges (no CREATE) can publish and serve."""
    import psycopg

    name = f"s{uuid.uuid4().hex[:8]}"
    owner = _pg_store(postgres.conninfo, schema=name, table="Online")
    with psycopg.connect(postgres.conninfo, autocommit=True) as raw:
        raw.execute(f"CREATE SCHEMA {name}")
        assert owner.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0])).written == 1
        assert raw.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1", (name,)).fetchall() == [
            ("Online",), ("Online_schemas",)]
        raw.execute(f"CREATE ROLE {name}_writer LOGIN")
        raw.execute(f"GRANT USAGE ON SCHEMA {name} TO {name}_writer")
        raw.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {name}."Online", {name}."Online_schemas" TO {name}_writer')
    writer = _pg_store(f"postgresql://{name}_writer@127.0.0.1:{postgres.port}/postgres", schema=name, table="Online")
    assert writer.description == f"postgresql://{name}_writer@127.0.0.1:{postgres.port}/postgres (table {name}.Online)"
    assert writer.write("spend", 1, ["customer_id"], spend(["a"], at(1), [2.0]), version="1.0.1", ttl_seconds=60).written == 1
    assert writer.write("spend", 1, ["customer_id"], spend(["b"], at(1), [3.0]).with_columns(n=pl.lit(1))).written == 1  # a new schema row
    assert read1(writer, "spend", ids("a", "b"), ["amount", "n"]).rows() == [(2.0, None, at(1)[0]), (3.0, 1, at(1)[0])]
    owner.close()
    writer.close()


@pytest.mark.parametrize("kind", ["postgres", "dynamodb"])
def test_a_forked_child_uses_its_own_connections(kind, request, tmp_path):
    """A serving process that forks workers after opening the store: each side keeps working on its own connections."""
    from feature_pipelines_tests.online_stores import make_store

    store = make_store(kind, request, tmp_path)
    store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(1, 1), [1.0, 2.0]))
    assert read1(store, "spend", ids("a"), ["amount"])["amount"].to_list() == [1.0]  # the parent's pool/client is in use
    results = multiprocessing.get_context("fork").Queue()

    def child() -> None:
        try:
            results.put(read1(store, "spend", ids("b", "a"), ["amount"])["amount"].to_list())
        except Exception as e:  # noqa: BLE001 - reported to the parent
            results.put(repr(e))

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    try:
        assert results.get(timeout=60) == [2.0, 1.0]
    finally:
        proc.join(timeout=60)
    assert proc.exitcode == 0
    assert read1(store, "spend", ids("b"), ["amount"])["amount"].to_list() == [2.0]  # the parent's connections are intact
    store.close()
