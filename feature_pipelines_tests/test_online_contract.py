"""The online store contract, one suite for every store: SQLite, Redis, PostgreSQL and DynamoDB, each on a real backend.

No fakes: `online_stores` starts redis-server, PostgreSQL and moto's DynamoDB server on free loopback
ports for the session (SQLite uses a temp file). Each test gets its own namespace (file, key prefix,
table), so tests never see each other's values. Store-specific behaviour (layouts, credentials,
locking, pools) is in test_online_store.py.
"""

from __future__ import annotations

import random
import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from datetime import time as dtime

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from feature_pipelines.errors import StoreError
from feature_pipelines.online import OnlineRead, OnlineStore, WriteResult
from feature_pipelines_tests.online_stores import (  # noqa: F401 - fixtures
    KINDS,
    T0,
    TS,
    at,
    aws_env,
    ids,
    make_store,
    moto,
    postgres,
    read1,
    redis_url,
    scaled,
    spend,
    store,
    unreachable_store,
)
from feature_pipelines_tests.servers import wait_for

UTC = timezone.utc


def test_every_store_satisfies_the_protocol(store):
    assert isinstance(store, OnlineStore)
    assert isinstance(store.description, str) and store.description


def every_dtype_frame() -> pl.DataFrame:
    n = 5
    return pl.DataFrame({
        "customer_id": ["a", "b", "c", "d", "e"],
        "feature_timestamp": pl.Series(at(0, 1, 2, 3, 4), dtype=TS),
        "f64": pl.Series([1.5, None, float("nan"), -0.0, float("inf")], dtype=pl.Float64),
        "f32": pl.Series([1.25, None, -3.5, 0.0, 1e30], dtype=pl.Float32),
        "i8": pl.Series([-128, 127, None, 0, 1], dtype=pl.Int8),
        "i16": pl.Series([-32768, None, 32767, 0, 2], dtype=pl.Int16),
        "i32": pl.Series([-(2**31), 2**31 - 1, None, 0, 3], dtype=pl.Int32),
        "i64": pl.Series([-(2**63), 2**63 - 1, None, 0, 4], dtype=pl.Int64),
        "u8": pl.Series([0, 255, None, 1, 2], dtype=pl.UInt8),
        "u16": pl.Series([0, 65535, None, 1, 2], dtype=pl.UInt16),
        "u32": pl.Series([0, 2**32 - 1, None, 1, 2], dtype=pl.UInt32),
        "u64": pl.Series([0, 2**64 - 1, None, 1, 2], dtype=pl.UInt64),
        "flag": pl.Series([True, False, None, True, False], dtype=pl.Boolean),
        "name": pl.Series(["Ada", "", None, "héllo wörld ✓", "x" * 1000], dtype=pl.String),
        "cat": pl.Series(["p", "q", None, "p", "r"], dtype=pl.Categorical),
        "blob": pl.Series([b"\x00\x01", b"", None, b"\xff" * 3, b"z"], dtype=pl.Binary),
        "dob": pl.Series([date(1950, 1, 1), date(1, 1, 1), None, date(9999, 12, 31), date(1969, 12, 31)], dtype=pl.Date),
        "seen_at": pl.Series([datetime(2024, 1, 1, 12, tzinfo=UTC), None, datetime(1900, 1, 1, tzinfo=UTC), T0, T0], dtype=TS),
        "seen_ns": pl.Series([datetime(2024, 1, 1, 12, 0, 0, 123456), None, None, datetime(1970, 1, 1), datetime(2262, 1, 1)],
                             dtype=pl.Datetime("ns")),
        "seen_ms_ny": pl.Series([datetime(2024, 6, 1, 9, tzinfo=UTC)] * n, dtype=pl.Datetime("ms", "UTC")).dt.convert_time_zone("America/New_York"),
        "gap": pl.Series([timedelta(days=1), None, timedelta(microseconds=-5), timedelta(0), timedelta(hours=3)], dtype=pl.Duration("us")),
        "clock": pl.Series([dtime(12, 30), None, dtime(0, 0), dtime(23, 59, 59, 999999), dtime(1, 2, 3)], dtype=pl.Time),
        "nothing": pl.Series([None] * n, dtype=pl.Null),
    })


