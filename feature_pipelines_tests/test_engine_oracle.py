"""Every engine (polars, sharded with 1 and 7 buckets, Spark) checked against a brute-force oracle.

The oracle is deliberately naive: it keeps the generated events as a list of Python dicts (event
time as an aware UTC `datetime`) and, for every partition interval [b_i, b_{i+1}) stamped
t = b_{i+1}, loops over all events to find

* Rolling: the entities with at least one event (null or NaN values included) in [b_i - longest
  window, b_{i+1}), and for each window w and aggregation the values with event time in [t - w, t)
  that are neither null nor NaN (NaN is missing data, like null), aggregated with `math.fsum` /
  `statistics.median` (count = number of such values, 0 when empty; other aggregations null when
  empty; std/var sample statistics, null below two values);
* Latest: the entities with an event in [b_i, b_{i+1}) and, per entity, the newest event
  (ties on time: the later source row), a NaN value stored as null;
* rows: the events in [b_i, b_{i+1}), timestamp renamed to `feature_timestamp`, values as they are
  (NaN stays NaN).

It uses no polars and none of the engine's helpers: partition boundaries, keys, window lengths and
column labels are recomputed here from the written contract. The only shared function is
`feature_pipelines.keys.surrogate_key`, the documented reference for surrogate entity keys (itself
pinned independently in test_keys.py).

Polars is used only to *write* the generated events to a parquet file (naive UTC, or aware in a
random time zone, in 'us' or 'ns') that the engine then reads.

Hypothesis drives the inputs: 1-4 entities under several key layouts (string, integer, composite,
two entities, surrogate keys from PII, composite with a surrogate part), 0-60 events whose times
cluster on partition boundaries, on `boundary - window`, one microsecond either side, in bursts of
identical timestamps and far outside the read range, with null and NaN values. Rolling cases run once
forcing the engine's "dense" algorithm and once forcing its "time-based" one; a spy on the engine
module checks which algorithm actually ran (in-process engines only).

The randomized tests run on `PolarsEngine` and on `ShardedEngine` with 1 and 7 buckets (in this process,
so the spy sees the kernel). Spark runs the same oracle on fewer random examples (one local[2]
session for the module), plus fixed cases that cover on Spark every aggregation, every granularity,
aligned and unaligned windows, composite and PII keys, Latest and plain rows.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from feature_pipelines.engine import PolarsEngine, ShardedEngine, polars_engine
from feature_pipelines.errors import DataError, DefinitionError
from feature_pipelines.keys import surrogate_key
from feature_pipelines.spec.entity import Entity
from feature_pipelines.spec.feature import Feature
from feature_pipelines.spec.metrics import Latest, Rolling
from feature_pipelines.spec.source import Source

UTC = timezone.utc
US = timedelta(microseconds=1)
REL_TOL, ABS_TOL = 1e-9, 1e-6

SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

# --------------------------------------------------------------------------------------------
# Oracle side: calendar, windows and labels recomputed from the contract
# --------------------------------------------------------------------------------------------

_UNIT = {
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}
_FIXED = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(weeks=1)}


def window_td(text: str) -> timedelta:
    return int(text[:-1]) * _UNIT[text[-1]]


def window_label(text: str) -> str:
    """Largest of d/h/m/s dividing the window evenly: '2w' -> '14d', '90m' -> '90m'."""
    seconds = int(window_td(text).total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise AssertionError(text)


def next_start(b: datetime, gran: str) -> datetime:
    if gran == "monthly":
        return b.replace(year=b.year + (b.month == 12), month=b.month % 12 + 1)
    return b + _FIXED[gran]


def prev_start(b: datetime, gran: str) -> datetime:
    if gran == "monthly":
        return b.replace(year=b.year - (b.month == 1), month=(b.month - 2) % 12 + 1)
    return b - _FIXED[gran]


def partition_key(b: datetime, gran: str) -> str:
    return b.strftime("%Y-%m-%d-%H:%M" if gran == "hourly" else "%Y-%m-%d")


def interval_start(moment: datetime, gran: str) -> datetime:
    """Start of the UTC interval containing `moment`; weeks start on Sunday."""
    if gran == "hourly":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if gran == "daily":
        return day
    if gran == "weekly":
        return day - timedelta(days=(day.weekday() + 1) % 7)
    return day.replace(day=1)


def is_missing(value) -> bool:
    """Null, or a float NaN: both are missing data for every aggregation."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def aggregate(agg: str, values: list) -> float | int | None:
    n = len(values)
    if agg == "count":
        return n
    if n == 0:
        return None
    xs = [float(v) for v in values]
    if agg == "sum":
        return math.fsum(xs)
    if agg == "mean":
        return math.fsum(xs) / n
    if agg == "min":
        return min(xs)
    if agg == "max":
        return max(xs)
    if agg == "median":
        return statistics.median(xs)
    if n < 2:
        return None
    mean = math.fsum(xs) / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return var if agg == "var" else math.sqrt(var)


# --------------------------------------------------------------------------------------------
# Entity layouts: how entities are declared, which source columns identify them, oracle keys
# --------------------------------------------------------------------------------------------

PII = ("first_name", "last_name", "dob")


def _pii_customer() -> Entity:
    return Entity("customer", join_key="customer_id", from_columns=list(PII))


LAYOUTS = {
    # name: (entities factory, join keys in feature order, source identity columns with dtype)
    "customer": (lambda: [Entity("customer", join_key="customer_id")], ["customer_id"], {"customer_id": pl.String}),
    "account": (lambda: [Entity("account", join_key="account_id")], ["account_id"], {"account_id": pl.Int64}),
    "composite": (
        lambda: [Entity("cm", join_keys=["customer_id", "merchant_id"])],
        ["customer_id", "merchant_id"],
        {"customer_id": pl.String, "merchant_id": pl.Int64},
    ),
    "two_entities": (
        lambda: [Entity("customer", join_key="customer_id"), Entity("merchant", join_key="merchant_id")],
        ["customer_id", "merchant_id"],
        {"customer_id": pl.String, "merchant_id": pl.Int64},
    ),
    "surrogate": (
        lambda: [_pii_customer()],
        ["customer_id"],
        {"first_name": pl.String, "last_name": pl.String, "dob": pl.Date},
    ),
    "surrogate_composite": (
        lambda: [Entity.composite("cm", _pii_customer(), Entity("merchant", join_key="merchant_id"))],
        ["customer_id", "merchant_id"],
        {"first_name": pl.String, "last_name": pl.String, "dob": pl.Date, "merchant_id": pl.Int64},
    ),
}
KEY_DTYPES = {"customer_id": pl.String, "account_id": pl.Int64, "merchant_id": pl.Int64}

_customer_ids = st.sampled_from(["c0", "C1", "é2", "b3", "c10", "c9", "a b"])
_merchant_ids = st.integers(min_value=-2, max_value=3)
_pii = st.tuples(
    st.one_of(st.none(), st.sampled_from(["Ann", "ann", "Bob", "A|nn"])),
    st.one_of(st.none(), st.sampled_from(["Lee", "Li|u", "", "None"])),
    st.one_of(st.none(), st.sampled_from([date(1980, 1, 31), date(2000, 2, 29)])),
).filter(lambda t: any(v is not None for v in t))


