"""Polars, sharded and Spark engines give bit-identical partitions; the streaming interface; errors and the bucket hash.

Bit-identical means the same `content_hash` (the store's, from store/versioned.py: order-sensitive) for every partition,
on randomized features: every kind, granularity and key layout, aligned and unaligned windows, several
thousand events with inexact decimals, ties, nulls and NaNs, split into 1, 7 or an automatic number of
buckets, in this process, in a process pool, and on a local[2] Spark session (one for the module).
"""

from __future__ import annotations

import math
import random
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feature_pipelines.engine import PolarsEngine, ShardedEngine
from feature_pipelines.engine.buckets import bucket_hash
from feature_pipelines.errors import DataError, DefinitionError
from feature_pipelines.keys import surrogate_key
from feature_pipelines.spec.entity import Entity
from feature_pipelines.spec.feature import Feature
from feature_pipelines.spec.metrics import Latest, Rolling
from feature_pipelines.spec.source import Source
from feature_pipelines.store.versioned import content_hash

GRAINS = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1), "monthly": timedelta(days=31)}
WINDOWS = {"hourly": ["1h", "3h", "1d", "90m", "45m"], "daily": ["1d", "7d", "2w", "36h", "90m"],
           "weekly": ["7d", "2w", "1d", "10d"], "monthly": ["1d", "7d", "30d", "45d"]}
AGGS = ["count", "sum", "mean", "std", "var", "min", "max", "median"]
LAYOUTS = ["customer", "account", "composite", "two_entities", "surrogate", "surrogate_composite"]
PII = ["first_name", "last_name", "dob"]


def _entities(layout: str) -> list[Entity]:
    customer = Entity("customer", join_key="customer_id", from_columns=PII) if layout.startswith("surrogate") else Entity("customer", join_key="customer_id")
    merchant = Entity("merchant", join_key="merchant_id")
    return {"customer": [customer], "account": [Entity("account", join_key="account_id")],
            "composite": [Entity("cm", join_keys=["customer_id", "merchant_id"])], "two_entities": [customer, merchant],
            "surrogate": [customer], "surrogate_composite": [Entity.composite("cm", customer, merchant)]}[layout]


def _identity(layout: str, rng: random.Random) -> dict:
    person = {"first_name": rng.choice([None, "Ann", "ann", "Bob", "A|nn", "Zoë"]), "last_name": rng.choice([None, "", "Lee", "Li|u"]),
              "dob": rng.choice([None, date(1980, 1, 31), date(2000, 2, 29), date(1975, 6, 1)])}
    if all(v is None for v in person.values()):
        person["first_name"] = "Cy"
    customer = {"customer_id": rng.choice(["c0", "C1", "é2", "a b"]) + str(rng.randrange(15))}
    merchant = {"merchant_id": rng.randrange(-3, 4)}
    return {"customer": customer, "account": {"account_id": rng.choice([-5, 0, 7, 10**12]) + rng.randrange(40)},
            "composite": {**customer, **merchant}, "two_entities": {**customer, **merchant},
            "surrogate": person, "surrogate_composite": {**person, **merchant}}[layout]


def random_feature(seed: int, folder: Path) -> tuple[Feature, list[str]]:
    """A random feature over ~3,000 events of ~60 entities, and 12 consecutive partition keys."""
    rng = random.Random(seed)
    gran = ["hourly", "daily", "weekly", "monthly"][seed % 4]
    layout = LAYOUTS[seed % len(LAYOUTS)]
    kind = "latest" if seed % 7 == 5 else "rows" if seed % 7 == 6 else "rolling"
    first = {"hourly": datetime(2024, 3, 9, 20), "daily": datetime(2024, 2, 20), "weekly": datetime(2023, 12, 31),
             "monthly": datetime(2023, 11, 1)}[gran]
    span = GRAINS[gran] * 12
    windows = rng.sample(WINDOWS[gran], k=rng.randint(1, 3))
    aggs = rng.sample(AGGS if seed % 2 else AGGS[:-1], k=rng.randint(3, 8 if seed % 2 else 7))
    metrics = {"rolling": [Rolling(windows, {"amount": aggs, "qty": ["count", "sum"]})], "latest": [Latest(["amount", "qty", "status"])],
               "rows": []}[kind]
    identities = [_identity(layout, rng) for _ in range(60)]
    times = [first - timedelta(days=50) + (span + timedelta(days=60)) * rng.random() for _ in range(900)]  # few distinct: ties
    rows = []
    for _ in range(3000):
        amount = rng.choice([None, math.nan, round(rng.lognormvariate(3, 2), 2), round(rng.uniform(-500, 500), 2)])
        rows.append({**rng.choice(identities), "ts": rng.choice(times), "amount": amount,
                     "qty": rng.choice([None, rng.randrange(-50, 50)]), "status": rng.choice([None, "ok", "bad"])})
    frame = pl.DataFrame(rows, schema={**{k: None for k in rows[0] if k not in ("ts", "amount", "qty", "status")},
                                       "ts": pl.Datetime("us"), "amount": pl.Float64, "qty": pl.Int64, "status": pl.String})
    if seed % 3 == 1:
        frame = frame.with_columns(pl.col("ts").dt.replace_time_zone("UTC").dt.convert_time_zone("Europe/Paris"))
    path = folder / f"events_{seed}.parquet"
    frame.write_parquet(path, row_group_size=700)
    feature = Feature(name="f", entities=_entities(layout), source=Source(str(path), timestamp="ts"), granularity=gran,
                      start=first, metrics=metrics)
    keys, start = [], feature.start
    for _ in range(12):
        keys.append(feature.grain.key(start))
        start = feature.grain.next(start)
    return feature, keys