def test_round_trip_every_dtype_with_nulls(store):
    frame = every_dtype_frame()
    result = store.write("every", 1, ["customer_id"], frame)
    assert result == WriteResult(written=5, skipped=0)
    columns = [c for c in frame.columns if c not in ("customer_id", "feature_timestamp")]
    out = read1(store, "every", frame.select("customer_id"), columns)
    expected = frame.select(*columns, "feature_timestamp").with_columns(pl.col("cat").cast(pl.String))
    assert out.columns == [*columns, "feature_timestamp"]
    assert_frame_equal(out, expected)
    assert out["f64"].is_nan().to_list() == [False, None, True, False, False]  # NaN stays NaN, null stays null


def test_read_keeps_request_order_duplicates_unknown_and_null_keys(store):
    store.write("spend", 1, ["customer_id"], spend(["a", "b", "c"], at(1, 2, 3), [1.0, 2.0, 3.0]))
    out = read1(store, "spend", ids("c", "zz", None, "a", "c", "b", None), ["amount"])
    assert out.height == 7
    assert out["amount"].to_list() == [3.0, None, None, 1.0, 3.0, 2.0, None]
    assert out["feature_timestamp"].to_list() == [at(3)[0], None, None, at(1)[0], at(3)[0], at(2)[0], None]
    assert out.schema == pl.Schema({"amount": pl.Float64, "feature_timestamp": TS})


def test_read_of_only_missing_entities_and_of_no_entities(store):
    store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]))
    out = read1(store, "spend", ids("x", None), ["amount"])
    assert out.to_dicts() == [{"amount": None, "feature_timestamp": None}] * 2
    assert out.schema == pl.Schema({"amount": pl.Float64, "feature_timestamp": TS})
    empty = read1(store, "spend", ids(), ["amount"])
    assert empty.height == 0 and empty.columns == ["amount", "feature_timestamp"]


def test_several_reads_in_one_call(store):
    store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(1, 2), [1.0, 2.0]))
    store.write("visits", 3, ["customer_id"], pl.DataFrame({"customer_id": ["b"], "feature_timestamp": pl.Series(at(5), dtype=TS),
                                                             "n": pl.Series([7], dtype=pl.Int32)}))
    spent, visits = store.read([OnlineRead("spend", 1, ids("b", "a"), ["amount"]), OnlineRead("visits", 3, ids("a", "b"), ["n"])])
    assert spent["amount"].to_list() == [2.0, 1.0]
    assert visits["n"].to_list() == [None, 7] and visits["n"].dtype == pl.Int32
    assert store.read([]) == []


def test_large_read_is_correct(store):
    # beyond every internal chunk size (SQLite IN lists, Redis MGET chunks, the Python key path; DynamoDB's 100-key batches)
    n = scaled(store, 120_000, dynamodb=1_234)
    entities = [f"c{i}" for i in range(n)]
    store.write("big", 1, ["customer_id"], spend(entities, [T0] * n, [float(i) for i in range(n)]))
    order = list(range(n))
    random.Random(1).shuffle(order)
    out = read1(store, "big", ids(*[entities[i] for i in order]), ["amount"])
    assert out["amount"].to_list() == [float(i) for i in order]


def test_composite_keys_separator_collisions_and_reserved_names(store):
    frame = pl.DataFrame({
        "a": ["a|b", "a", "1:a", "", "__schema__", "_schema__", "__x"],
        "b": ["c", "b|c", "b", "1:a", "__schema__", "x", "__x"],
        "feature_timestamp": pl.Series([T0] * 7, dtype=TS),
        "v": [1, 2, 3, 4, 5, 6, 7],
    })
    assert store.write("pairs", 1, ["a", "b"], frame) == WriteResult(written=7, skipped=0)
    asked = pl.DataFrame({"a": ["a", "a|b", "", "__x", "a", None, "_schema__", "__schema__", "1:a"],
                          "b": ["b|c", "c", "1:a", "__x", "b", "b", "x", "__schema__", "b"]})
    assert read1(store, "pairs", asked, ["v"])["v"].to_list() == [2, 1, 4, 7, None, None, 6, 5, 3]

    single = pl.DataFrame({"k": ["__schema__", "_schema__", "__features__", "___schema__", "x:v1:y"],
                           "feature_timestamp": pl.Series([T0] * 5, dtype=TS), "v": [1, 2, 3, 4, 5]})
    assert store.write("reserved", 1, ["k"], single).written == 5
    out = read1(store, "reserved", pl.DataFrame({"k": ["x:v1:y", "___schema__", "__features__", "_schema__", "__schema__"]}), ["v"])
    assert out["v"].to_list() == [5, 4, 3, 2, 1]


