"""Nothing changes silently (issue 13): the store's version changes exactly when the data does.

* Content hashes cover logical values: a partition computed alone and inside a range hashes the same,
  however its buffers look, so rebuilding it is "unchanged", never a spurious PATCH.
* Bad input is an error that changes nothing: null event timestamps, and an empty result replacing
  a partition that holds rows.
* Store files are shared like any other file: their mode follows the umask.

Everything runs on real files with the real engine and store (README "Semantics" states the rules).
"""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from feature_pipelines.engine import PolarsEngine
from feature_pipelines.errors import DataError
from feature_pipelines.spec.entity import Entity
from feature_pipelines.spec.feature import Feature
from feature_pipelines.spec.metrics import Latest, Rolling
from feature_pipelines.spec.source import Source
from feature_pipelines.store import LocalStore
from feature_pipelines.store.versioned import content_hash
from feature_pipelines_tests.test_engine_oracle import build_feature, cases, write_source

KEYS = ["customer_id"]
TS = "feature_timestamp"
CUSTOMER = Entity("customer", join_key="customer_id")
EVENTS = {"customer_id": pl.String, "ts": pl.Datetime("us"), "amount": pl.Float64}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones included) mapped to its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def events_source(path: Path, rows: list[dict], schema=EVENTS) -> Source:
    pl.DataFrame(rows, schema=schema).write_parquet(path)
    return Source(str(path), timestamp="ts")


def write(store: LocalStore, feature: Feature, frames: dict[str, pl.DataFrame], **kw):
    return store.write_partitions(feature.name, frames, keys=feature.join_keys, timestamp=TS, config_hash=feature.config_hash, **kw)


# ---- 1. content hashes of logical values ------------------------------------------------------