def identity_strategy(layout: str) -> st.SearchStrategy[dict]:
    if layout == "customer":
        return st.builds(lambda c: {"customer_id": c}, _customer_ids)
    if layout == "account":
        return st.builds(lambda a: {"account_id": a}, st.integers(min_value=-5, max_value=10**12))
    if layout in ("composite", "two_entities"):
        return st.builds(lambda c, m: {"customer_id": c, "merchant_id": m}, _customer_ids, _merchant_ids)
    if layout == "surrogate":
        return st.builds(lambda p: dict(zip(PII, p)), _pii)
    return st.builds(lambda p, m: {**dict(zip(PII, p)), "merchant_id": m}, _pii, _merchant_ids)


def oracle_key(layout: str, event: dict) -> tuple:
    """The join-key tuple of an event, in the feature's join-key order."""
    values = dict(event)
    if layout.startswith("surrogate"):
        values["customer_id"] = surrogate_key(tuple(event[c] for c in PII))
    return tuple(values[k] for k in LAYOUTS[layout][1])


# --------------------------------------------------------------------------------------------
# Generated cases
# --------------------------------------------------------------------------------------------

# Windows that are whole multiples of the interval (dense path allowed) and ones that are not.
DENSE_WINDOWS = {
    "hourly": ["1h", "2h", "3h", "1d", "36h"],
    "daily": ["1d", "2d", "7d", "2w"],
    "weekly": ["7d", "2w", "4w"],
    "monthly": [],
}
ODD_WINDOWS = {
    "hourly": ["90m", "45m", "30s"],
    "daily": ["36h", "12h", "90m"],
    "weekly": ["1d", "10d", "36h"],
    "monthly": ["1h", "1d", "36h", "7d", "30d", "45d"],
}
AGGS = ["count", "sum", "mean", "std", "var", "min", "max", "median"]
BASE_DAYS = [
    datetime(2024, 1, 1, tzinfo=UTC),
    datetime(2024, 2, 27, tzinfo=UTC),  # leap day ahead
    datetime(2024, 3, 9, tzinfo=UTC),  # US DST starts 2024-03-10
    datetime(2024, 3, 30, tzinfo=UTC),  # EU DST starts 2024-03-31
    datetime(2024, 10, 26, tzinfo=UTC),  # EU DST ends 2024-10-27
    datetime(2024, 11, 2, tzinfo=UTC),  # US DST ends 2024-11-03
    datetime(2023, 12, 30, tzinfo=UTC),  # year end
]
TIME_ZONES = [None, None, "UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]


@dataclass
class Case:
    kind: str  # 'rolling' | 'latest' | 'rows'
    layout: str
    granularity: str
    bounds: list[datetime]  # b_0 .. b_n of the requested partitions
    start: datetime  # the feature's start (<= b_0)
    rolling: list[tuple[list[str], dict[str, list[str]]]] = field(default_factory=list)
    latest: list[str] = field(default_factory=list)
    tz: str | None = None
    time_unit: str = "us"
    events: list[dict] = field(default_factory=list)  # source values + '_t' (aware UTC event time)

    @property
    def keys(self) -> list[str]:
        return [partition_key(b, self.granularity) for b in self.bounds[:-1]]

    @property
    def windows(self) -> list[str]:
        return [w for ws, _ in self.rolling for w in ws]

    @property
    def dense(self) -> bool:
        """Which rolling algorithm the contract says the engine uses."""
        fixed = _FIXED.get(self.granularity)
        return (
            fixed is not None
            and all(window_td(w) % fixed == timedelta(0) for w in self.windows)
            and not any("median" in aggs for _, a in self.rolling for aggs in a.values())
        )


@st.composite
def cases(draw, kind: str, path: str | None = None) -> Case:
    if path == "dense":
        gran = draw(st.sampled_from(["hourly", "daily", "weekly"]))
    else:
        gran = draw(st.sampled_from(["hourly", "daily", "weekly", "monthly"]))
    base = draw(st.sampled_from(BASE_DAYS)) + timedelta(hours=draw(st.integers(0, 23)))
    first = interval_start(base, gran)
    bounds = [first]
    for _ in range(draw(st.integers(1, 6))):
        bounds.append(next_start(bounds[-1], gran))
    start = first
    for _ in range(draw(st.integers(0, 2))):
        start = prev_start(start, gran)
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    case = Case(kind, layout, gran, bounds, start)
    case.tz = draw(st.sampled_from(TIME_ZONES))
    case.time_unit = draw(st.sampled_from(["us", "ns"]))

    if kind == "rolling":
        def draw_aggs(allowed: list[str]) -> dict[str, list[str]]:
            cols = draw(st.lists(st.sampled_from(["amount", "qty"]), min_size=1, max_size=2, unique=True))
            return {c: draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=4, unique=True)) for c in cols}

        if path == "dense":
            windows = draw(st.lists(st.sampled_from(DENSE_WINDOWS[gran]), min_size=1, max_size=3, unique=True))
            allowed = [a for a in AGGS if a != "median"]
        else:
            pool = DENSE_WINDOWS[gran] + ODD_WINDOWS[gran]
            windows = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
            allowed = AGGS
        aggs = draw_aggs(allowed)
        if len(windows) > 1 and draw(st.booleans()):  # two Rolling metrics with their own aggregations
            case.rolling = [(windows[:1], aggs), (windows[1:], draw_aggs(allowed))]
        else:
            case.rolling = [(windows, aggs)]
        if path == "time" and case.dense:  # force the time-based path: a median or a window cutting intervals
            if draw(st.booleans()):
                first_aggs = case.rolling[0][1]
                col = next(iter(first_aggs))
                first_aggs[col] = first_aggs[col] + ["median"]
            else:
                odd = draw(st.sampled_from([w for w in ODD_WINDOWS[gran] if w not in windows]))
                case.rolling[-1][0].append(odd)
        assert case.dense == (path == "dense")
    elif kind == "latest":
        case.latest = draw(st.lists(st.sampled_from(["amount", "qty", "status"]), min_size=1, max_size=3, unique=True))

    # Event times: anchors on boundaries and window edges, nudged by 0 / ±1 µs or anywhere nearby.
    span = (bounds[1] - bounds[0]) if gran != "monthly" else timedelta(days=31)
    lengths = [window_td(w) for w in case.windows] or [span]
    longest = max(lengths)
    anchors = set(bounds) | {b - w for b in bounds for w in lengths}
    anchors |= {bounds[0] - longest - US, bounds[0] - 3 * longest, bounds[-1] + longest}
    nudge = st.one_of(
        st.sampled_from([timedelta(0), US, -US]),
        st.integers(-int(span / US), int(span / US)).map(lambda n: n * US),
    )
    moment = st.builds(lambda a, d: a + d, st.sampled_from(sorted(anchors)), nudge)
    pool = draw(st.lists(moment, min_size=1, max_size=12))  # few distinct times: bursts of ties
    identities = draw(
        st.lists(identity_strategy(layout), min_size=1, max_size=4, unique_by=lambda d: tuple(sorted(d.items())))
    )
    # Amounts also come from a small pool, so windows often hold repeated values (zero variance).
    amounts = draw(
        st.lists(
            st.one_of(
                st.integers(-100_000, 100_000).map(lambda n: n / 100),
                st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
                st.just(math.nan),  # missing data that is not a null
            ),
            min_size=1,
            max_size=6,
        )
    )
    event = st.tuples(
        st.sampled_from(identities),
        st.sampled_from(pool),
        st.one_of(st.none(), st.sampled_from(amounts)),
        st.one_of(st.none(), st.integers(-50, 50)),
        st.one_of(st.none(), st.sampled_from(["ok", "bad", ""])),
    )
    for ident, t, a, q, s in draw(st.lists(event, max_size=60)):
        case.events.append({**ident, "amount": a, "qty": q, "status": s, "_t": t})
    return case