def test_key_columns_are_found_by_name_and_integer_keys_match_across_widths(store):
    frame = pl.DataFrame({"shop": pl.Series([1, 2, 3], dtype=pl.Int64), "day": [date(2024, 1, 1)] * 3, "flag": [True, False, True],
                          "feature_timestamp": pl.Series([T0] * 3, dtype=TS), "v": [10.0, 20.0, 30.0]})
    store.write("shops", 1, ["shop", "day", "flag"], frame)
    asked = pl.DataFrame({"flag": [False, True, True], "extra": ["ignored"] * 3, "day": [date(2024, 1, 1)] * 3,
                          "shop": pl.Series([2, 3, 2], dtype=pl.Int32)})
    assert read1(store, "shops", asked, ["v"])["v"].to_list() == [20.0, 30.0, None]
    with pytest.raises(StoreError, match=r"lacks key column\(s\) \['day'\].*keyed by \['shop', 'day', 'flag'\]"):
        read1(store, "shops", asked.drop("day"), ["v"])


def test_newer_wins_older_and_equal_are_skipped(store):
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(10, 10), [1.0, 2.0])) == WriteResult(2, 0)
    # re-publishing the same partition is a no-op
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(10, 10), [9.0, 9.0])) == WriteResult(0, 2)
    # an old backfill never overwrites fresher values; a new entity in it is written
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b", "c"], at(5, 9, 1), [5.0, 5.0, 5.0])) == WriteResult(1, 2)
    # strictly newer replaces, by one microsecond too
    newer = [T0 + timedelta(seconds=10, microseconds=1), T0 + timedelta(seconds=11)]
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], newer, [3.0, 4.0])) == WriteResult(2, 0)
    out = read1(store, "spend", ids("a", "b", "c"), ["amount"])
    assert out["amount"].to_list() == [3.0, 4.0, 5.0]
    assert out["feature_timestamp"].to_list() == [*newer, at(1)[0]]


def test_corrections_same_timestamp_newer_version_replaces(store):
    """A PATCH version re-publishes the same partition with other values: it reaches serving; nothing older does."""
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(10, 10), [1.0, 2.0]), version="1.0.0") == WriteResult(2, 0)
    # re-publishing the same version is a no-op
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(10, 10), [9.0, 9.0]), version="1.0.0") == WriteResult(0, 2)
    # a correction (same timestamp, newer PATCH) replaces; an entity the correction leaves out keeps its value
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [1.5]), version="1.0.1") == WriteResult(1, 0)
    # an older version of the same row never comes back, nor does an unversioned (0.0) write
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(10, 10), [7.0, 7.0]), version="1.0.0") == WriteResult(0, 2)
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [7.0])) == WriteResult(0, 1)
    out = read1(store, "spend", ids("a", "b"), ["amount"])
    assert out["amount"].to_list() == [1.5, 2.0] and out["feature_timestamp"].to_list() == at(10, 10)
    # MINOR orders before PATCH: 1.1.0 > 1.0.9 (a MINOR bump re-publishes its partitions), and numerically: 1.10.0 > 1.9.0
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [2.0]), version="1.0.9").written == 1
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [3.0]), version="1.1.0").written == 1
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [4.0]), version="1.10.0").written == 1
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [5.0]), version="1.9.0").written == 0
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(10), [6.0]), version="1.10.0").written == 0
    assert read1(store, "spend", ids("a"), ["amount"])["amount"].to_list() == [4.0]


