"""Surrogate keys: pinned digests, an independent re-implementation, and `with_surrogate_key`.

`reference_key` below re-implements the encoding documented in `feature_pipelines.keys` (version 1)
from the text alone, with `struct` and `xxhash`: b'fp-key-v1', then per field a tag byte (0x00 null,
0x01 value), for values the 8-byte big-endian UTF-8 length and the text; xxHash64 seed 0, 16
lowercase hex digits. It takes the canonical *texts*, so the tests also state the canonical text of
each Python type (strings as-is, ints in decimal, floats by repr, booleans 'true'/'false', dates ISO,
datetimes ISO-8601 in UTC with naive read as UTC).

The three literal digests in `test_pinned_digests` were computed once with `reference_key` and must
never change: a change would silently re-key every entity in every store.
"""

from __future__ import annotations

import struct
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import polars as pl
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_pipelines.errors import DataError
from feature_pipelines.keys import surrogate_key, with_surrogate_key

UTC = timezone.utc
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_key(texts: tuple[str | None, ...]) -> str:
    blob = b"fp-key-v1"
    for text in texts:
        if text is None:
            blob += b"\x00"
        else:
            raw = text.encode("utf-8")
            blob += b"\x01" + struct.pack(">Q", len(raw)) + raw
    return xxhash.xxh64(blob, seed=0).hexdigest()


# --- stability -------------------------------------------------------------------------------


def test_pinned_digests():
    assert surrogate_key(("Ann", "Lee", date(1990, 5, 1))) == "01587b435da3c7af"
    assert surrogate_key((None, "x")) == "184599b14da3592f"
    assert surrogate_key(("é", datetime(2024, 1, 5, 10), 42, True, 1.5)) == "1e5618f288a4d232"
    # ... and the literals are what the documented encoding gives.
    assert reference_key(("Ann", "Lee", "1990-05-01")) == "01587b435da3c7af"
    assert reference_key((None, "x")) == "184599b14da3592f"
    assert reference_key(("é", "2024-01-05T10:00:00+00:00", "42", "true", "1.5")) == "1e5618f288a4d232"


@SETTINGS
@given(st.lists(st.one_of(st.none(), st.text()), max_size=6))
def test_strings_and_nulls_follow_the_documented_encoding(values):
    key = surrogate_key(tuple(values))
    assert key == reference_key(tuple(values))
    assert len(key) == 16 and key == key.lower() and int(key, 16) >= 0
    assert surrogate_key(list(values)) == key  # a list is the same tuple


# --- no collisions by construction ------------------------------------------------------------


def test_separators_cannot_collide():
    assert surrogate_key(("a|b", "c")) != surrogate_key(("a", "b|c"))
    assert surrogate_key(("ab", "")) != surrogate_key(("a", "b"))
    assert surrogate_key(("a\x00", "b")) != surrogate_key(("a", "\x00b"))
    assert surrogate_key(("a", "b")) != surrogate_key(("ab",))


def test_null_empty_and_the_text_none_are_different():
    keys = {surrogate_key((None, "x")), surrogate_key(("", "x")), surrogate_key(("None", "x")), surrogate_key(("null", "x"))}
    assert len(keys) == 4
    assert surrogate_key((None,)) != surrogate_key(())
    assert surrogate_key((None, None)) != surrogate_key((None,))


def test_field_order_matters():
    assert surrogate_key(("a", "b")) != surrogate_key(("b", "a"))


# --- canonical text of each type ---------------------------------------------------------------