# --------------------------------------------------------------------------------------------
# Writing the source and building the feature (polars only writes the input)
# --------------------------------------------------------------------------------------------


def write_source(case: Case, path: Path) -> None:
    ids = LAYOUTS[case.layout][2]
    schema = {**ids, "amount": pl.Float64, "qty": pl.Int64, "status": pl.String}
    data = {c: [e[c] for e in case.events] for c in schema}
    frame = pl.DataFrame(data, schema=schema)
    ts = pl.Series("ts", [e["_t"].replace(tzinfo=None) for e in case.events], dtype=pl.Datetime(case.time_unit))
    if case.tz is not None:
        ts = ts.dt.replace_time_zone("UTC").dt.convert_time_zone(case.tz)
    frame.insert_column(0, ts).write_parquet(path)


def build_feature(case: Case, path: Path) -> Feature:
    metrics: list = [Rolling(list(ws), {c: list(a) for c, a in aggs.items()}) for ws, aggs in case.rolling]
    if case.kind == "latest":
        metrics = [Latest(list(case.latest))]
    return Feature(
        name="f",
        entities=LAYOUTS[case.layout][0](),
        source=Source(str(path), timestamp="ts"),
        granularity=case.granularity,
        start=case.start,
        metrics=metrics,
    )


def run_engine(case: Case, engine=None) -> dict[str, pl.DataFrame]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.parquet"
        write_source(case, path)
        return (engine or PolarsEngine()).compute(build_feature(case, path), case.keys)


# In-process engines for the randomized tests: the polars kernel, and the sharded plan around it.
ENGINES = {
    "polars": PolarsEngine,
    "sharded1": lambda: ShardedEngine(buckets=1, workers=1),
    "sharded7": lambda: ShardedEngine(buckets=7, workers=1),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request):
    return ENGINES[request.param]()


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------


def expected_schema(case: Case) -> dict[str, pl.DataType]:
    key_names = LAYOUTS[case.layout][1]
    schema: dict[str, pl.DataType] = {k: KEY_DTYPES[k] for k in key_names}
    schema["feature_timestamp"] = pl.Datetime("us", "UTC")
    source_dtypes = {"amount": pl.Float64, "qty": pl.Int64, "status": pl.String}
    if case.kind == "rolling":
        for windows, aggs in case.rolling:
            for w in windows:
                for col, names in aggs.items():
                    for agg in names:
                        schema[f"{col}_{agg}_{window_label(w)}"] = pl.Int64 if agg == "count" else pl.Float64
    elif case.kind == "latest":
        for col in case.latest:
            schema[f"latest_{col}"] = source_dtypes[col]
        schema["latest_event_timestamp"] = pl.Datetime("us", "UTC")
    else:  # other source columns; identifying PII is not a key and is not kept
        schema.update({c: d for c, d in LAYOUTS[case.layout][2].items() if c not in schema and c not in PII})
        schema.update(source_dtypes)
    return schema


def oracle(case: Case) -> dict[str, list[dict]]:
    key_names = LAYOUTS[case.layout][1]
    events = [(oracle_key(case.layout, e), e["_t"], i, e) for i, e in enumerate(case.events)]
    out: dict[str, list[dict]] = {}
    for i, key in enumerate(case.keys):
        lo, hi = case.bounds[i], case.bounds[i + 1]
        rows: list[dict] = []
        if case.kind == "rolling":
            longest = max(window_td(w) for w in case.windows)
            entities = sorted({k for k, t, _, _ in events if lo - longest <= t < hi})
            for ent in entities:
                row = dict(zip(key_names, ent), feature_timestamp=hi)
                for windows, aggs in case.rolling:
                    for w in windows:
                        for col, names in aggs.items():
                            values = [
                                e[col] for k, t, _, e in events if k == ent and hi - window_td(w) <= t < hi and not is_missing(e[col])
                            ]
                            for agg in names:
                                row[f"{col}_{agg}_{window_label(w)}"] = aggregate(agg, values)
                rows.append(row)
        elif case.kind == "latest":
            inside = [x for x in events if lo <= x[1] < hi]
            for ent in sorted({k for k, *_ in inside}):
                _, t, _, e = max((x for x in inside if x[0] == ent), key=lambda x: (x[1], x[2]))
                row = dict(zip(key_names, ent), feature_timestamp=hi)
                row.update({f"latest_{c}": None if is_missing(e[c]) else e[c] for c in case.latest})
                row["latest_event_timestamp"] = t
                rows.append(row)
        else:
            inside = sorted((x for x in events if lo <= x[1] < hi), key=lambda x: (x[0], x[1], x[2]))
            for ent, t, _, e in inside:
                row = dict(zip(key_names, ent), feature_timestamp=t)
                row.update({c: v for c, v in e.items() if c not in key_names and c not in PII and c != "_t"})
                rows.append(row)
        out[key] = rows
    return out