def test_an_older_timestamp_never_wins_whatever_its_version(store):
    store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(10, 10), [1.0, 2.0]), version="1.0.0")
    # an old partition re-published from a newer version: still older data
    assert store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(9, 9), [5.0, 5.0]), version="1.2.3") == WriteResult(0, 2)
    # a newer timestamp from an older version (or none) wins: the timestamp decides first
    assert store.write("spend", 1, ["customer_id"], spend(["a"], at(11), [3.0])) == WriteResult(1, 0)
    assert store.write("spend", 1, ["customer_id"], spend(["b"], at(11), [4.0]), version="1.0.0") == WriteResult(1, 0)
    out = read1(store, "spend", ids("a", "b"), ["amount"])
    assert out["amount"].to_list() == [3.0, 4.0] and out["feature_timestamp"].to_list() == at(11, 11)


@pytest.mark.parametrize("version, message", [
    ("2.0.0", r"version '2.0.0' belongs to MAJOR 2, not 1"),
    ("1.0", r"version must be a semantic version 'MAJOR.MINOR.PATCH'.*got '1.0'"),
    ("1.0.0-rc1", r"got '1.0.0-rc1'"),
    ("v1.0.0", r"got 'v1.0.0'"),
    (100, r"got 100"),
    ("1.2147483648.0", r"MINOR or PATCH above 2147483647"),
])
def test_a_malformed_version_is_refused_and_changes_nothing(store, version, message):
    store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]), version="1.0.0")
    with pytest.raises(StoreError, match=message):
        store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [2.0]), version=version)
    assert read1(store, "spend", ids("a"), ["amount"])["amount"].to_list() == [1.0]


def test_timestamps_before_1970_and_far_future_compare_correctly(store):
    old = datetime(1960, 1, 1, tzinfo=UTC)
    store.write("spend", 1, ["customer_id"], spend(["a"], [old], [1.0]))
    assert store.write("spend", 1, ["customer_id"], spend(["a"], [old - timedelta(microseconds=1)], [0.0])).written == 0
    assert store.write("spend", 1, ["customer_id"], spend(["a"], [old + timedelta(microseconds=1)], [2.0])).written == 1
    far = datetime(9000, 1, 1, tzinfo=UTC)  # beyond 2^53 µs: a double could not tell these apart
    assert store.write("spend", 1, ["customer_id"], spend(["a"], [far], [3.0])).written == 1
    assert store.write("spend", 1, ["customer_id"], spend(["a"], [far + timedelta(microseconds=1)], [4.0])).written == 1
    assert store.write("spend", 1, ["customer_id"], spend(["a"], [far], [5.0])).written == 0
    assert read1(store, "spend", ids("a"), ["amount"])["amount"].to_list() == [4.0]


def test_duplicate_entity_in_one_frame_newest_row_wins(store):
    frame = spend(["a", "a", "b", "a", "b"], at(3, 7, 1, 5, 1), [3.0, 7.0, 1.0, 5.0, 1.5])
    assert store.write("spend", 1, ["customer_id"], frame) == WriteResult(written=2, skipped=3)
    out = read1(store, "spend", ids("a", "b"), ["amount"])
    assert out["amount"].to_list() == [7.0, 1.5]  # tie on b: the later row of the frame


def test_major_versions_never_mix(store):
    store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(1, 1), [1.0, 2.0]))
    v2 = pl.DataFrame({"customer_id": ["a"], "feature_timestamp": pl.Series(at(0), dtype=TS), "amount": ["one"]})
    assert store.write("spend", 2, ["customer_id"], v2).written == 1  # an older timestamp, but another major
    one = read1(store, "spend", ids("a", "b"), ["amount"], major=1)
    two = read1(store, "spend", ids("a", "b"), ["amount"], major=2)
    assert one["amount"].to_list() == [1.0, 2.0] and one["amount"].dtype == pl.Float64
    assert two["amount"].to_list() == ["one", None] and two["amount"].dtype == pl.String
    with pytest.raises(StoreError, match=r"spend v3 was never written.*versions of 'spend' in this store: v1, v2"):
        read1(store, "spend", ids("a"), ["amount"], major=3)