def assert_identical(want: dict[str, pl.DataFrame], got: dict[str, pl.DataFrame], label: str) -> None:
    assert list(got) == list(want), f"{label}: partitions {list(got)} != {list(want)}"
    for key in want:
        assert_frame_equal(got[key], want[key], check_exact=True)
        assert content_hash(got[key]) == content_hash(want[key]), f"{label} {key}: content hash differs"


@pytest.fixture(scope="module")
def spark_session(tmp_path_factory):
    pytest.importorskip("pyspark")
    from feature_pipelines.engine.spark import local_session

    session = local_session(tmp_path_factory.mktemp("spark_session"))
    try:
        yield session
    finally:
        session.stop()


@pytest.mark.parametrize("seed", range(8))
def test_polars_sharded_and_spark_are_bit_identical(seed, tmp_path, spark_session):
    from feature_pipelines.engine.spark import SparkEngine

    feature, keys = random_feature(seed, tmp_path)
    want = PolarsEngine().compute(feature, keys)
    assert sum(f.height for f in want.values()) > 0
    engines = {
        "sharded, 1 bucket": ShardedEngine(buckets=1, workers=1, tmp_dir=str(tmp_path)),
        "sharded, 7 buckets": ShardedEngine(buckets=7, workers=1, tmp_dir=str(tmp_path)),
        "sharded, automatic buckets of <= 400 events": ShardedEngine(max_bucket_rows=400, workers=1, tmp_dir=str(tmp_path)),
        "spark, 4 buckets": SparkEngine(spark_session, buckets=4, tmp_dir=str(tmp_path)),
    }
    for label, engine in engines.items():
        assert_identical(want, engine.compute(feature, keys), label)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"events_{seed}.parquet"], "scratch folders were left behind"


def test_process_pool_is_bit_identical(tmp_path):
    feature, keys = random_feature(1, tmp_path)
    assert feature.kind == "rolling"
    assert_identical(PolarsEngine().compute(feature, keys), ShardedEngine(buckets=5, workers=2).compute(feature, keys), "2 processes")


def test_empty_range_gives_the_same_empty_frames(tmp_path, spark_session):
    from feature_pipelines.engine.spark import SparkEngine

    feature, _ = random_feature(0, tmp_path)
    keys = ["2030-01-01-00:00", "2030-01-01-01:00"] if feature.granularity == "hourly" else ["2030-01-01"]
    want = PolarsEngine().compute(feature, keys)
    assert all(f.height == 0 for f in want.values())
    for engine in (ShardedEngine(buckets=3, workers=1), SparkEngine(spark_session, buckets=2)):
        assert_identical(want, engine.compute(feature, keys), engine.name)


def test_spark_engine_uses_the_active_session_and_leaves_it_running(spark_session, tmp_path):
    from feature_pipelines.engine.spark import SparkEngine

    feature, keys = random_feature(4, tmp_path)
    with SparkEngine(buckets=2) as engine:
        assert engine.spark is spark_session
        assert_identical(PolarsEngine().compute(feature, keys), engine.compute(feature, keys), "spark")
        assert len({run["pid"] for run in engine.last_run}) == 2, engine.last_run  # both cores' Python workers
    assert spark_session.range(3).count() == 3


def test_local_session_settings(spark_session, tmp_path_factory):
    conf = spark_session.sparkContext.getConf()
    root = Path(conf.get("spark.local.dir")).parent
    assert spark_session.sparkContext.master == "local[2]"
    assert spark_session.conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert conf.get("spark.driver.memory") == "1g"
    assert root.parent == tmp_path_factory.getbasetemp() and f"-Djava.io.tmpdir={root / 'java'}" in conf.get("spark.driver.extraJavaOptions")