def same_value(got, want) -> bool:
    if want is None or got is None:
        return got is None and want is None
    if isinstance(want, float) and math.isnan(want):  # rows features keep a source NaN as it is
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, float):
        return isinstance(got, (float, int)) and math.isclose(got, want, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(want, datetime):  # aware datetimes compare as instants, whatever their tzinfo object
        return isinstance(got, datetime) and got.tzinfo is not None and got == want
    return type(got) is type(want) and got == want


def assert_matches_oracle(case: Case, result: dict[str, pl.DataFrame]) -> None:
    expected = oracle(case)
    schema = expected_schema(case)
    assert set(result) == set(expected), f"partition keys {sorted(result)} != {sorted(expected)}"
    for key, want_rows in expected.items():
        frame = result[key]
        assert dict(frame.schema) == schema, f"{key}: schema {dict(frame.schema)} != {schema}"
        got_rows = frame.to_dicts()
        assert len(got_rows) == len(want_rows), (
            f"{key}: {len(got_rows)} rows, oracle has {len(want_rows)}\n"
            f"engine: {got_rows}\noracle: {want_rows}"
        )
        for n, (got, want) in enumerate(zip(got_rows, want_rows)):
            bad = {c: (got[c], want[c]) for c in want if not same_value(got[c], want[c])}
            assert not bad, f"{key} row {n}: (engine, oracle) differ on {bad}\nengine row: {got}\noracle row: {want}"


# --------------------------------------------------------------------------------------------
# Randomised tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["dense", "time"])
@SETTINGS
@given(data=st.data())
def test_rolling_matches_oracle(path, engine, data):
    case = data.draw(cases("rolling", path), label="case")
    with (
        mock.patch.object(polars_engine, "_rolling_dense", wraps=polars_engine._rolling_dense) as dense,
        mock.patch.object(polars_engine, "_rolling_by_time", wraps=polars_engine._rolling_by_time) as by_time,
    ):
        result = run_engine(case, engine)
    # The algorithm that ran is the one the case was built for (none runs when no event is read).
    assert not (dense.called and by_time.called)
    if path == "dense":
        assert not by_time.called
    else:
        assert not dense.called
    assert_matches_oracle(case, result)


@SETTINGS
@given(case=cases("latest"))
def test_latest_matches_oracle(engine, case):
    assert_matches_oracle(case, run_engine(case, engine))


@SETTINGS
@given(case=cases("rows"))
def test_rows_matches_oracle(engine, case):
    assert_matches_oracle(case, run_engine(case, engine))


@st.composite
def variance_cases(draw, path: str) -> Case:
    """Daily std/var whose windows often hold repeated values of an entity with a wide history."""
    n_parts = draw(st.integers(1, 6))
    bounds = [datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=i) for i in range(n_parts + 1)]
    aggs = ["std", "var", "count"] + (["median"] if path == "time" else [])
    case = Case("rolling", "customer", "daily", bounds, bounds[0], rolling=[(["1d", "2d"], {"amount": aggs})])
    # One value per entity and day: every 1d window holds copies of a single value.
    decimal = st.builds(lambda sign, n: sign * n / 100, st.sampled_from([1, -1]), st.integers(10_000, 100_000))
    per_day = {c: draw(st.lists(decimal, min_size=n_parts + 2, max_size=n_parts + 2)) for c in ("a", "b")}
    event = st.tuples(st.sampled_from(["a", "b"]), st.integers(-2 * 24, n_parts * 24 - 1))
    for customer, hour in draw(st.lists(event, min_size=2, max_size=40)):
        t = bounds[0] + timedelta(hours=hour)
        value = per_day[customer][hour // 24 + 2]
        case.events.append({"customer_id": customer, "amount": value, "qty": None, "status": None, "_t": t})
    return case


@pytest.mark.parametrize("path", ["dense", "time"])
@SETTINGS
@given(data=st.data())
def test_rolling_variance_matches_oracle(path, engine, data):
    """Numerical accuracy: the std of a window of equal values is ~0 however spread the entity's history."""
    case = data.draw(variance_cases(path), label="case")
    assert case.dense == (path == "dense")
    assert_matches_oracle(case, run_engine(case, engine))


@settings(SETTINGS, max_examples=30)
@given(data=st.data())
def test_range_in_one_call_equals_partitions_one_by_one(data):
    kind = data.draw(st.sampled_from(["rolling", "latest", "rows"]), label="kind")
    path = data.draw(st.sampled_from(["dense", "time"]), label="path") if kind == "rolling" else None
    case = data.draw(cases(kind, path), label="case")
    with tempfile.TemporaryDirectory() as tmp:
        path_ = Path(tmp) / "events.parquet"
        write_source(case, path_)
        feature = build_feature(case, path_)
        engine = PolarsEngine()
        together = engine.compute(feature, case.keys)
        for key in case.keys:
            alone = engine.compute(feature, [key])
            assert list(alone) == [key]
            if path == "time":  # polars' rolling_*_by kernels: equal within float tolerance
                assert_frame_equal(together[key], alone[key], rel_tol=REL_TOL, abs_tol=ABS_TOL)
            else:  # bit-identical, or re-materializing one partition would report a spurious PATCH
                assert_frame_equal(together[key], alone[key], check_exact=True)


# --------------------------------------------------------------------------------------------
# Spark: the same oracle on one local[2] session for the module
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark_engine(tmp_path_factory):
    pytest.importorskip("pyspark")
    from feature_pipelines.engine.spark import SparkEngine, local_session

    root = tmp_path_factory.mktemp("spark")
    session = local_session(root / "session")
    try:
        yield SparkEngine(session, buckets=3, tmp_dir=str(root))
    finally:
        session.stop()


@pytest.mark.parametrize("kind,path", [("rolling", "dense"), ("rolling", "time"), ("latest", None), ("rows", None)])
@settings(SETTINGS, max_examples=4)
@given(data=st.data())
def test_spark_matches_oracle(spark_engine, kind, path, data):
    case = data.draw(cases(kind, path), label="case")
    assert_matches_oracle(case, run_engine(case, spark_engine))


_PEOPLE = [("Ann", "Lee", date(1980, 1, 31)), ("ann", None, None), ("A|nn", "Li|u", date(2000, 2, 29)), (None, "", date(1980, 1, 31))]
IDENTITIES = {
    "customer": [{"customer_id": c} for c in ["c0", "é2", "a b", "c10"]],
    "account": [{"account_id": a} for a in [-5, 0, 7, 10**12]],
    "composite": [{"customer_id": c, "merchant_id": m} for c in ["c0", "é2", "a b"] for m in [-2, 3]],
    "surrogate": [dict(zip(PII, p)) for p in _PEOPLE],
    "surrogate_composite": [{**dict(zip(PII, p)), "merchant_id": m} for p in _PEOPLE for m in [-2, 3]],
}
_ALL_BUT_MEDIAN = [a for a in AGGS if a != "median"]
# Fixed cases that together cover, on Spark, every aggregation, granularity, aligned (dense) and unaligned
# (time-based) windows, composite and PII keys: (kind, granularity, layout, windows, aggregations).
COVERAGE = [
    ("rolling", "hourly", "surrogate_composite", ["1h", "3h", "1d"], {"amount": _ALL_BUT_MEDIAN, "qty": ["count", "sum"]}),
    ("rolling", "hourly", "composite", ["90m", "30s", "2h"], {"amount": AGGS}),
    ("rolling", "daily", "surrogate", ["1d", "7d", "2w"], {"amount": _ALL_BUT_MEDIAN}),
    ("rolling", "daily", "surrogate_composite", ["36h", "12h", "1d"], {"amount": AGGS, "qty": ["median", "max"]}),
    ("rolling", "weekly", "account", ["7d", "2w"], {"amount": _ALL_BUT_MEDIAN}),
    ("rolling", "weekly", "surrogate", ["10d", "1d"], {"amount": AGGS}),
    ("rolling", "monthly", "surrogate_composite", ["7d", "30d", "45d"], {"amount": AGGS}),
    ("latest", "daily", "surrogate_composite", [], {}),
    ("rows", "hourly", "composite", [], {}),
]


def coverage_case(n: int, kind: str, gran: str, layout: str, windows: list[str], aggs: dict) -> Case:
    """Events with ties, nulls and NaNs around every boundary and window edge of five partitions."""
    rng = random.Random(n)
    first = interval_start(BASE_DAYS[n % len(BASE_DAYS)] + timedelta(hours=rng.randrange(24)), gran)
    bounds = [first]
    for _ in range(5):
        bounds.append(next_start(bounds[-1], gran))
    case = Case(kind, layout, gran, bounds, prev_start(first, gran), rolling=[(windows, aggs)] if windows else [],
                latest=["amount", "qty", "status"] if kind == "latest" else [], tz=TIME_ZONES[n % len(TIME_ZONES)],
                time_unit=["us", "ns"][n % 2])
    span = bounds[1] - bounds[0]
    anchors = sorted(set(bounds) | {b - window_td(w) for b in bounds for w in windows})
    times = [rng.choice(anchors) + rng.choice([timedelta(0), US, -US, rng.randrange(-10**6, 10**6) * span / 10**6]) for _ in range(25)]
    for _ in range(120):
        amount = rng.choice([None, math.nan, round(rng.uniform(-1e3, 1e3), 2), 853.54])
        case.events.append({**rng.choice(IDENTITIES[layout]), "amount": amount, "qty": rng.choice([None, rng.randrange(-50, 50)]),
                            "status": rng.choice([None, "ok", ""]), "_t": rng.choice(times)})
    return case


@pytest.mark.parametrize("n", range(len(COVERAGE)), ids=[f"{c[0]}-{c[1]}-{c[2]}-{'+'.join(c[3]) or 'none'}" for c in COVERAGE])
def test_spark_covers_every_aggregation_granularity_window_and_key_layout(spark_engine, n):
    case = coverage_case(n, *COVERAGE[n])
    if case.kind == "rolling":
        assert case.dense == all(a != "median" for aggs in COVERAGE[n][4].values() for a in aggs) and case.dense == (n in (0, 2, 4))
    assert_matches_oracle(case, run_engine(case, spark_engine))


def test_coverage_cases_cover_what_they_claim():
    rolling = [c for c in COVERAGE if c[0] == "rolling"]
    assert {a for c in rolling for aggs in c[4].values() for a in aggs} == set(AGGS)
    assert {c[1] for c in rolling} == {"hourly", "daily", "weekly", "monthly"}
    assert {c[2] for c in COVERAGE} >= {"surrogate", "surrogate_composite", "composite"}
    assert {coverage_case(n, *c).dense for n, c in enumerate(COVERAGE) if c[0] == "rolling"} == {True, False}


# --------------------------------------------------------------------------------------------
# Deterministic unit tests
# --------------------------------------------------------------------------------------------


def d(text: str) -> datetime:
    """A naive UTC datetime from ISO text."""
    return datetime.fromisoformat(text)


def write(tmp_path: Path, rows: list[dict], name: str = "events.parquet", schema=None) -> Source:
    path = tmp_path / name
    pl.DataFrame(rows, schema=schema, orient="row" if rows and not isinstance(rows[0], dict) else None).write_parquet(path)
    return Source(str(path), timestamp="ts")


def rolling_feature(source: Source, windows, aggregations, granularity="daily", start="2024-01-01", **kw) -> Feature:
    return Feature(
        name="f",
        entities=[Entity("customer", join_key="customer_id")],
        source=source,
        granularity=granularity,
        start=start,
        metrics=[Rolling(windows, aggregations)],
        **kw,
    )


EVENT_SCHEMA = {"customer_id": pl.String, "ts": pl.Datetime("us"), "amount": pl.Float64}
# The same feature through both algorithms: a median forces the time-based one.
PATH_AGGS = {
    "dense": ["count", "sum", "mean", "std", "var", "min", "max"],
    "time": ["count", "sum", "mean", "std", "var", "min", "max", "median"],
}


@pytest.mark.parametrize("path", ["dense", "time"])
def test_event_at_stamp_belongs_to_next_interval(tmp_path, path):
    source = write(
        tmp_path,
        [{"customer_id": "a", "ts": d("2024-01-01T12:00"), "amount": 1.0},
         {"customer_id": "a", "ts": d("2024-01-02T00:00"), "amount": 10.0}],
        schema=EVENT_SCHEMA,
    )
    feature = rolling_feature(source, ["1d"], {"amount": PATH_AGGS[path]})
    out = PolarsEngine().compute(feature, ["2024-01-01", "2024-01-02", "2024-01-03"])
    first, second, third = (out[k].to_dicts() for k in ["2024-01-01", "2024-01-02", "2024-01-03"])
    assert [(r["feature_timestamp"], r["amount_count_1d"], r["amount_sum_1d"]) for r in first] == [
        (datetime(2024, 1, 2, tzinfo=UTC), 1, 1.0)
    ]
    assert [(r["feature_timestamp"], r["amount_count_1d"], r["amount_sum_1d"], r["amount_max_1d"]) for r in second] == [
        (datetime(2024, 1, 3, tzinfo=UTC), 1, 10.0, 10.0)
    ]
    # 2024-01-03: the window [01-03, 01-04) is empty, but the event at 01-02 00:00 lies in
    # [b_i - 1d, b_{i+1}) = [01-02, 01-04), so the row exists with count 0.
    assert [(r["amount_count_1d"], r["amount_sum_1d"]) for r in third] == [(0, None)]


@pytest.mark.parametrize("path", ["dense", "time"])
def test_emptied_window_gives_count_zero_then_no_row(tmp_path, path):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": 4.0}], schema=EVENT_SCHEMA)
    feature = rolling_feature(source, ["1d", "3d"], {"amount": PATH_AGGS[path]})
    keys = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-06"]
    out = PolarsEngine().compute(feature, keys)
    counts = {k: [(r["amount_count_1d"], r["amount_count_3d"]) for r in out[k].to_dicts()] for k in keys}
    assert counts == {
        "2024-01-01": [(1, 1)],
        "2024-01-02": [(0, 1)],
        "2024-01-03": [(0, 1)],
        "2024-01-04": [(0, 0)],  # the longest window empties here: the row says "no activity"
        "2024-01-05": [],
        "2024-01-06": [],
    }
    emptied = out["2024-01-04"].row(0, named=True)
    for agg in PATH_AGGS[path]:
        if agg != "count":
            assert emptied[f"amount_{agg}_3d"] is None and emptied[f"amount_{agg}_1d"] is None
    mid = out["2024-01-02"].row(0, named=True)
    assert mid["amount_sum_3d"] == 4.0 and mid["amount_sum_1d"] is None


@pytest.mark.parametrize("path", ["dense", "time"])
def test_std_and_var_of_one_value_are_null(tmp_path, path):
    source = write(
        tmp_path,
        [{"customer_id": "a", "ts": d("2024-01-01T01:00"), "amount": 3.0},
         {"customer_id": "a", "ts": d("2024-01-01T02:00"), "amount": None},
         {"customer_id": "b", "ts": d("2024-01-01T01:00"), "amount": 1.0},
         {"customer_id": "b", "ts": d("2024-01-01T05:00"), "amount": 4.0}],
        schema=EVENT_SCHEMA,
    )
    feature = rolling_feature(source, ["1d"], {"amount": PATH_AGGS[path]})
    a, b = PolarsEngine().compute(feature, ["2024-01-01"])["2024-01-01"].to_dicts()
    assert (a["customer_id"], a["amount_count_1d"], a["amount_mean_1d"], a["amount_std_1d"], a["amount_var_1d"]) == ("a", 1, 3.0, None, None)
    assert (b["customer_id"], b["amount_count_1d"]) == ("b", 2)
    assert math.isclose(b["amount_var_1d"], 4.5) and math.isclose(b["amount_std_1d"], math.sqrt(4.5))


@pytest.mark.parametrize("path", ["dense", "time"])
def test_std_of_identical_values_is_zero(tmp_path, path):
    # The entity's history is spread out (-700.24) but the window holds two identical values:
    # std and var must be 0 within the float tolerance.
    source = write(
        tmp_path,
        [{"customer_id": "a", "ts": d("2024-01-01T01:00"), "amount": -700.24},
         {"customer_id": "a", "ts": d("2024-01-02T01:00"), "amount": 853.54},
         {"customer_id": "a", "ts": d("2024-01-02T02:00"), "amount": 853.54}],
        schema=EVENT_SCHEMA,
    )
    feature = rolling_feature(source, ["1d"], {"amount": PATH_AGGS[path]})
    row = PolarsEngine().compute(feature, ["2024-01-02"])["2024-01-02"].row(0, named=True)
    assert row["amount_count_1d"] == 2
    assert math.isclose(row["amount_var_1d"], 0.0, abs_tol=ABS_TOL)
    assert math.isclose(row["amount_std_1d"], 0.0, abs_tol=ABS_TOL), row["amount_std_1d"]


def test_only_nulls_in_window_count_zero_but_row_exists(tmp_path):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T01:00"), "amount": None}], schema=EVENT_SCHEMA)
    for aggs in PATH_AGGS.values():
        row = PolarsEngine().compute(rolling_feature(source, ["1d"], {"amount": aggs}), ["2024-01-01"])["2024-01-01"]
        assert row.height == 1 and row["amount_count_1d"].to_list() == [0] and row["amount_sum_1d"].to_list() == [None]


@pytest.mark.parametrize("path", ["dense", "time"])
def test_nan_is_missing_like_null_in_every_aggregation(tmp_path, path):
    # 'a': [1.0, NaN, 3.0] aggregates [1.0, 3.0]; 'b': [NaN] is a window with no value (count 0, nulls), but a row.
    source = write(
        tmp_path,
        [{"customer_id": "a", "ts": d("2024-01-01T01:00"), "amount": 1.0},
         {"customer_id": "a", "ts": d("2024-01-01T02:00"), "amount": math.nan},
         {"customer_id": "a", "ts": d("2024-01-01T03:00"), "amount": 3.0},
         {"customer_id": "b", "ts": d("2024-01-01T01:00"), "amount": math.nan}],
        schema=EVENT_SCHEMA,
    )
    frame = PolarsEngine().compute(rolling_feature(source, ["1d"], {"amount": PATH_AGGS[path]}), ["2024-01-01"])["2024-01-01"]
    a, b = frame.to_dicts()
    want_a = {"count": 2, "sum": 4.0, "mean": 2.0, "min": 1.0, "max": 3.0, "var": 2.0, "std": math.sqrt(2.0), "median": 2.0}
    for agg in PATH_AGGS[path]:
        got = a[f"amount_{agg}_1d"]
        assert got is not None and math.isclose(got, want_a[agg]), (agg, got)
        assert b[f"amount_{agg}_1d"] == (0 if agg == "count" else None), (agg, b[f"amount_{agg}_1d"])


def test_nan_is_not_counted_by_a_count_only_column(tmp_path):
    source = write(
        tmp_path,
        [{"customer_id": "a", "ts": d("2024-01-01T01:00"), "amount": math.nan},
         {"customer_id": "a", "ts": d("2024-01-01T02:00"), "amount": 2.0},
         {"customer_id": "a", "ts": d("2024-01-01T03:00"), "amount": None}],
        schema=EVENT_SCHEMA,
    )
    for windows in (["1d"], ["1d", "36h"]):  # dense, then time-based
        frame = PolarsEngine().compute(rolling_feature(source, windows, {"amount": ["count"]}), ["2024-01-01"])["2024-01-01"]
        assert frame["amount_count_1d"].to_list() == [1]


def test_latest_stores_nan_as_null(tmp_path):
    source = write(
        tmp_path,
        [{"customer_id": "a", "ts": d("2024-01-01T01:00"), "amount": 5.0},
         {"customer_id": "a", "ts": d("2024-01-01T02:00"), "amount": math.nan}],
        schema=EVENT_SCHEMA,
    )
    feature = Feature(name="f", entities=[Entity("customer", join_key="customer_id")], source=source, metrics=[Latest(["amount"])])
    frame = PolarsEngine().compute(feature, ["2024-01-01"])["2024-01-01"]
    assert frame["latest_amount"].to_list() == [None]


def test_latest_tie_goes_to_the_last_source_row(tmp_path):
    # Three events of 'a' at the same instant, in this source order: the last one (3.0) is the newest.
    source = write(
        tmp_path,
        [{"customer_id": "a", "ts": d("2024-01-01T05:00"), "amount": 2.0},
         {"customer_id": "b", "ts": d("2024-01-01T05:00"), "amount": 9.0},
         {"customer_id": "a", "ts": d("2024-01-01T05:00"), "amount": 1.0},
         {"customer_id": "a", "ts": d("2024-01-01T05:00"), "amount": 3.0},
         {"customer_id": "a", "ts": d("2024-01-01T04:00"), "amount": 7.0}],
        schema=EVENT_SCHEMA,
    )
    feature = Feature(name="f", entities=[Entity("customer", join_key="customer_id")], source=source, metrics=[Latest(["amount"])])
    frame = PolarsEngine().compute(feature, ["2024-01-01"])["2024-01-01"]
    assert frame.select("customer_id", "latest_amount").rows() == [("a", 3.0), ("b", 9.0)]


def test_latest_compares_times_at_the_source_precision(tmp_path):
    # 300 ns apart: not a tie, although both are stored as the same microsecond. The newer one (first
    # in source order) wins.
    five_am_ns = 1_704_085_200 * 10**9  # 2024-01-01 05:00 UTC
    ts = pl.Series("ts", [five_am_ns + 900, five_am_ns + 600], dtype=pl.Int64).cast(pl.Datetime("ns"))
    path = tmp_path / "ns.parquet"
    pl.DataFrame({"customer_id": ["a", "a"], "ts": ts, "amount": [1.0, 2.0]}).write_parquet(path)
    feature = Feature(name="f", entities=[Entity("customer", join_key="customer_id")], source=Source(str(path), timestamp="ts"),
                      metrics=[Latest(["amount"])])
    row = PolarsEngine().compute(feature, ["2024-01-01"])["2024-01-01"].row(0, named=True)
    assert row["latest_amount"] == 1.0
    assert row["latest_event_timestamp"] == datetime(2024, 1, 1, 5, tzinfo=UTC)


def test_window_labels_are_canonical(tmp_path):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T01:00"), "amount": 1.0}], schema=EVENT_SCHEMA)
    feature = rolling_feature(source, ["2w", "36h", "90m", "45s", timedelta(hours=48), "120m"], {"amount": ["sum"]})
    frame = PolarsEngine().compute(feature, ["2024-01-01"])["2024-01-01"]
    assert frame.columns == [
        "customer_id", "feature_timestamp",
        "amount_sum_14d", "amount_sum_36h", "amount_sum_90m", "amount_sum_45s", "amount_sum_2d", "amount_sum_2h",
    ]


def test_aware_timestamps_are_converted_to_utc(tmp_path):
    # 00:30 in Paris on 2024-01-02 is 23:30 UTC on 2024-01-01: it belongs to the partition of 2024-01-01.
    ts = pl.Series("ts", [datetime(2024, 1, 2, 0, 30)]).dt.replace_time_zone("Europe/Paris")
    path = tmp_path / "paris.parquet"
    pl.DataFrame({"customer_id": ["a"], "ts": ts, "amount": [2.0]}).write_parquet(path)
    feature = Feature(name="f", entities=[Entity("customer", join_key="customer_id")],
                      source=Source(str(path), timestamp="ts"), metrics=[Latest(["amount"])])
    out = PolarsEngine().compute(feature, ["2024-01-01", "2024-01-02"])
    assert out["2024-01-02"].height == 0
    row = out["2024-01-01"].row(0, named=True)
    assert row["latest_event_timestamp"] == datetime(2024, 1, 1, 23, 30, tzinfo=UTC)
    assert row["feature_timestamp"] == datetime(2024, 1, 2, tzinfo=UTC)
    assert out["2024-01-01"].schema["latest_event_timestamp"] == pl.Datetime("us", "UTC")


def test_rows_outside_the_read_range_are_not_read(tmp_path):
    # A broken row (null key) before b_0 - longest window and after b_n must not be read at all.
    source = write(
        tmp_path,
        [{"customer_id": None, "ts": d("2023-12-29T23:59:59.999999"), "amount": 1.0},
         {"customer_id": "a", "ts": d("2023-12-30T00:00"), "amount": 2.0},
         {"customer_id": None, "ts": d("2024-01-03T00:00"), "amount": 1.0}],
        schema=EVENT_SCHEMA,
    )
    out = PolarsEngine().compute(rolling_feature(source, ["3d"], {"amount": ["sum"]}), ["2024-01-02"])
    # 'a' at 12-30 00:00 is inside [b_0 - 3d, b_1) = [12-30, 01-03) but not in the window [12-31, 01-03).
    assert out["2024-01-02"].select("customer_id", "amount_sum_3d").rows() == [("a", None)]


@pytest.mark.parametrize("path", ["dense", "time"])
def test_composite_and_surrogate_keys(tmp_path, path):
    rows = [
        {"first_name": "Ann", "last_name": "Lee", "dob": date(1990, 5, 1), "merchant_id": 2, "ts": d("2024-01-01T03:00"), "amount": 1.0},
        {"first_name": "Ann", "last_name": "Lee", "dob": date(1990, 5, 1), "merchant_id": 1, "ts": d("2024-01-01T04:00"), "amount": 2.0},
        {"first_name": "Ann", "last_name": "Lee", "dob": date(1990, 5, 1), "merchant_id": 2, "ts": d("2024-01-01T05:00"), "amount": 3.0},
        {"first_name": "Bob", "last_name": None, "dob": None, "merchant_id": 2, "ts": d("2024-01-01T06:00"), "amount": 5.0},
    ]
    source = write(tmp_path, rows)
    customer = Entity("customer", join_key="customer_id", from_columns=list(PII))
    feature = Feature(name="f", entities=[Entity.composite("cm", customer, Entity("merchant", join_key="merchant_id"))],
                      source=source, start="2024-01-01", metrics=[Rolling(["1d"], {"amount": PATH_AGGS[path]})])
    got = PolarsEngine().compute(feature, ["2024-01-01"])["2024-01-01"]
    ann, bob = surrogate_key(("Ann", "Lee", date(1990, 5, 1))), surrogate_key(("Bob", None, None))
    want = sorted([(ann, 1, 1, 2.0), (ann, 2, 2, 4.0), (bob, 2, 1, 5.0)])
    assert got.select("customer_id", "merchant_id", "amount_count_1d", "amount_sum_1d").rows() == want
    assert not set(PII) & set(got.columns)


def test_unordered_partition_keys_give_the_same_frames(tmp_path):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": 4.0}], schema=EVENT_SCHEMA)
    feature = rolling_feature(source, ["2d"], {"amount": ["sum", "count"]})
    keys = ["2024-01-01", "2024-01-02", "2024-01-03"]
    forward, backward = PolarsEngine().compute(feature, keys), PolarsEngine().compute(feature, keys[::-1])
    assert set(forward) == set(backward) == set(keys)
    for k in keys:
        assert_frame_equal(forward[k], backward[k])


# --- bad input -----------------------------------------------------------------------------


def test_missing_source_file_is_a_data_error(tmp_path):
    feature = rolling_feature(Source(str(tmp_path / "nope.parquet"), timestamp="ts"), ["1d"], {"amount": ["sum"]})
    with pytest.raises(DataError, match="nope.parquet"):
        PolarsEngine().compute(feature, ["2024-01-01"])


@pytest.mark.parametrize("missing", ["amount", "customer_id", "ts"])
def test_missing_column_is_a_data_error(tmp_path, missing):
    row = {"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": 4.0}
    del row[missing]
    source = write(tmp_path, [row])
    with pytest.raises(DataError, match=missing):
        PolarsEngine().compute(rolling_feature(source, ["1d"], {"amount": ["sum"]}), ["2024-01-01"])


def test_missing_latest_column_is_a_data_error(tmp_path):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": 4.0}])
    feature = Feature(name="f", entities=[Entity("customer", join_key="customer_id")], source=source, metrics=[Latest(["nope"])])
    with pytest.raises(DataError, match="nope"):
        PolarsEngine().compute(feature, ["2024-01-01"])


def test_missing_pii_column_is_a_data_error(tmp_path):
    source = write(tmp_path, [{"first_name": "a", "last_name": "b", "ts": d("2024-01-01T10:00"), "amount": 4.0}])
    feature = Feature(name="f", entities=[_pii_customer()], source=source, metrics=[Rolling(["1d"], {"amount": ["sum"]})])
    with pytest.raises(DataError, match="dob"):
        PolarsEngine().compute(feature, ["2024-01-01"])


def test_string_timestamp_is_a_data_error(tmp_path):
    source = write(tmp_path, [{"customer_id": "a", "ts": "2024-01-01T10:00:00", "amount": 4.0}])
    with pytest.raises(DataError, match="ts"):
        PolarsEngine().compute(rolling_feature(source, ["1d"], {"amount": ["sum"]}), ["2024-01-01"])


def test_non_numeric_aggregated_column_is_a_data_error(tmp_path):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": "4.0"}])
    with pytest.raises(DataError, match="amount"):
        PolarsEngine().compute(rolling_feature(source, ["1d"], {"amount": ["sum"]}), ["2024-01-01"])


@pytest.mark.parametrize("kind", ["rolling", "latest", "rows"])
@pytest.mark.parametrize("bad", [None, ""])
def test_null_or_empty_join_key_is_a_data_error(tmp_path, kind, bad):
    source = write(
        tmp_path,
        [{"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": 4.0},
         {"customer_id": bad, "ts": d("2024-01-01T11:00"), "amount": 4.0}],
        schema=EVENT_SCHEMA,
    )
    metrics = {"rolling": [Rolling(["1d"], {"amount": ["sum"]})], "latest": [Latest(["amount"])], "rows": []}[kind]
    feature = Feature(name="f", entities=[Entity("customer", join_key="customer_id")], source=source, metrics=metrics)
    with pytest.raises(DataError, match="customer_id"):
        PolarsEngine().compute(feature, ["2024-01-01"])


def test_null_composite_key_part_is_a_data_error(tmp_path):
    source = write(
        tmp_path,
        [{"customer_id": "a", "merchant_id": None, "ts": d("2024-01-01T10:00"), "amount": 4.0}],
        schema={"customer_id": pl.String, "merchant_id": pl.Int64, "ts": pl.Datetime("us"), "amount": pl.Float64},
    )
    feature = Feature(name="f", entities=[Entity("cm", join_keys=["customer_id", "merchant_id"])], source=source,
                      metrics=[Rolling(["1d"], {"amount": ["sum"]})])
    with pytest.raises(DataError, match="merchant_id"):
        PolarsEngine().compute(feature, ["2024-01-01"])


def test_unknown_aggregation_is_a_definition_error():
    with pytest.raises(DefinitionError, match="mode"):
        Rolling(["7d"], {"amount": ["mode"]})


@pytest.mark.parametrize("window", ["7x", "0d", "-1d", "d", "1.5h", "", timedelta(0), timedelta(milliseconds=1500)])
def test_bad_window_is_a_definition_error(window):
    with pytest.raises(DefinitionError):
        Rolling([window], {"amount": ["sum"]})


@pytest.mark.parametrize("name", ["../evil", "a/b", "a.b", "", "1abc", "with space"])
def test_unsafe_feature_name_is_a_definition_error(tmp_path, name):
    with pytest.raises(DefinitionError):
        Feature(name=name, entities=[Entity("customer", join_key="customer_id")], source=Source(str(tmp_path / "x.parquet"), timestamp="ts"))


def test_partition_before_start_is_a_definition_error(tmp_path):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": 4.0}])
    feature = rolling_feature(source, ["1d"], {"amount": ["sum"]}, start="2024-01-02")
    with pytest.raises(DefinitionError, match="2024-01-01"):
        PolarsEngine().compute(feature, ["2024-01-01", "2024-01-02"])


@pytest.mark.parametrize(
    "granularity,key",
    [
        ("daily", "2024/01/05"),
        ("daily", "2024-01-05-13:00"),
        ("daily", "yesterday"),
        ("hourly", "2024-01-05"),
        ("hourly", "2024-01-05-13:30"),
        ("weekly", "2024-01-08"),  # a Monday
        ("monthly", "2024-02-05"),
        ("monthly", "2024-02"),
    ],
)
def test_malformed_partition_key_is_a_definition_error(tmp_path, granularity, key):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": 4.0}])
    feature = rolling_feature(source, ["1d"], {"amount": ["sum"]}, granularity=granularity, start="2023-12-01" if granularity == "monthly" else "2023-12-31")
    with pytest.raises(DefinitionError):
        PolarsEngine().compute(feature, [key])


def test_non_consecutive_partitions_are_a_definition_error(tmp_path):
    source = write(tmp_path, [{"customer_id": "a", "ts": d("2024-01-01T10:00"), "amount": 4.0}])
    with pytest.raises(DefinitionError):
        PolarsEngine().compute(rolling_feature(source, ["1d"], {"amount": ["sum"]}), ["2024-01-01", "2024-01-03"])


@pytest.mark.parametrize("path", ["dense", "time"])
def test_backfill_is_bit_identical_to_partitions_alone(tmp_path, path):
    """Long histories of inexact decimals: a window's sum must not depend on where the computed range starts."""
    rng = np.random.default_rng(11)
    n = 4_000
    rows = {
        "customer_id": rng.choice(["a", "b", "c"], n),
        "ts": np.datetime64("2023-12-01", "us") + rng.integers(0, 90 * 86_400_000_000, n).astype("timedelta64[us]"),
        "amount": np.round(rng.lognormal(3, 2, n), 2),
    }
    path_ = tmp_path / "events.parquet"
    pl.DataFrame(rows).write_parquet(path_)
    feature = rolling_feature(Source(str(path_), timestamp="ts"), ["7d", "30d"], {"amount": PATH_AGGS[path]})
    keys = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(55)]
    together = PolarsEngine().compute(feature, keys)
    for key in keys[::6]:
        assert_frame_equal(together[key], PolarsEngine().compute(feature, [key])[key], check_exact=True)
        assert_frame_equal(together[key], PolarsEngine().compute(feature, keys[keys.index(key) :])[key], check_exact=True)