def test_columns_added_within_a_major_and_dtype_changes_refused(store):
    store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(1, 1), [1.0, 2.0]))
    wider = spend(["b"], at(2), [20.0]).with_columns(visits=pl.lit(3, pl.Int64))
    assert store.write("spend", 1, ["customer_id"], wider).written == 1
    out = read1(store, "spend", ids("a", "b"), ["amount", "visits"])
    assert out.to_dicts() == [{"amount": 1.0, "visits": None, "feature_timestamp": at(1)[0]},
                              {"amount": 20.0, "visits": 3, "feature_timestamp": at(2)[0]}]
    # records of three schemas, two with strings, read together in one batch
    store.write("spend", 1, ["customer_id"], spend(["c", "d"], at(3, 3), [30.0, None]).with_columns(city=pl.Series(["Oslo", None])))
    out = read1(store, "spend", ids("d", "a", "x", "c", "b"), ["city", "visits", "amount"])
    assert out.rows() == [(None, None, None, at(3)[0]), (None, None, 1.0, at(1)[0]), (None, None, None, None),
                          ("Oslo", None, 30.0, at(3)[0]), (None, 3, 20.0, at(2)[0])]
    assert out.schema == pl.Schema({"city": pl.String, "visits": pl.Int64, "amount": pl.Float64, "feature_timestamp": TS})
    changed = spend(["a"], at(9), [1.0]).with_columns(pl.col("amount").cast(pl.Float32))
    with pytest.raises(StoreError, match=r"'amount' is stored as Float64, the frame has Float32.*MAJOR"):
        store.write("spend", 1, ["customer_id"], changed)
    rekeyed = spend(["a"], at(9), [1.0], key="account_id")
    with pytest.raises(StoreError, match=r"keyed by \['customer_id'\], this frame by \['account_id'\]"):
        store.write("spend", 1, ["account_id"], rekeyed)
    assert read1(store, "spend", ids("a"), ["amount"])["amount"].to_list() == [1.0]


def test_ttl_expires_values_of_that_feature_only(store):
    # Readable inside a (long) ttl ...
    store.write("fast", 1, ["customer_id"], spend(["a", "b"], at(1, 1), [1.0, 2.0]), ttl_seconds=600)
    store.write("slow", 1, ["customer_id"], spend(["a", "b"], at(1, 1), [10.0, 20.0]))
    assert read1(store, "fast", ids("a", "b"), ["amount"])["amount"].to_list() == [1.0, 2.0]
    # ... and gone once a short one has passed (newer values replace the stored ones, with their own ttl).
    store.write("fast", 1, ["customer_id"], spend(["a", "b"], at(2, 2), [1.0, 2.0]), ttl_seconds=0.3)

    def expired():
        fast = read1(store, "fast", ids("a", "b"), ["amount"])
        return fast if fast["amount"].null_count() == 2 else None

    fast = wait_for(expired, what="values written with ttl 0.3 s expiring", timeout=30, interval=0.1)
    assert fast["amount"].to_list() == [None, None] and fast["feature_timestamp"].to_list() == [None, None]
    assert fast.schema == pl.Schema({"amount": pl.Float64, "feature_timestamp": TS})  # the schema outlives the values
    assert read1(store, "slow", ids("a", "b"), ["amount"])["amount"].to_list() == [10.0, 20.0]
    # an expired value is gone: even the same (or an older) timestamp writes again
    assert store.write("fast", 1, ["customer_id"], spend(["a"], at(0), [0.5]), ttl_seconds=60) == WriteResult(1, 0)
    assert read1(store, "fast", ids("a", "b"), ["amount"])["amount"].to_list() == [0.5, None]


def test_ttl_counts_from_the_write_and_a_skipped_write_does_not_refresh(store):
    store.write("fast", 1, ["customer_id"], spend(["a", "b"], at(1, 1), [1.0, 2.0]), ttl_seconds=3)
    # a is refreshed by a newer value (with a long ttl); b's re-publish of the same timestamp is skipped
    # and does not extend b's first ttl, so b expires and a stays.
    assert store.write("fast", 1, ["customer_id"], spend(["a", "b"], at(2, 1), [1.5, 2.0]), ttl_seconds=600) == WriteResult(1, 1)
    wait_for(lambda: read1(store, "fast", ids("a", "b"), ["amount"])["amount"].to_list() == [1.5, None],
             what="b expiring at its first ttl while the refreshed a stays", timeout=30, interval=0.1)