def test_rematerializing_one_partition_of_a_range_changes_nothing(tmp_path):
    """The issue's case: windows 1d and 36h, two events, three partitions, then the middle one alone."""
    source = events_source(tmp_path / "events.parquet", [
        {"customer_id": "a", "ts": datetime(2024, 1, 3, 20), "amount": 1.0},
        {"customer_id": "b", "ts": datetime(2024, 1, 1, 5), "amount": 2.0},
    ])
    feature = Feature(name="spend", entities=[CUSTOMER], source=source, granularity="daily", start="2024-01-01",
                      metrics=[Rolling(["1d", "36h"], {"amount": ["sum"]})])
    store = LocalStore(tmp_path / "store")
    keys = ["2024-01-01", "2024-01-02", "2024-01-03"]
    write(store, feature, PolarsEngine().compute(feature, keys))
    before = tree(tmp_path / "store")
    (result,) = write(store, feature, PolarsEngine().compute(feature, ["2024-01-02"]))
    assert (result.version, result.bump) == ("1.0.0", "unchanged")
    assert store.versions("spend") == ["1.0.0"]
    assert tree(tmp_path / "store") == before


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_partition_alone_hashes_as_inside_its_range(data):
    """Random features (dense and unaligned windows, Latest, rows; hourly to monthly; nulls and NaNs):
    every partition computed alone has the content hash it has inside the range, and rewriting it
    into the store that holds the range changes no version."""
    kind = data.draw(st.sampled_from(["rolling", "latest", "rows"]), label="kind")
    path = data.draw(st.sampled_from(["dense", "time"]), label="path") if kind == "rolling" else None
    case = data.draw(cases(kind, path), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        write_source(case, Path(tmp) / "events.parquet")
        feature = build_feature(case, Path(tmp) / "events.parquet")
        together = PolarsEngine().compute(feature, case.keys)
        store = LocalStore(Path(tmp) / "store")
        write(store, feature, together)
        for key in case.keys:
            alone = PolarsEngine().compute(feature, [key])
            assert content_hash(alone[key]) == content_hash(together[key]), key
            (result,) = write(store, feature, alone)
            assert result.bump == "unchanged", (key, result)
        assert store.versions("f") == ["1.0.0"]


def _with_garbage_under_nulls(values: list, fill, dtype) -> pl.Series:
    """`values` (None = null) built from a buffer that holds `fill` under the null slots."""
    dense = pl.Series("x", [fill if v is None else v for v in values], dtype=dtype)
    return dense.to_frame().select(pl.when(pl.Series([v is not None for v in values])).then(pl.col("x"))).to_series()


def _raw(series: pl.Series) -> bytes:
    """The Arrow value buffer of a series as polars holds it (not canonicalised)."""
    array = series.rechunk().to_arrow()
    return bytes(array.buffers()[1])[array.offset * 8 : (array.offset + len(array)) * 8]


def test_equal_floats_with_different_bytes_under_nulls_hash_equal():
    values = [1.5, None, -2.0, None]
    zeros, nans = _with_garbage_under_nulls(values, 0.0, pl.Float64), _with_garbage_under_nulls(values, math.nan, pl.Float64)
    assert _raw(zeros) != _raw(nans)  # the buffers really differ; only the values are equal
    assert zeros.equals(nans)
    assert content_hash(zeros.to_frame()) == content_hash(nans.to_frame())


def _built_two_ways() -> dict[str, tuple[pl.DataFrame, pl.DataFrame]]:
    """Pairs of equal frames, the first a slice of something bigger or built in pieces, the second fresh."""
    big = pl.DataFrame({
        "s": [f"long string number {i}" if i % 3 else None for i in range(40)],
        "b": [i % 5 == 0 if i % 7 else None for i in range(40)],
        "f": [i / 3 if i % 4 else None for i in range(40)],
        "i": [i if i % 6 else None for i in range(40)],
        "t": [datetime(2024, 1, 1) + timedelta(seconds=i) if i % 2 else None for i in range(40)],
        "d": [date(2024, 1, 1) + timedelta(days=i) for i in range(40)],
        "l": [[i, None] if i % 3 else ([] if i % 2 else None) for i in range(40)],
        "r": [{"k": i, "v": str(i)} if i % 5 else None for i in range(40)],
    })
    pairs = {f"slice {start}+{length}": (big.slice(start, length), pl.DataFrame(big.slice(start, length).to_dicts(), schema=big.schema))
             for start, length in ((3, 11), (8, 16), (13, 1), (0, 40), (39, 1), (5, 0))}
    pairs["three chunks"] = (pl.concat([big.slice(0, 7), big.slice(7, 20), big.slice(27, 13)], rechunk=False), big.rechunk())
    return pairs


@pytest.mark.parametrize("how", list(_built_two_ways()))
def test_equal_frames_built_differently_hash_equal(how):
    built, fresh = _built_two_ways()[how]
    assert built.equals(fresh)
    assert content_hash(built) == content_hash(fresh)


@pytest.mark.parametrize("left,right", [
    ({"x": [0.0]}, {"x": [None]}),
    ({"x": [math.nan]}, {"x": [None]}),
    ({"x": [0.0]}, {"x": [-0.0]}),
    ({"x": [""]}, {"x": [None]}),
    ({"x": ["ab", "c"]}, {"x": ["a", "bc"]}),
    ({"x": [[]]}, {"x": [None]}),
    ({"x": [[None]]}, {"x": [[]]}),
    ({"x": [[1], [2, 3]]}, {"x": [[1, 2], [3]]}),
    ({"x": [{"a": 1, "b": None}]}, {"x": [{"a": 1, "b": 0}]}),
    ({"x": [True, False]}, {"x": [False, True]}),
    ({"x": [1, 2]}, {"x": [2, 1]}),
    ({"x": [1], "y": [1]}, {"y": [1], "x": [1]}),
    ({"x": [1]}, {"z": [1]}),
    ({"x": [1]}, {"x": [1, 1]}),
])
def test_different_frames_hash_differently(left, right):
    assert content_hash(pl.DataFrame(left)) != content_hash(pl.DataFrame(right))


def test_dtype_is_part_of_the_hash():
    frame = pl.DataFrame({"x": [1, 2]})
    assert content_hash(frame) != content_hash(frame.cast(pl.Int32))
    assert content_hash(frame.cast(pl.Datetime("us"))) != content_hash(frame.cast(pl.Datetime("ns")))


def test_every_nan_hashes_alike():
    quiet = np.array([np.nan])
    other = np.array([0x7FF8_0000_0000_0001], dtype=np.uint64).view(np.float64)  # a NaN with a payload
    negative = -quiet
    assert quiet.tobytes() != other.tobytes() and quiet.tobytes() != negative.tobytes()
    digests = {content_hash(pl.DataFrame({"x": pl.Series(v)})) for v in (quiet, other, negative)}
    assert len(digests) == 1


def test_content_hash_is_pinned():
    """The encoding is a stored format: this digest must not change across runs, machines or refactors."""
    frame = pl.DataFrame({
        "customer_id": ["a", None, "é"],
        TS: pl.Series([datetime(2024, 1, 2), datetime(2024, 1, 3), None]).dt.replace_time_zone("UTC"),
        "amount_sum_7d": [1.5, None, math.nan],
        "amount_count_7d": [1, 0, None],
        "flag": [True, None, False],
        "tags": [["x"], [], None],
    })
    assert content_hash(frame) == PINNED


PINNED = "f5c9a0506c78266f8b9171fddb33c776"


# ---- 2. empty results and null timestamps -----------------------------------------------------


def _two_day_feature(tmp_path: Path, kind: str) -> tuple[Feature, Path]:
    path = tmp_path / "events.parquet"
    source = events_source(path, [
        {"customer_id": "a", "ts": datetime(2024, 1, 1, 5), "amount": 1.0},
        {"customer_id": "b", "ts": datetime(2024, 1, 2, 5), "amount": 2.0},
        {"customer_id": "a", "ts": datetime(2024, 1, 2, 6), "amount": 3.0},
    ])
    metrics = {"rolling": [Rolling(["1d"], {"amount": ["sum"]})], "latest": [Latest(["amount"])], "rows": []}[kind]
    return Feature(name="spend", entities=[CUSTOMER], source=source, start="2024-01-01", metrics=metrics), path


@pytest.mark.parametrize("kind", ["rolling", "latest", "rows"])
def test_emptied_source_never_replaces_a_partition_with_rows(tmp_path, kind):
    feature, path = _two_day_feature(tmp_path, kind)
    store = LocalStore(tmp_path / "store")
    write(store, feature, PolarsEngine().compute(feature, ["2024-01-01", "2024-01-02"]))
    held = store.latest("spend")["partitions"]["2024-01-02"]["rows"]
    before = tree(tmp_path / "store")
    pl.DataFrame(schema=EVENTS).write_parquet(path)  # the source lost every row
    frames = PolarsEngine().compute(feature, ["2024-01-01", "2024-01-02"])
    assert {k: f.height for k, f in frames.items()} == {"2024-01-01": 0, "2024-01-02": 0}
    with pytest.raises(DataError, match=rf"2024-01-02 \({held} rows\).*nothing was written.*allow_empty=True") as error:
        write(store, feature, frames)
    assert "1.0.0" in str(error.value) and "spend" in str(error.value)
    assert tree(tmp_path / "store") == before


def test_allow_empty_replaces_a_partition_on_purpose(tmp_path):
    feature, path = _two_day_feature(tmp_path, "rows")
    store = LocalStore(tmp_path / "store")
    write(store, feature, PolarsEngine().compute(feature, ["2024-01-01", "2024-01-02"]))
    pl.DataFrame(schema=EVENTS).write_parquet(path)
    (result,) = write(store, feature, PolarsEngine().compute(feature, ["2024-01-02"]), allow_empty=True)
    assert (result.version, result.bump, result.rows) == ("1.0.1", "patch", 0)
    assert store.read("spend").height == 1  # 2024-01-01 is inherited


def test_an_empty_new_partition_or_an_empty_one_rewritten_is_fine(tmp_path):
    feature, _ = _two_day_feature(tmp_path, "latest")
    store = LocalStore(tmp_path / "store")
    write(store, feature, PolarsEngine().compute(feature, ["2024-01-01", "2024-01-02"]))
    (added,) = write(store, feature, PolarsEngine().compute(feature, ["2024-01-03"]))  # no events that day
    assert (added.bump, added.rows) == ("added", 0)
    (again,) = write(store, feature, PolarsEngine().compute(feature, ["2024-01-03"]))
    assert again.bump == "unchanged"


@pytest.mark.parametrize("kind", ["rolling", "latest", "rows"])
def test_null_event_timestamps_are_a_data_error(tmp_path, kind):
    feature, path = _two_day_feature(tmp_path, kind)
    events = pl.read_parquet(path)
    late = pl.DataFrame({"customer_id": ["c", "d"], "ts": [None, None], "amount": [4.0, 5.0]}, schema=EVENTS)
    pl.concat([events, late]).write_parquet(path)
    with pytest.raises(DataError, match=rf"'ts' is null in 2 row\(s\) of source '{re.escape(str(path))}'"):
        PolarsEngine().compute(feature, ["2024-01-02"])


def test_null_timestamps_dropped_in_a_transform_are_fine(tmp_path):
    feature, path = _two_day_feature(tmp_path, "rolling")
    pl.concat([pl.read_parquet(path), pl.DataFrame({"customer_id": ["c"], "ts": [None], "amount": [4.0]}, schema=EVENTS)]).write_parquet(path)
    kept = Feature(name="spend", entities=[CUSTOMER], source=feature.source, start="2024-01-01", metrics=feature.metrics,
                   transform=lambda events: events.filter(pl.col("ts").is_not_null()))
    frame = PolarsEngine().compute(kept, ["2024-01-02"])["2024-01-02"]
    assert frame.select("customer_id", "amount_sum_1d").rows() == [("a", 3.0), ("b", 2.0)]


# ---- 3. file modes follow the umask ------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077], ids=oct)
def test_store_files_follow_the_umask(tmp_path, umask):
    feature, _ = _two_day_feature(tmp_path, "rows")
    old = os.umask(umask)
    try:
        store = LocalStore(tmp_path / "store")
        write(store, feature, PolarsEngine().compute(feature, ["2024-01-01"]))  # create _latest.json
        write(store, feature, PolarsEngine().compute(feature, ["2024-01-02"]))  # swap it
        frames = PolarsEngine().compute(feature, ["2024-01-02"])
        write(store, feature, {"2024-01-02": frames["2024-01-02"].head(1)})  # PATCH: a new version's files
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {".gitignore", "_latest.json", ".meta.json"}
    assert any(p.suffix == ".parquet" for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