@pytest.mark.parametrize("fmt", ["csv", "delta"])
def test_csv_and_delta_sources_give_the_parquet_result(tmp_path, fmt):
    rng = np.random.default_rng(5)
    n = 500
    events = pl.DataFrame({
        "customer_id": rng.choice(["a", "b", "c", "d"], n),
        "ts": np.datetime64("2023-12-20", "us") + rng.integers(0, 20 * 86_400, n).astype("timedelta64[s]").astype("timedelta64[us]"),
        "amount": np.round(rng.uniform(0, 100, n), 2),
    })
    events.write_parquet(tmp_path / "events.parquet")
    if fmt == "csv":
        events.write_csv(tmp_path / "events.csv")
        other = Source(str(tmp_path / "events.csv"), timestamp="ts")
    else:
        events.write_delta(tmp_path / "events_delta")
        other = Source(str(tmp_path / "events_delta"), timestamp="ts")
    assert other.format == fmt
    keys = [f"2024-01-0{i}" for i in range(1, 8)]
    want = PolarsEngine().compute(rolling_feature(Source(str(tmp_path / "events.parquet"), timestamp="ts"), ["1d", "3d"], {"amount": ["sum", "count", "max"]}), keys)
    got = PolarsEngine().compute(rolling_feature(other, ["1d", "3d"], {"amount": ["sum", "count", "max"]}), keys)
    for key in keys:
        assert_frame_equal(got[key], want[key], check_exact=True)


def test_source_fingerprint_follows_content_not_mtime(tmp_path):
    path = tmp_path / "events.parquet"
    pl.DataFrame({"customer_id": ["a"], "ts": [d("2024-01-01T01:00")], "amount": [1.0]}).write_parquet(path)
    source = Source(str(path), timestamp="ts")
    first = source.fingerprint()
    path.write_bytes(path.read_bytes())  # new mtime, same bytes
    assert source.fingerprint() == first
    pl.DataFrame({"customer_id": ["a"], "ts": [d("2024-01-01T01:00")], "amount": [2.0]}).write_parquet(path)
    assert source.fingerprint() != first
    assert Source("s3://bucket/events.parquet", timestamp="ts").fingerprint() is None