def test_unknown_column_names_it_and_lists_stored_ones(store):
    store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]).with_columns(visits=pl.lit(1)))
    with pytest.raises(StoreError, match=r"spend v1 .* has no column\(s\) \['amount_sum_90d'\]; stored columns: \['amount', 'visits'\]"):
        read1(store, "spend", ids("a"), ["amount", "amount_sum_90d"])


def test_never_written_feature_raises(store):
    with pytest.raises(StoreError, match=r"nobody v1 was never written to online store .*publish it first"):
        read1(store, "nobody", ids("a"), ["x"])


def test_requesting_a_column_twice_is_an_error(store):
    store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]))
    with pytest.raises(StoreError, match=r"column\(s\) \['amount'\] requested more than once"):
        read1(store, "spend", ids("a"), ["amount", "amount"])


def test_a_frame_without_value_columns_or_rows(store):
    only_keys = pl.DataFrame({"customer_id": ["a"], "feature_timestamp": pl.Series(at(1), dtype=TS)})
    assert store.write("seen", 1, ["customer_id"], only_keys) == WriteResult(1, 0)
    assert read1(store, "seen", ids("b", "a"), [])["feature_timestamp"].to_list() == [None, at(1)[0]]
    assert store.write("seen", 1, ["customer_id"], only_keys.clear()) == WriteResult(0, 0)


def test_requesting_feature_timestamp_returns_it_once(store):
    store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]))
    out = read1(store, "spend", ids("a"), ["feature_timestamp", "amount"])
    assert out.columns == ["amount", "feature_timestamp"]
    assert read1(store, "spend", ids("a"), [])["feature_timestamp"].to_list() == at(1)