# ---- the streaming interface -----------------------------------------------------------------


@pytest.mark.parametrize("engine", [PolarsEngine(), ShardedEngine(buckets=3, workers=1)], ids=["polars", "sharded"])
def test_compute_iter_yields_each_partition_once_in_order(engine, tmp_path):
    feature, keys = random_feature(2, tmp_path)
    streamed = list(engine.compute_iter(feature, list(reversed(keys))))
    assert [k for k, _ in streamed] == keys
    assert_identical(PolarsEngine().compute(feature, keys), dict(streamed), engine.name)
    assert list(engine.compute_iter(feature, [])) == [] and engine.compute(feature, []) == {}


def test_sharded_scratch_is_removed_when_iteration_stops_early(tmp_path):
    feature, keys = random_feature(3, tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    stream = ShardedEngine(buckets=4, workers=1, tmp_dir=str(scratch)).compute_iter(feature, keys)
    key, _ = next(stream)
    assert key == keys[0] and any(scratch.iterdir())
    stream.close()
    assert not any(scratch.iterdir())


# ---- errors: every engine reports bad input the same way ---------------------------------------


def _source(tmp_path: Path, rows: list[dict], schema: dict) -> Source:
    pl.DataFrame(rows, schema=schema).write_parquet(tmp_path / "bad.parquet")
    return Source(str(tmp_path / "bad.parquet"), timestamp="ts")


SCHEMA = {"customer_id": pl.String, "ts": pl.Datetime("us"), "amount": pl.Float64}
ROW = {"customer_id": "a", "ts": datetime(2024, 1, 1, 10), "amount": 1.0}


@pytest.mark.parametrize("case", ["null key", "empty key", "null time", "text amount", "missing column", "outside start", "all-null PII"])
def test_sharded_reports_errors_like_polars(tmp_path, case):
    schema, rows, cls, match = dict(SCHEMA), [ROW, dict(ROW)], DataError, None
    entities = [Entity("customer", join_key="customer_id")]
    keys = ["2024-01-01"]
    if case == "null key":
        rows[1]["customer_id"], match = None, r"join key 'customer_id' is null or empty in 1 source row"
    elif case == "empty key":
        rows[1]["customer_id"], match = "", r"join key 'customer_id' is null or empty in 1 source row"
    elif case == "null time":
        rows += [{**ROW, "ts": None}] * 2
        match = r"timestamp column 'ts' is null in 2 row\(s\)"
    elif case == "text amount":
        schema["amount"], rows = pl.String, [{**r, "amount": "1.0"} for r in rows]
        match = r"column 'amount' has dtype String"
    elif case == "missing column":
        del schema["amount"]
        rows, match = [{k: v for k, v in r.items() if k != "amount"} for r in rows], r"column\(s\) \['amount'\] are missing"
    elif case == "outside start":
        keys, cls, match = ["2023-12-31"], DefinitionError, r"partition '2023-12-31' is outside feature 'f'"
    else:
        schema = {"first_name": pl.String, "last_name": pl.String, "ts": pl.Datetime("us"), "amount": pl.Float64}
        rows = [{"first_name": None, "last_name": None, "ts": ROW["ts"], "amount": 1.0}]
        entities, match = [Entity("customer", join_key="customer_id", from_columns=["first_name", "last_name"])], "every identifying column"
    feature = Feature(name="f", entities=entities, source=_source(tmp_path, rows, schema), start="2024-01-01",
                      metrics=[Rolling(["1d"], {"amount": ["sum"]})])
    for engine in (PolarsEngine(), ShardedEngine(buckets=3, workers=1)):
        with pytest.raises(cls, match=match):
            engine.compute(feature, keys)


@pytest.mark.parametrize("kwargs", [{"buckets": 0}, {"workers": 0}, {"max_bucket_rows": -1}, {"spill_compression": "gzip"}])
def test_bad_sharded_settings_are_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ShardedEngine(**kwargs)


# ---- the bucket hash ----------------------------------------------------------------------------


def test_bucket_hash_is_the_documented_stable_hash():
    # xxHash64 of keys.py's canonical encoding: pinned, so a library or polars upgrade cannot move entities.
    assert bucket_hash(("c0",)) == int(surrogate_key(("c0",)), 16) == 0x1E903ADFB52C9C0D
    assert bucket_hash(("01587b435da3c7af", 3)) == int(surrogate_key(("01587b435da3c7af", 3)), 16)
    spread = np.bincount([bucket_hash((f"c{i}",)) % 7 for i in range(7_000)], minlength=7)
    assert spread.min() > 850, spread  # even enough: ~1,000 each