@pytest.mark.parametrize(
    "value,text",
    [
        (date(2024, 1, 5), "2024-01-05"),
        (datetime(2024, 1, 5, 10, 30), "2024-01-05T10:30:00+00:00"),  # naive is read as UTC
        (datetime(2024, 1, 5, 10, 30, tzinfo=UTC), "2024-01-05T10:30:00+00:00"),
        (datetime(2024, 1, 5, 11, 30, tzinfo=ZoneInfo("Europe/Paris")), "2024-01-05T10:30:00+00:00"),
        (datetime(2024, 1, 5, 5, 30, tzinfo=ZoneInfo("America/New_York")), "2024-01-05T10:30:00+00:00"),
        (datetime(2024, 1, 5, 10, 30, 0, 5), "2024-01-05T10:30:00.000005+00:00"),
        (42, "42"),
        (-7, "-7"),
        (10**20, "100000000000000000000"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (1e16, "1e+16"),
        (True, "true"),
        (False, "false"),
        ("héllo", "héllo"),
    ],
)
def test_canonical_text(value, text):
    assert surrogate_key((value,)) == reference_key((text,))
    assert surrogate_key(("k", value, None)) == reference_key(("k", text, None))


def test_same_instant_in_any_zone_gives_the_same_key():
    instant = datetime(2024, 3, 31, 0, 59, 59, tzinfo=UTC)  # just before the Paris DST switch
    zones = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
    keys = {surrogate_key((instant.astimezone(ZoneInfo(z)),)) for z in zones}
    keys.add(surrogate_key((instant.replace(tzinfo=None),)))
    keys.add(surrogate_key((datetime(2024, 3, 31, 3, 59, 59, tzinfo=timezone(timedelta(hours=3))),)))
    assert len(keys) == 1


def test_booleans_are_not_integers():
    assert surrogate_key((True,)) != surrogate_key((1,))
    assert surrogate_key((False,)) != surrogate_key((0,))


# --- with_surrogate_key -----------------------------------------------------------------------

_row = st.tuples(
    st.one_of(st.none(), st.sampled_from(["Ann", "ann", "", "None", "a|b", "é"])),
    st.one_of(st.none(), st.integers(-3, 3)),
    st.one_of(st.none(), st.sampled_from([date(1980, 1, 31), date(2000, 2, 29)])),
    st.one_of(st.none(), st.sampled_from([datetime(2024, 1, 5, 10), datetime(2024, 3, 31, 1)])),
    st.one_of(st.none(), st.booleans()),
).filter(lambda r: any(v is not None for v in r))
_SCHEMA = {"name": pl.String, "n": pl.Int64, "dob": pl.Date, "at": pl.Datetime("us"), "flag": pl.Boolean}


@SETTINGS
@given(rows=st.lists(_row, max_size=30), tz=st.sampled_from([None, "UTC", "Europe/Paris", "America/New_York"]))
def test_with_surrogate_key_equals_per_row_key(rows, tz):
    frame = pl.DataFrame(rows, schema=_SCHEMA, orient="row").with_row_index("row")
    if tz is not None:  # an aware column holding the same instants must give the same keys
        frame = frame.with_columns(pl.col("at").dt.replace_time_zone("UTC").dt.convert_time_zone(tz))
    columns = ["name", "n", "dob", "at", "flag"]
    out = with_surrogate_key(frame, "customer_id", columns)
    assert out.columns == [*frame.columns, "customer_id"]
    assert out.schema["customer_id"] == pl.String
    assert out.drop("customer_id").equals(frame)  # same rows, same order
    assert out["customer_id"].to_list() == [surrogate_key(r) for r in rows]


@SETTINGS
@given(rows=st.lists(_row, min_size=1, max_size=10), perm=st.randoms())
def test_key_of_a_row_does_not_depend_on_the_other_rows(rows, perm):
    shuffled = list(rows)
    perm.shuffle(shuffled)
    columns = list(_SCHEMA)
    keyed = dict(zip(rows, with_surrogate_key(pl.DataFrame(rows, schema=_SCHEMA, orient="row"), "k", columns)["k"]))
    for row, key in zip(shuffled, with_surrogate_key(pl.DataFrame(shuffled, schema=_SCHEMA, orient="row"), "k", columns)["k"]):
        assert keyed[row] == key


def test_with_surrogate_key_subset_and_order_of_columns():
    frame = pl.DataFrame({"first": ["Ann", "Bob"], "last": ["Lee", None], "other": [1, 2]})
    out = with_surrogate_key(frame, "k", ["last", "first"])
    assert out["k"].to_list() == [surrogate_key(("Lee", "Ann")), surrogate_key((None, "Bob"))]


@pytest.mark.parametrize("values", [[0.0, -0.0], [-0.0, 0.0], [float("nan"), 1.5, float("nan")], [1e16, 0.1, None]])
def test_float_columns_key_like_per_row(values):
    # Polars' unique()/join treat -0.0 and 0.0 as equal, but their canonical texts ('0.0' / '-0.0')
    # differ, so the per-row key differs too; a row's key must not depend on which came first.
    frame = pl.DataFrame({"x": values, "y": ["a"] * len(values)}, schema={"x": pl.Float64, "y": pl.String})
    out = with_surrogate_key(frame, "k", ["x", "y"])
    assert out["k"].to_list() == [surrogate_key(r) for r in frame.iter_rows()]


def test_missing_column_is_a_data_error():
    frame = pl.DataFrame({"first": ["Ann"], "last": ["Lee"]})
    with pytest.raises(DataError, match="dob"):
        with_surrogate_key(frame, "customer_id", ["first", "last", "dob"])


def test_all_identifying_columns_null_is_a_data_error():
    frame = pl.DataFrame({"first": ["Ann", None], "last": ["Lee", None]}, schema={"first": pl.String, "last": pl.String})
    with pytest.raises(DataError, match="customer_id"):
        with_surrogate_key(frame, "customer_id", ["first", "last"])


def test_some_null_identifying_columns_are_fine():
    frame = pl.DataFrame({"first": ["Ann", None], "last": [None, "Lee"]}, schema={"first": pl.String, "last": pl.String})
    out = with_surrogate_key(frame, "customer_id", ["first", "last"])
    assert out["customer_id"].to_list() == [surrogate_key(("Ann", None)), surrogate_key((None, "Lee"))]


def test_empty_frame_gets_an_empty_key_column():
    frame = pl.DataFrame(schema={"first": pl.String, "last": pl.String})
    out = with_surrogate_key(frame, "customer_id", ["first", "last"])
    assert out.height == 0 and out.schema["customer_id"] == pl.String