BAD_INPUTS = [
    ("missing key", lambda f: f.drop("customer_id"), {}, r"lacks column\(s\) \['customer_id'\]"),
    ("missing timestamp", lambda f: f.drop("feature_timestamp"), {}, r"lacks column\(s\) \['feature_timestamp'\]"),
    ("string timestamp", lambda f: f.with_columns(pl.col("feature_timestamp").cast(pl.String)), {}, r"has dtype String; expected Datetime"),
    ("null key", lambda f: f.with_columns(customer_id=pl.when(pl.col("amount") > 50).then(None).otherwise(pl.col("customer_id"))),
     {}, r"null values in key/timestamp column\(s\) \{'customer_id': 1\}"),
    ("null timestamp", lambda f: f.with_columns(feature_timestamp=pl.when(pl.col("amount") > 50).then(None).otherwise(pl.col("feature_timestamp"))),
     {}, r"\{'feature_timestamp': 1\}"),
    ("list column", lambda f: f.with_columns(tags=pl.lit([1, 2])), {}, r"column 'tags' has dtype List\(Int64\).*supported:"),
    ("float key", lambda f: f.with_columns(pl.col("amount").alias("customer_id")), {}, r"key column 'customer_id' has dtype Float64"),
    ("value named feature_timestamp", lambda f: f.rename({"feature_timestamp": "ts"}).with_columns(feature_timestamp=pl.lit(1.0)),
     {"timestamp": "ts"}, r"'feature_timestamp' would clash"),
    ("negative ttl", lambda f: f, {"ttl_seconds": -1}, r"ttl_seconds must be a positive number"),
    ("not a frame", lambda f: f.to_dicts(), {}, r"expected a polars DataFrame, got list"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_and_changes_nothing(store, case):
    _, change, kwargs, message = case
    store.write("spend", 1, ["customer_id"], spend(["a", "b"], at(1, 1), [1.0, 2.0]))
    newer = spend(["a", "b"], at(5, 5), [10.0, 99.0])
    with pytest.raises(StoreError, match=message):
        store.write("spend", 1, ["customer_id"], change(newer), **kwargs)
    out = read1(store, "spend", ids("a", "b"), ["amount"])
    assert out["amount"].to_list() == [1.0, 2.0] and out["feature_timestamp"].to_list() == at(1, 1)


@pytest.mark.parametrize("feature, major", [("a:b", 1), ("", 1), ("spend", -1), ("spend", True), ("spend", "1")])
def test_invalid_feature_names_and_majors(store, feature, major):
    with pytest.raises(StoreError, match=r"invalid (feature name|MAJOR version)"):
        store.write(feature, major, ["customer_id"], spend(["a"], at(1), [1.0]))
    with pytest.raises(StoreError, match=r"invalid (feature name|MAJOR version)"):
        store.read([OnlineRead(feature, major, ids("a"), [])])


def test_naive_and_other_unit_timestamps_are_utc_microseconds(store):
    frame = pl.DataFrame({"customer_id": ["a", "b"], "ts": pl.Series([datetime(2024, 1, 5, 1), datetime(2024, 1, 5, 2)], dtype=pl.Datetime("ns")),
                          "v": [1, 2]})
    store.write("spend", 1, ["customer_id"], frame, timestamp="ts")
    out = read1(store, "spend", ids("a", "b"), ["v"])
    assert out["feature_timestamp"].to_list() == [datetime(2024, 1, 5, 1, tzinfo=UTC), datetime(2024, 1, 5, 2, tzinfo=UTC)]
    aware = frame.with_columns(pl.col("ts").dt.replace_time_zone("Europe/Paris") + pl.duration(hours=1))  # 02:00 Paris (CET) = 01:00 UTC
    assert store.write("spend", 1, ["customer_id"], aware.head(1), timestamp="ts").written == 0  # same instant: not newer


def test_many_random_entities_match_a_dict_oracle(store):
    rng = np.random.default_rng(7)
    n = scaled(store, 10_000, dynamodb=400)
    oracle: dict[str, tuple] = {}
    for round_ in range(3):
        ent = [f"e{i}" for i in rng.integers(0, n, n)]
        ts = [T0 + timedelta(microseconds=int(x)) for x in rng.integers(0, 10_000_000, n)]
        x = [None if rng.random() < 0.1 else float(v) for v in rng.normal(size=n)]
        s = [None if rng.random() < 0.1 else "s" * int(k) + "é" for k in rng.integers(0, 20, n)]
        k = [None if rng.random() < 0.1 else int(v) for v in rng.integers(-(2**40), 2**40, n)]
        frame = pl.DataFrame({"customer_id": ent, "feature_timestamp": pl.Series(ts, dtype=TS), "x": pl.Series(x, dtype=pl.Float64),
                              "s": pl.Series(s, dtype=pl.String), "k": pl.Series(k, dtype=pl.Int64)})
        written = 0
        newest: dict[str, tuple] = {}
        for row in zip(ent, ts, x, s, k):  # within the frame: newest wins, ties to the later row
            if row[0] not in newest or row[1] >= newest[row[0]][1]:
                newest[row[0]] = row
        for e, row in newest.items():
            if e not in oracle or row[1] > oracle[e][1]:
                oracle[e] = row
                written += 1
        assert store.write("rand", 1, ["customer_id"], frame) == WriteResult(written, n - written), f"round {round_}"
    asked = [f"e{i}" for i in rng.integers(0, n + 500, 12_000)]  # with unknown entities and duplicates
    out = read1(store, "rand", ids(*asked), ["s", "x", "k"])
    expected = [(oracle[e][3], oracle[e][2], oracle[e][4], oracle[e][1]) if e in oracle else (None, None, None, None) for e in asked]
    assert out.rows() == expected


def test_reads_from_several_threads(store):
    store.write("spend", 1, ["customer_id"], spend([f"c{i}" for i in range(100)], [T0] * 100, [float(i) for i in range(100)]))
    errors = []

    def reader(k: int) -> None:
        try:
            for _ in range(50):
                assert read1(store, "spend", ids(f"c{k}"), ["amount"])["amount"].to_list() == [float(k)]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors



def test_prefix_names_the_returned_values(store):
    """OnlineRead.prefix names value columns `<prefix><column>` on every decode path (found, missing, none found)."""
    frame = every_dtype_frame()
    store.write("every", 1, ["customer_id"], frame)
    columns = [c for c in frame.columns if c not in ("customer_id", "feature_timestamp")]
    keys = pl.concat([frame.select("customer_id"), pl.DataFrame({"customer_id": ["nobody"]}, schema=frame.select("customer_id").schema)])
    plain, named = store.read([OnlineRead("every", 1, keys, columns), OnlineRead("every", 1, keys, columns, prefix="every__")])
    assert named.columns == [f"every__{c}" for c in columns] + ["feature_timestamp"]
    assert_frame_equal(named.rename(lambda c: c.removeprefix("every__")), plain)
    (none,) = store.read([OnlineRead("every", 1, pl.DataFrame({"customer_id": ["x"]}, schema=keys.schema), columns[:2], prefix="p_")])
    assert none.columns == [f"p_{c}" for c in columns[:2]] + ["feature_timestamp"] and none.null_count().row(0) == (1, 1, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_or_closed_store_raises_store_error(kind, request, tmp_path):
    store = unreachable_store(kind, request, tmp_path)
    expected = r"is closed" if kind == "sqlite" else r"is unreachable: .*while (writing|reading) spend v1"
    with pytest.raises(StoreError, match=expected):
        store.write("spend", 1, ["customer_id"], spend(["a"], at(1), [1.0]), version="1.0.0")
    with pytest.raises(StoreError, match=expected):
        read1(store, "spend", ids("a"), ["amount"])
    store.close()


# ---------------------------------------------------------------------------------------------
# property: any interleaving of writes equals a dict model of newer-wins


write_batches = st.lists(
    st.tuples(st.sampled_from([None, (0, 0), (0, 1), (1, 0), (1, 1)]),  # the batch's (MINOR, PATCH); None = no version
              st.lists(st.tuples(st.sampled_from(["a", "b", "c", "__d", "e|f"]), st.integers(-3, 3),
                                 st.one_of(st.none(), st.floats(allow_nan=False))), min_size=0, max_size=8)),
    min_size=1, max_size=6)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "dynamodb"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=write_batches)
def test_interleaved_writes_match_newer_wins_model(kind, batches, request, tmp_path):
    """Any sequence of versioned batches ends where a dict model of (timestamp, MINOR, PATCH)-wins ends."""
    _check_interleaved(kind, batches, request, tmp_path)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # moto: ~0.4 s an example
@given(batches=write_batches)
def test_interleaved_writes_match_newer_wins_model_dynamodb(batches, request, tmp_path):
    _check_interleaved("dynamodb", batches, request, tmp_path)


def _check_interleaved(kind, batches, request, tmp_path) -> None:
    store = make_store(kind, request, tmp_path, name=f"prop{kind}")
    feature = f"f{uuid.uuid4().hex[:12]}"  # a fresh feature per example
    model: dict[str, tuple[tuple[int, int, int], float | None]] = {}
    try:
        for version, batch in batches:
            frame = pl.DataFrame({"customer_id": [e for e, _, _ in batch], "feature_timestamp": pl.Series([T0 + timedelta(hours=t) for _, t, _ in batch], dtype=TS),
                                  "v": pl.Series([v for _, _, v in batch], dtype=pl.Float64)},
                                 schema={"customer_id": pl.String, "feature_timestamp": TS, "v": pl.Float64})
            minor, patch = version or (0, 0)
            newest: dict[str, tuple[tuple[int, int, int], float | None]] = {}
            for e, t, v in batch:
                if e not in newest or t >= newest[e][0][0]:
                    newest[e] = ((t, minor, patch), v)
            written = 0
            for e, (order, v) in newest.items():
                if e not in model or order > model[e][0]:
                    model[e] = (order, v)
                    written += 1
            text = None if version is None else f"1.{minor}.{patch}"
            assert store.write(feature, 1, ["customer_id"], frame, version=text) == WriteResult(written, len(batch) - written)
            asked = ["a", "b", "c", "__d", "e|f", "zz"]
            out = read1(store, feature, ids(*asked), ["v"])
            assert out["v"].to_list() == [model[e][1] if e in model else None for e in asked]
            assert out["feature_timestamp"].to_list() == [T0 + timedelta(hours=model[e][0][0]) if e in model else None for e in asked]
    except StoreError as e:
        assert not model and "never written" in str(e)  # only empty batches so far: nothing to read yet
    finally:
        store.close()
