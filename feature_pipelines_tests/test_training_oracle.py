"""Point-in-time training retrieval (`FeatureStore.get_training_data`) checked against its contract.

Contract, as tested here:

* for each label row and requested feature, the newest stored row of the same entity with
  `feature_timestamp <= label timestamp` (inclusive); with a `ttl`, that row must also satisfy
  `label - feature_timestamp <= ttl` (inclusive), otherwise nulls; no row -> nulls. A stored null is
  a value: it never falls back to an older row;
* the output is exactly the input rows in input order (duplicates kept), the input columns
  untouched (names, dtypes, values, the timestamp column in its own dtype and zone), then the
  feature columns `<feature>__<column>` in the order requested (a feature's stored column order
  when not subset); polars output for pandas input too;
* naive label timestamps are UTC, aware ones are converted exactly; a non-Datetime timestamp is an
  error, and so are unknown features / columns / versions, a missing timestamp / key / PII column
  and an output column name colliding with an input column (each a FeaturePipelinesError naming the
  problem and what exists);
* `name@x.y.z` pins a version (an older PATCH keeps its old values), `name:column` subsets,
  Feature objects and FeatureServices are accepted, entities with `from_columns` are keyed from PII
  columns through `feature_pipelines.keys` (the documented surrogate key);
* only partitions that can match are read: partition P holds rows stamped within
  [start of P, end of P]; P is needed iff start <= latest label and (with a ttl)
  end >= earliest label - ttl. Tested by deleting the data files of the other partitions.

The oracle is deliberately naive: stored rows are Python dicts (feature_timestamp as an aware UTC
`datetime`), label instants are aware UTC datetimes, and every (label, feature) pair loops over all
stored rows of the requested version. Polars is only used to *write* partition frames into a
`LocalStore` and to build the label frame; nothing from `feature_pipelines.retrieval` is reused.
"""

from __future__ import annotations

import itertools
import math
import shutil
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from feature_pipelines.errors import FeaturePipelinesError
from feature_pipelines.keys import surrogate_key
from feature_pipelines.registry import Registry
from feature_pipelines.retrieval import FeatureStore
from feature_pipelines.spec.entity import Entity
from feature_pipelines.spec.feature import Feature, FeatureService
from feature_pipelines.spec.metrics import Latest, Rolling
from feature_pipelines.spec.source import Source
from feature_pipelines.store import LocalStore

UTC = timezone.utc
US = timedelta(microseconds=1)
T0 = datetime(2024, 1, 1, tzinfo=UTC)
FT = "feature_timestamp"
GRAIN = {"hourly": timedelta(hours=1), "daily": timedelta(days=1)}
KEY_FORMAT = {"hourly": "%Y-%m-%d-%H:%M", "daily": "%Y-%m-%d"}
TTL = {None: None, "90m": timedelta(minutes=90), "3h": timedelta(hours=3), "12h": timedelta(hours=12),
       "1d": timedelta(days=1), "36h": timedelta(hours=36), "2d": timedelta(days=2)}

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

CUSTOMER = Entity("customer", join_key="customer_id")
MERCHANT = Entity("merchant", join_key="merchant_id")
KEY_DTYPES = {"customer_id": pl.String, "merchant_id": pl.Int64, "person_id": pl.String}

# The three feature shapes used throughout: (entities, granularity, metrics, stored value columns).
# The stored value columns are what the engine would write for these metrics, in its order.
SHAPES: dict[str, tuple] = {
    "spend": ([CUSTOMER], "daily", [Rolling(["1d"], {"amount": ["sum", "count"]})],
              {"amount_sum_1d": pl.Float64, "amount_count_1d": pl.Int64}),
    "pair": ([CUSTOMER, MERCHANT], "hourly", [Latest(["category"])],
             {"latest_category": pl.String, "latest_event_timestamp": pl.Datetime("us", "UTC")}),
    # no metrics: stored columns are the source's, deliberately not in alphabetical order
    "events": ([CUSTOMER], "daily", [], {"zeta": pl.Int64, "alpha": pl.Float64}),
}


def make_feature(name: str, ttl: str | None = None, *, shape: str | None = None, entities=None, start=T0) -> Feature:
    ents, gran, metrics, _ = SHAPES[shape or name]
    return Feature(name=name, entities=entities or ents, source=Source("unused.parquet", timestamp="ts"),
                   granularity=gran, start=start, metrics=metrics, ttl=ttl)


def value_schema(feature: Feature) -> dict:
    return SHAPES[feature.name][3]


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, minute, second, micro, tzinfo=UTC)


def pkey(gran: str, start: datetime) -> str:
    return start.strftime(KEY_FORMAT[gran])


def frame_of(feature: Feature, rows: list[dict], values: dict | None = None) -> pl.DataFrame:
    """A partition frame: join keys, feature_timestamp (us, UTC), then value columns in stored order."""
    values = values or value_schema(feature)
    schema = {k: KEY_DTYPES[k] for k in feature.join_keys} | {FT: pl.Datetime("us", "UTC")} | values
    return pl.DataFrame({c: [r.get(c) for r in rows] for c in schema}, schema=schema)


def write(root: Path, feature: Feature, partitions: dict[str, list[dict]], values: dict | None = None) -> list:
    """Write partition rows (dicts) for `feature` into the local store at `root`, in one commit."""
    frames = {key: frame_of(feature, rows, values) for key, rows in partitions.items()}
    # allow_empty: some cases patch a partition down to zero rows on purpose.
    return LocalStore(str(root)).write_partitions(feature.name, frames, keys=feature.join_keys, timestamp=FT,
                                                  config_hash=feature.config_hash, allow_empty=True)


def registry(*items) -> Registry:
    reg = Registry()
    for item in items:
        reg.add(item)
    return reg


def labels_frame(rows: list[tuple], ts: str = "label_time", zone: str | None = None, unit: str = "us",
                 keys: tuple[str, ...] = ("customer_id",)) -> pl.DataFrame:
    """Label rows (key values..., aware UTC instant) as a frame; naive (UTC wall clock) when zone is None."""
    data: dict[str, Any] = {k: [r[i] for r in rows] for i, k in enumerate(keys)}
    frame = pl.DataFrame(data, schema={k: KEY_DTYPES[k] for k in keys})
    return frame.with_columns(ts_series(ts, [r[-1] for r in rows], zone, unit))


def ts_series(name: str, instants: list[datetime | None], zone: str | None, unit: str) -> pl.Series:
    naive = [None if t is None else t.astimezone(UTC).replace(tzinfo=None) for t in instants]
    s = pl.Series(name, naive, dtype=pl.Datetime(unit))
    return s if zone is None else s.dt.replace_time_zone("UTC").dt.convert_time_zone(zone)


def data_file(root: Path, feature: str, partition: str) -> Path:
    """The data file the newest manifest of `feature` references for `partition`."""
    manifest = LocalStore(str(root)).latest(feature)
    return root / feature / manifest["partitions"][partition]["file"]


# --------------------------------------------------------------------------------------------
# The oracle
# --------------------------------------------------------------------------------------------


@dataclass
class Request:
    """One requested feature as the oracle sees it: which stored rows, which columns, which ttl."""

    name: str
    keys: list[str]
    rows: list[dict]  # {"keys": {...}, "ft": aware UTC datetime, "values": {...}}
    columns: list[str]
    dtypes: dict
    ttl: timedelta | None
    version: str = "1.0.0"  # the stored version these rows are


def oracle(label_keys: list[dict], label_instants: list[datetime], requests: list[Request]) -> list[list]:
    """Brute force: for each label and request, loop over every stored row."""
    out = []
    for keys, when in zip(label_keys, label_instants):
        row: list = []
        for req in requests:
            best = None
            for stored in req.rows:
                if any(stored["keys"][k] != keys.get(k) for k in req.keys):
                    continue
                if stored["ft"] > when:
                    continue
                if best is None or stored["ft"] > best["ft"]:
                    best = stored
            if best is not None and req.ttl is not None and when - best["ft"] > req.ttl:
                best = None
            row += [None if best is None else best["values"][c] for c in req.columns]
        out.append(row)
    return out


def same(a: Any, b: Any) -> bool:
    """Exact equality: retrieval copies values, so floats must match bit for bit (sign of zero included)."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, datetime) or isinstance(b, datetime):
        return isinstance(a, datetime) and isinstance(b, datetime) and a.tzinfo is not None and b.tzinfo is not None and a == b
    return type(a) is type(b) and a == b


def check_against_oracle(out: pl.DataFrame, given_labels: pl.DataFrame, label_keys: list[dict],
                         instants: list[datetime], requests: list[Request]) -> None:
    """Output = the input frame untouched, then `<feature>__<column>` columns equal to the oracle's."""
    assert isinstance(out, pl.DataFrame), f"expected a polars DataFrame, got {type(out).__name__}"
    feature_cols = [f"{r.name}__{c}" for r in requests for c in r.columns]
    assert out.columns == given_labels.columns + feature_cols, (
        f"columns {out.columns} != input columns then requested feature columns {given_labels.columns + feature_cols}"
    )
    assert out.height == given_labels.height, f"{out.height} output rows for {given_labels.height} input rows"
    assert_frame_equal(out.select(given_labels.columns), given_labels, check_exact=True)
    expected_dtypes = [r.dtypes[c] for r in requests for c in r.columns]
    got_dtypes = [out.schema[c] for c in feature_cols]
    assert got_dtypes == expected_dtypes, f"feature column dtypes {got_dtypes} != stored dtypes {expected_dtypes}"
    expected = oracle(label_keys, instants, requests)
    got = out.select(feature_cols).rows()
    for i, (want, have) in enumerate(zip(expected, got)):
        for col, w, h in zip(feature_cols, want, have):
            assert same(w, h), (
                f"row {i} (keys {label_keys[i]}, label time {instants[i].isoformat()} UTC), column {col}: "
                f"oracle {w!r}, got {h!r}"
            )


# --------------------------------------------------------------------------------------------
# Randomized data
# --------------------------------------------------------------------------------------------

CUSTOMERS = ["c0", "c1", "é2"]
MERCHANTS = [1, 2]
N_PARTITIONS = {"spend": 5, "pair": 30, "events": 5}  # daily spans Jan 1-6, hourly spans Jan 1 00:00 - Jan 2 06:00
_floats = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, width=64))
_ints = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1))
_strings = st.one_of(st.none(), st.sampled_from(["food", "travel", "", "ü-ñ", "None"]))


def draw_values(data, name: str, ft: datetime) -> dict:
    if name == "spend":
        return {"amount_sum_1d": data.draw(_floats), "amount_count_1d": data.draw(_ints)}
    if name == "pair":
        lag = data.draw(st.one_of(st.none(), st.integers(min_value=0, max_value=10**10)))
        return {"latest_category": data.draw(_strings), "latest_event_timestamp": None if lag is None else ft - lag * US}
    return {"zeta": data.draw(_ints), "alpha": data.draw(_floats)}


def draw_candidates(data, feature: Feature) -> list[dict]:
    """Stored row slots (keys, feature_timestamp, partition index), unique per (entity, timestamp).

    Timestamps cluster on interval starts and ends (a row stamped at a boundary belongs to either
    adjacent partition: both appear), one microsecond inside them, and random points.
    """
    gran = feature.granularity
    step_us = GRAIN[gran] // US
    out, seen = [], set()
    for _ in range(data.draw(st.integers(min_value=0, max_value=10), label=f"{feature.name} rows")):
        keys = {"customer_id": data.draw(st.sampled_from(CUSTOMERS))}
        if "merchant_id" in feature.join_keys:
            keys["merchant_id"] = data.draw(st.sampled_from(MERCHANTS))
        index = data.draw(st.integers(min_value=0, max_value=N_PARTITIONS[feature.name] - 1))
        offset = data.draw(st.one_of(st.sampled_from([0, 1, step_us - 1, step_us]),
                                     st.integers(min_value=0, max_value=step_us)))
        start = T0 + index * GRAIN[gran]
        ft = start + offset * US
        ident = (tuple(sorted(keys.items())), ft)
        if ident in seen:
            continue
        seen.add(ident)
        out.append({"keys": keys, "ft": ft, "partition": pkey(gran, start), "bounds": (start, start + GRAIN[gran])})
    return out


def stored(slot: dict, values: dict) -> dict:
    return {"keys": slot["keys"], "ft": slot["ft"], "values": values, "partition": slot["partition"]}


def as_frame_rows(rows: list[dict]) -> list[dict]:
    return [{**r["keys"], FT: r["ft"], **r["values"]} for r in rows]


@dataclass
class World:
    """One randomized store: features, the rows of each stored version, and partition bounds."""

    root: Path
    features: dict[str, Feature]
    versions: dict[str, dict[str, list[dict]]]  # feature -> version -> stored rows
    bounds: dict[str, dict[str, tuple[datetime, datetime]]]  # feature -> partition key -> [start, end]


def build_world(data, root: Path) -> World:
    features = {
        "spend": make_feature("spend", data.draw(st.sampled_from([None, "1d", "36h", "2d"]), label="spend ttl")),
        "pair": make_feature("pair", data.draw(st.sampled_from([None, "90m", "3h"]), label="pair ttl")),
        "events": make_feature("events", data.draw(st.sampled_from([None, "12h"]), label="events ttl")),
    }
    store = LocalStore(str(root))
    versions: dict[str, dict[str, list[dict]]] = {}
    bounds: dict[str, dict[str, tuple[datetime, datetime]]] = {}
    for name, feature in features.items():
        gran = feature.granularity
        slots = draw_candidates(data, feature)
        rows = [stored(s, draw_values(data, name, s["ft"])) for s in slots]
        parts: dict[str, list[dict]] = {}
        bounds[name] = {}
        for s, r in zip(slots, rows):
            parts.setdefault(s["partition"], []).append(r)
            bounds[name][s["partition"]] = s["bounds"]
        # sometimes an empty partition too (a day without activity); always at least one partition
        if not parts or data.draw(st.booleans(), label=f"{name} empty partition"):
            index = data.draw(st.integers(min_value=0, max_value=N_PARTITIONS[name] - 1))
            start = T0 + index * GRAIN[gran]
            if pkey(gran, start) not in parts:
                parts[pkey(gran, start)] = []
                bounds[name][pkey(gran, start)] = (start, start + GRAIN[gran])
        write(root, feature, {k: as_frame_rows(v) for k, v in parts.items()})
        versions[name] = {"1.0.0": rows}
        if name == "spend" and rows and data.draw(st.booleans(), label="patch spend"):
            # rewrite some partitions with new values, dropping some rows: a PATCH version
            patched = data.draw(st.lists(st.sampled_from(sorted({r["partition"] for r in rows})), min_size=1, unique=True))
            new_parts: dict[str, list[dict]] = {p: [] for p in patched}
            for s, r in zip(slots, rows):
                if s["partition"] in patched and data.draw(st.booleans()):
                    new_parts[s["partition"]].append(stored(s, draw_values(data, name, s["ft"])))
            write(root, feature, {k: as_frame_rows(v) for k, v in new_parts.items()})
            newest = [r for r in rows if r["partition"] not in patched] + [r for v in new_parts.values() for r in v]
            have = store.versions(name)
            if have == ["1.0.0", "1.0.1"]:
                versions[name]["1.0.1"] = newest
            else:
                assert have == ["1.0.0"], have  # identical rewrite: nothing changed, so the rows are the same
    return World(root, features, versions, bounds)


def draw_labels(data, world: World) -> tuple[list[dict], list[datetime]]:
    """Label rows hitting stored timestamps exactly, one microsecond either side, ttl boundaries,
    before any data, random points and exact duplicates of earlier labels."""
    slots = [(name, r) for name, vs in world.versions.items() for rows in vs.values() for r in rows]
    keys_out: list[dict] = []
    instants: list[datetime] = []
    for _ in range(data.draw(st.integers(min_value=1, max_value=12), label="labels")):
        kind = data.draw(st.sampled_from(["row", "row", "row", "random", "before", "duplicate"]))
        keys = {"customer_id": data.draw(st.sampled_from([*CUSTOMERS, "zz"])),
                "merchant_id": data.draw(st.sampled_from([*MERCHANTS, 9]))}
        if kind == "duplicate" and instants:
            i = data.draw(st.integers(min_value=0, max_value=len(instants) - 1))
            keys_out.append(dict(keys_out[i]))
            instants.append(instants[i])
            continue
        if kind == "row" and slots:
            name, row = data.draw(st.sampled_from(slots))
            keys = {**keys, **row["keys"]} if data.draw(st.integers(0, 4)) else keys
            offsets = [timedelta(0), -US, US]
            ttl = TTL[world.features[name].ttl]
            if ttl is not None:
                offsets += [ttl, ttl + US, ttl - US]
            when = row["ft"] + data.draw(st.sampled_from(offsets))
        elif kind == "before":
            when = T0 - data.draw(st.integers(min_value=1, max_value=10**11)) * US
        else:
            when = T0 + data.draw(st.integers(min_value=-86_400 * 10**6, max_value=7 * 86_400 * 10**6)) * US
        keys_out.append(keys)
        instants.append(when)
    return keys_out, instants


def draw_requests(data, world: World) -> tuple[list, list[Request]]:
    """Feature references (names, pins, column subsets, Feature objects, a FeatureService) and what they mean."""
    names = data.draw(st.permutations(list(world.features)))
    names = names[: data.draw(st.integers(min_value=1, max_value=len(names)))]
    items: list = []
    requests: list[Request] = []
    pinned = False
    for name in names:
        feature = world.features[name]
        dtypes = value_schema(feature)
        version = data.draw(st.sampled_from([None, *world.versions[name]]), label=f"{name} version")
        newest = max(world.versions[name], key=lambda v: tuple(int(x) for x in v.split(".")))
        ref = name if version is None else f"{name}@{version}"
        pinned |= version is not None
        columns = data.draw(st.one_of(st.none(), st.lists(st.sampled_from(list(dtypes)), min_size=1, unique=True)),
                            label=f"{name} columns")
        if columns is None:
            items.append(feature if version is None and data.draw(st.booleans()) else ref)
        else:
            items += [f"{ref}:{c}" for c in columns]
        requests.append(Request(name, feature.join_keys, world.versions[name][version or newest], columns or list(dtypes),
                                dtypes, TTL[feature.ttl], version or newest))
    if not pinned and data.draw(st.booleans(), label="as a FeatureService"):
        items = [FeatureService("model_inputs", items)]
    return items, requests


def make_label_input(data, keys: list[dict], instants: list[datetime]):
    """The entity_df: polars or pandas, naive or aware (several zones), us or ns, default or custom column name."""
    zone = data.draw(st.sampled_from([None, "UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]), label="zone")
    unit = data.draw(st.sampled_from(["us", "ns"]), label="unit")
    ts = data.draw(st.sampled_from(["label_time", "event_at"]), label="timestamp column")
    frame = pl.DataFrame({
        "row_id": pl.Series(range(len(keys)), dtype=pl.Int64),
        ts: ts_series(ts, instants, zone, unit),
        "customer_id": pl.Series([k["customer_id"] for k in keys], dtype=pl.String),
        "merchant_id": pl.Series([k["merchant_id"] for k in keys], dtype=pl.Int64),
        "note": pl.Series([None if i % 3 else f"n{i}" for i in range(len(keys))], dtype=pl.String),
    })
    # the frame really holds the intended instants (naive = UTC wall clock)
    back = frame[ts].to_list()
    assert [(b.replace(tzinfo=UTC) if b.tzinfo is None else b.astimezone(UTC)) for b in back] == instants
    if data.draw(st.booleans(), label="pandas input"):
        pdf = frame.to_pandas()
        return pdf, pl.from_pandas(pdf), ts
    return frame, frame, ts


_counter = itertools.count()


def fresh_store(project: Path) -> Path:
    """Point the test profile at a new, empty store directory (one per hypothesis example)."""
    name = f"store_{next(_counter)}"
    (project / "env" / "test.yaml").write_text(f"offline_store:\n  kind: local\n  path: ./{name}\n")
    return project / name


def needed(start: datetime, end: datetime, earliest: datetime, latest: datetime, ttl: timedelta | None) -> bool:
    """The contract's pruning rule for a partition whose rows are stamped within [start, end]."""
    return start <= latest and (ttl is None or end >= earliest - ttl)


# --------------------------------------------------------------------------------------------
# 1. Randomized comparison with the oracle
# --------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_training_data_matches_oracle(project: Path, data) -> None:
    root = fresh_store(project)
    try:
        world = build_world(data, root)
        keys, instants = draw_labels(data, world)
        items, requests = draw_requests(data, world)
        given_df, as_polars, ts = make_label_input(data, keys, instants)
        fs = FeatureStore(registry=registry(*world.features.values()))
        out = fs.get_training_data(items, given_df) if ts == "label_time" else fs.get_training_data(items, given_df, timestamp=ts)
        check_against_oracle(out, as_polars, keys, instants, requests)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@SETTINGS
@given(data=st.data())
def test_training_data_matches_oracle_without_unneeded_partition_files(project: Path, data) -> None:
    """Same as above after deleting every data file no request can need: the answer must not change."""
    root = fresh_store(project)
    try:
        world = build_world(data, root)
        keys, instants = draw_labels(data, world)
        items, requests = draw_requests(data, world)
        given_df, as_polars, ts = make_label_input(data, keys, instants)
        store = LocalStore(str(root))
        keep: set[Path] = set()
        every: set[Path] = set()
        requested_versions = {req.name: req.version for req in requests}
        for name in world.features:
            for version in store.versions(name):
                manifest = store.manifest(name, version)
                for part, entry in manifest["partitions"].items():
                    path = root / name / entry["file"]
                    every.add(path)
                    if requested_versions.get(name) != version:
                        continue
                    start, end = world.bounds[name][part]
                    if needed(start, end, min(instants), max(instants), TTL[world.features[name].ttl]):
                        keep.add(path)
        for path in every - keep:
            path.unlink()
        event(f"deleted {len(every - keep)} of {len(every)} files; {len(keep)} kept")
        fs = FeatureStore(registry=registry(*world.features.values()))
        out = fs.get_training_data(items, given_df) if ts == "label_time" else fs.get_training_data(items, given_df, timestamp=ts)
        check_against_oracle(out, as_polars, keys, instants, requests)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# 2. Deterministic tests
# --------------------------------------------------------------------------------------------


def spend_rows(*rows: tuple) -> list[dict]:
    """(customer_id, feature_timestamp, amount_sum_1d, amount_count_1d) tuples as row dicts."""
    return [{"customer_id": c, FT: t, "amount_sum_1d": s, "amount_count_1d": n} for c, t, s, n in rows]


def test_as_of_is_inclusive_and_per_entity(project: Path) -> None:
    spend = make_feature("spend")
    write(project / "store", spend, {
        "2024-01-01": spend_rows(("c1", at(2), 1.0, 1)),  # stamped at the interval end
        "2024-01-02": spend_rows(("c1", at(3), 2.0, 2), ("c2", at(2, 12), 5.0, 5)),
    })
    labels = labels_frame([
        ("c1", at(2) - US),        # just before the first row: nothing
        ("c1", at(2)),             # exactly on it: knowable
        ("c1", at(2, 23, 59, 59, 999_999)),
        ("c1", at(3)),             # exactly on the second row
        ("c2", at(2, 12) - US),
        ("c2", at(2, 12)),
        ("c3", at(3)),             # unknown entity
        ("c1", datetime(2031, 1, 1, tzinfo=UTC)),  # no ttl: still the newest row
    ])
    out = FeatureStore(registry=registry(spend)).get_training_data(["spend"], labels)
    assert out["spend__amount_sum_1d"].to_list() == [None, 1.0, 1.0, 2.0, None, 5.0, None, 2.0]
    assert out["spend__amount_count_1d"].to_list() == [None, 1, 1, 2, None, 5, None, 2]


def test_ttl_boundary_is_inclusive_and_a_stored_null_is_a_value(project: Path) -> None:
    spend = make_feature("spend", "2d")
    write(project / "store", spend, {
        "2024-01-01": spend_rows(("c1", at(2), 1.0, 1)),
        "2024-01-02": spend_rows(("c1", at(3), None, 7), ("c2", at(2, 6), 3.0, 3)),
    })
    labels = labels_frame([
        ("c1", at(2, 12)),           # only the first row is known
        ("c1", at(3) - US),
        ("c1", at(3)),               # newest row has a stored null amount: null, not the older 1.0
        ("c1", at(5)),               # exactly ttl after the newest row: still valid
        ("c1", at(5) + US),          # one microsecond too old: nulls, no fallback
        ("c2", at(4, 6)),            # exactly ttl old
        ("c2", at(4, 6) + US),
        ("c2", at(4, 6) - US),
    ])
    out = FeatureStore(registry=registry(spend)).get_training_data(["spend"], labels)
    assert out["spend__amount_sum_1d"].to_list() == [1.0, 1.0, None, None, None, 3.0, None, 3.0]
    assert out["spend__amount_count_1d"].to_list() == [1, 1, 7, 7, None, 3, None, 3]


def test_newest_row_is_by_timestamp_not_by_file_order(project: Path) -> None:
    """Rows within a data file need not be sorted: the store does not promise any order."""
    events = make_feature("events", "4h")
    hours = [9, 3, 12, 6, 0, 24, 18]
    write(project / "store", events, {"2024-01-01": [
        {"customer_id": c, FT: at(1, 0) + timedelta(hours=h), "zeta": h * 10 + i, "alpha": float(h)}
        for h in hours for i, c in enumerate(["c2", "c1"])
    ]})
    stamps = [at(1, 2), at(1, 6), at(1, 8), at(1, 11, 59), at(1, 13), at(1, 22), at(2), at(2, 4), at(2, 4) + US]
    labels = labels_frame([("c1", t) for t in stamps] + [("c2", t) for t in stamps])
    out = FeatureStore(registry=registry(events)).get_training_data(["events:alpha", "events:zeta"], labels)
    want = [0.0, 6.0, 6.0, 9.0, 12.0, 18.0, 24.0, 24.0, None]
    assert out["events__alpha"].to_list() == want + want
    assert out["events__zeta"].to_list() == [None if a is None else int(a) * 10 + 1 for a in want] + [
        None if a is None else int(a) * 10 for a in want]


def _spend_store(project: Path, ttl: str | None = None) -> Feature:
    spend = make_feature("spend", ttl)
    write(project / "store", spend, {
        "2024-01-01": spend_rows(("c1", at(2), 1.5, 1), ("c2", at(2), -0.0, 4)),
        "2024-01-02": spend_rows(("c1", at(3), 2.5, 2)),
    })
    return spend


def test_output_keeps_input_rows_order_and_columns(project: Path) -> None:
    spend = _spend_store(project)
    instants = [at(3, 5), at(2, 1), at(3, 5), at(1), at(2, 1), at(9)]
    labels = pl.DataFrame({
        "z_first": pl.Series([6, 5, 4, 3, 2, 1], dtype=pl.Int32),
        "customer_id": ["c1", "c2", "c1", "c1", "c2", "zz"],
        "event_at": ts_series("event_at", instants, "Europe/Paris", "ns"),
        "day": [date(2024, 1, d) for d in (3, 2, 3, 1, 2, 9)],
        "flag": [True, None, True, False, None, True],
        "score": pl.Series([0.5, None, 0.5, 1.0, 2.0, 3.0], dtype=pl.Float32),
        "tags": [["a"], [], ["a"], None, ["b", "c"], ["d"]],
    })
    original = labels.clone()
    fs = FeatureStore(registry=registry(spend))
    out = fs.get_training_data(["spend"], labels, timestamp="event_at")
    assert out.columns == [*labels.columns, "spend__amount_sum_1d", "spend__amount_count_1d"]
    assert_frame_equal(out.select(labels.columns), original, check_exact=True)  # order, duplicates, dtypes, zone
    assert_frame_equal(labels, original, check_exact=True)  # the caller's frame is not modified
    assert out["spend__amount_sum_1d"].to_list() == [2.5, -0.0, 2.5, None, -0.0, None]
    assert out["spend__amount_count_1d"].to_list() == [2, 4, 2, None, 4, None]
    assert math.copysign(1.0, out["spend__amount_sum_1d"][1]) == -1.0  # values copied bit for bit

    # pandas in, polars out, same answer; input columns as polars reads the pandas frame
    pdf = labels.drop("tags").to_pandas()
    from_pandas = fs.get_training_data(["spend"], pdf, timestamp="event_at")
    assert isinstance(from_pandas, pl.DataFrame), type(from_pandas)
    assert_frame_equal(from_pandas.select(pdf.columns.tolist()), pl.from_pandas(pdf), check_exact=True)
    assert_frame_equal(from_pandas.select(r"^spend__.*$"), out.select(r"^spend__.*$"), check_exact=True)


def test_empty_entity_df_gives_empty_frame_with_feature_columns(project: Path) -> None:
    spend = _spend_store(project)
    labels = labels_frame([])
    out = FeatureStore(registry=registry(spend)).get_training_data(["spend"], labels)
    assert out.height == 0
    assert out.schema == pl.Schema({"customer_id": pl.String, "label_time": pl.Datetime("us"),
                                    "spend__amount_sum_1d": pl.Float64, "spend__amount_count_1d": pl.Int64})


def test_time_zones_naive_is_utc_and_aware_is_converted(project: Path) -> None:
    spend = _spend_store(project)  # c1: 1.5 from Jan 2 00:00 UTC
    fs = FeatureStore(registry=registry(spend))

    def amount(wall: datetime, zone: str | None, unit: str = "us") -> float | None:
        naive = pl.Series("label_time", [wall], dtype=pl.Datetime(unit))
        frame = pl.DataFrame({"customer_id": ["c1"]}).with_columns(
            naive if zone is None else naive.dt.replace_time_zone(zone))
        out = fs.get_training_data(["spend:amount_sum_1d"], frame)
        assert_frame_equal(out.select(frame.columns), frame, check_exact=True)
        return out["spend__amount_sum_1d"][0]

    wall = datetime(2024, 1, 1, 23, 30)
    assert amount(wall, None) is None                     # read as 23:30 UTC: before the row
    assert amount(wall, "UTC") is None
    assert amount(wall, "America/New_York") == 1.5        # 04:30 UTC on Jan 2
    assert amount(datetime(2024, 1, 2, 0, 30), "Europe/Paris") is None  # 23:30 UTC on Jan 1
    assert amount(datetime(2024, 1, 2, 1, 0), "Europe/Paris") == 1.5    # exactly 00:00 UTC: inclusive
    assert amount(datetime(2024, 1, 2, 0, 59, 59, 999_999), "Europe/Paris", "ns") is None
    assert amount(datetime(2024, 1, 2), None, "ns") == 1.5
    assert amount(datetime(2024, 1, 2) - US, None, "ns") is None


@pytest.mark.parametrize("dtype", ["string", "date", "int"])
def test_timestamp_column_must_be_datetime(project: Path, dtype: str) -> None:
    spend = _spend_store(project)
    column = {"string": pl.Series("label_time", ["2024-01-02T00:00:00"]),
              "date": pl.Series("label_time", [date(2024, 1, 2)]),
              "int": pl.Series("label_time", [1_704_153_600_000_000])}[dtype]
    labels = pl.DataFrame({"customer_id": ["c1"]}).with_columns(column)
    with pytest.raises(FeaturePipelinesError) as err:
        FeatureStore(registry=registry(spend)).get_training_data(["spend"], labels)
    assert "label_time" in str(err.value) and "datetime" in str(err.value).lower(), str(err.value)


def test_version_pins_read_the_pinned_version(project: Path) -> None:
    spend = make_feature("spend")
    write(project / "store", spend, {
        "2024-01-01": spend_rows(("c1", at(2), 1.0, 1)),
        "2024-01-02": spend_rows(("c1", at(3), 2.0, 2)),
    })
    results = write(project / "store", spend, {"2024-01-02": spend_rows(("c1", at(3), 20.0, 20))})
    assert results[0].version == "1.0.1" and results[0].bump == "patch"
    labels = labels_frame([("c1", at(2, 6)), ("c1", at(3, 6))])
    fs = FeatureStore(registry=registry(spend))

    def amounts(ref: str) -> list:
        out = fs.get_training_data([ref], labels)
        assert out.columns[2] == "spend__amount_sum_1d", out.columns  # no version in the column name
        return out["spend__amount_sum_1d"].to_list()

    assert amounts("spend:amount_sum_1d") == [1.0, 20.0]
    assert amounts("spend@1.0.1:amount_sum_1d") == [1.0, 20.0]
    assert amounts("spend@1.0.0:amount_sum_1d") == [1.0, 2.0]
    assert amounts("spend@1.0.0") == [1.0, 2.0]


def test_column_subsets_feature_objects_and_services(project: Path) -> None:
    spend = _spend_store(project)
    events = make_feature("events")
    write(project / "store", events, {"2024-01-02": [{"customer_id": "c1", FT: at(2, 7), "zeta": 7, "alpha": 0.25}]})
    pair = make_feature("pair")
    write(project / "store", pair, {"2024-01-02-07:00": [
        {"customer_id": "c1", "merchant_id": 1, FT: at(2, 8), "latest_category": "food", "latest_event_timestamp": at(2, 7, 59)}]})
    labels = labels_frame([("c1", 1, at(3, 9)), ("c1", 2, at(3, 9))], keys=("customer_id", "merchant_id"))
    fs = FeatureStore(registry=registry(spend, events, pair))

    def cols(request: list) -> list[str]:
        out = fs.get_training_data(request, labels)
        assert_frame_equal(out.select(labels.columns), labels, check_exact=True)
        return out.columns[len(labels.columns):]

    assert cols(["spend:amount_count_1d"]) == ["spend__amount_count_1d"]
    assert cols(["spend:amount_count_1d", "spend:amount_sum_1d"]) == ["spend__amount_count_1d", "spend__amount_sum_1d"]
    assert cols([spend, "events"]) == ["spend__amount_sum_1d", "spend__amount_count_1d", "events__zeta", "events__alpha"]
    assert cols(["events:alpha"]) == ["events__alpha"]  # a metric-less feature's stored columns can be subset too
    assert cols(["events", spend]) == ["events__zeta", "events__alpha", "spend__amount_sum_1d", "spend__amount_count_1d"]
    service = FeatureService("fraud_model", [spend, "events:alpha", "pair:latest_category"])
    assert cols([service]) == ["spend__amount_sum_1d", "spend__amount_count_1d", "events__alpha", "pair__latest_category"]
    out = fs.get_training_data([service, "pair:latest_event_timestamp"], labels)
    assert out.columns[len(labels.columns):] == ["spend__amount_sum_1d", "spend__amount_count_1d", "events__alpha",
                                                  "pair__latest_category", "pair__latest_event_timestamp"]
    assert out.rows() == [
        ("c1", 1, labels["label_time"][0], 2.5, 2, 0.25, "food", at(2, 7, 59)),
        ("c1", 2, labels["label_time"][1], 2.5, 2, 0.25, None, None),
    ]


def test_surrogate_key_entity_is_keyed_from_pii_columns(project: Path) -> None:
    person = Entity("person", join_key="person_id", from_columns=["first_name", "last_name", "date_of_birth"])
    scores = make_feature("scores", shape="events", entities=[person])
    ada = ("Ada", "Lovelace", date(1815, 12, 10))
    bob = ("Bob", None, date(1990, 1, 1))  # a null identifying column is still part of the identity
    write(project / "store", scores, {"2024-01-02": [
        {"person_id": surrogate_key(ada), FT: at(2, 5), "zeta": 1, "alpha": 1.5},
        {"person_id": surrogate_key(bob), FT: at(2, 6), "zeta": 2, "alpha": 2.5},
    ]}, values=SHAPES["events"][3])
    pair_ids = Entity.composite("person_merchant", person, MERCHANT)
    visits = make_feature("visits", shape="events", entities=[pair_ids])
    write(project / "store", visits, {"2024-01-02": [
        {"person_id": surrogate_key(ada), "merchant_id": 7, FT: at(2, 5), "zeta": 70, "alpha": 7.5}]}, values=SHAPES["events"][3])
    labels = pl.DataFrame({
        "first_name": ["Ada", "Bob", "Ada", "Eve"],
        "last_name": ["Lovelace", None, "Lovelace", "X"],
        "date_of_birth": [date(1815, 12, 10), date(1990, 1, 1), date(1815, 12, 10), date(2000, 1, 1)],
        "merchant_id": [7, 7, 8, 7],
        "label_time": ts_series("label_time", [at(3), at(3), at(2, 5) - US, at(3)], None, "us"),
    })
    out = FeatureStore(registry=registry(scores, visits)).get_training_data(["scores", "visits:zeta"], labels)
    assert out.columns == [*labels.columns, "scores__zeta", "scores__alpha", "visits__zeta"]  # no key column added
    assert_frame_equal(out.select(labels.columns), labels, check_exact=True)
    assert out["scores__zeta"].to_list() == [1, 2, None, None]
    assert out["visits__zeta"].to_list() == [70, None, None, None]


# ---- errors ----------------------------------------------------------------------------------


def _error(fs: FeatureStore, features: list, labels, **kwargs) -> str:
    with pytest.raises(FeaturePipelinesError) as err:
        fs.get_training_data(features, labels, **kwargs)
    return str(err.value)


def test_errors_name_the_problem_and_what_exists(project: Path) -> None:
    spend = _spend_store(project)
    events = make_feature("events")
    write(project / "store", events, {"2024-01-02": [{"customer_id": "c1", FT: at(2, 7), "zeta": 7, "alpha": 0.25}]})
    fs = FeatureStore(registry=registry(spend, events))
    labels = labels_frame([("c1", at(3))])

    msg = _error(fs, ["nope"], labels)
    assert "nope" in msg and "spend" in msg and "events" in msg, msg

    msg = _error(fs, ["spend:bogus"], labels)
    assert "bogus" in msg and "amount_sum_1d" in msg and "amount_count_1d" in msg, msg
    msg = _error(fs, ["events:bogus"], labels)
    assert "bogus" in msg and "zeta" in msg and "alpha" in msg, msg

    msg = _error(fs, ["spend@9.9.9"], labels)
    assert "9.9.9" in msg and "1.0.0" in msg, msg
    msg = _error(fs, ["spend@9.9.9:amount_sum_1d"], labels)
    assert "9.9.9" in msg and "1.0.0" in msg, msg

    msg = _error(fs, ["spend"], labels.drop("label_time"))
    assert "label_time" in msg and "customer_id" in msg, msg
    msg = _error(fs, ["spend"], labels, timestamp="when")
    assert "when" in msg and "label_time" in msg, msg

    no_key = labels.drop("customer_id").with_columns(pl.lit("x").alias("client"))
    msg = _error(fs, ["spend"], no_key)
    assert "customer_id" in msg and "spend" in msg, msg

    clash = labels.with_columns(pl.lit(0.0).alias("spend__amount_sum_1d"))
    msg = _error(fs, ["spend"], clash)
    assert "spend__amount_sum_1d" in msg, msg
    clash = labels.with_columns(pl.lit(0).alias("events__alpha"))
    msg = _error(fs, ["events:alpha"], clash)
    assert "events__alpha" in msg, msg


def test_missing_pii_columns_are_an_error(project: Path) -> None:
    person = Entity("person", join_key="person_id", from_columns=["first_name", "last_name"])
    scores = make_feature("scores", shape="events", entities=[person])
    write(project / "store", scores, {"2024-01-02": [{"person_id": surrogate_key(("Ada", "L")), FT: at(2), "zeta": 1, "alpha": 1.0}]},
          values=SHAPES["events"][3])
    labels = pl.DataFrame({"first_name": ["Ada"]}).with_columns(ts_series("label_time", [at(3)], None, "us"))
    msg = _error(FeatureStore(registry=registry(scores)), ["scores"], labels)
    assert "last_name" in msg, msg


# ---- partition pruning, checked by deleting data files ---------------------------------------


@pytest.mark.parametrize("gran, ttl", [("daily", "2d"), ("hourly", "3h"), ("daily", None)])
def test_reads_only_partitions_that_can_match(project: Path, gran: str, ttl: str | None) -> None:
    """30 partitions; entity a is stamped at every interval start, b at every interval end, c only at
    the end of one early partition. Labels are placed so that the latest label is exactly a partition
    start and (with a ttl) the earliest label minus ttl is exactly a partition end, so both boundary
    partitions of the needed range are needed and actually contribute to the answer."""
    step = GRAIN[gran]
    shape = "spend" if gran == "daily" else "pair"
    feature = make_feature("wide", ttl, shape=shape)
    values = {"amount_sum_1d": pl.Float64, "amount_count_1d": pl.Int64} if shape == "spend" else SHAPES["pair"][3]
    starts = [T0 + i * step for i in range(30)]

    def row(customer: str, when: datetime, v: int) -> dict:
        base = {"customer_id": customer, FT: when}
        if shape == "pair":
            return base | {"merchant_id": 1, "latest_category": f"v{v}", "latest_event_timestamp": when - US}
        return base | {"amount_sum_1d": float(v), "amount_count_1d": v}

    first_needed, last_needed = 12, 18
    parts = {pkey(gran, s): [row("a", s, 100 + i), row("b", s + step, 200 + i)] for i, s in enumerate(starts)}
    c_index = first_needed if ttl else 0  # c's only row: end of the first needed partition
    parts[pkey(gran, starts[c_index])].append(row("c", starts[c_index] + step, 999))
    root = project / "store"
    write(root, feature, parts, values)

    latest = starts[last_needed]
    earliest = (starts[first_needed] + step + TTL[ttl]) if ttl else starts[last_needed] - 3 * step
    c_label = earliest if ttl else starts[last_needed - 1]  # with ttl: c's row is exactly ttl old at the earliest label
    label_rows = [("a", latest), ("b", earliest), ("c", c_label), ("a", earliest + step // 2), ("b", latest - US),
                  ("c", c_label + US), ("a", earliest)]
    keys = [{"customer_id": c, "merchant_id": 1} for c, _ in label_rows]
    instants = [t for _, t in label_rows]
    labels = pl.DataFrame({"customer_id": [c for c, _ in label_rows], "merchant_id": [1] * len(label_rows)},
                          schema={"customer_id": pl.String, "merchant_id": pl.Int64}
                          ).with_columns(ts_series("label_time", instants, "Europe/Paris", "us"))
    assert max(instants) == latest

    stored_rows = [{"keys": {"customer_id": r["customer_id"], "merchant_id": 1}, "ft": r[FT],
                    "values": {c: r[c] for c in values}} for rs in parts.values() for r in rs]
    request = Request("wide", feature.join_keys, stored_rows, list(values), values, TTL[ttl])
    expected = oracle(keys, instants, [request])
    assert expected[0][0] is not None  # a's row at the start of the last needed partition
    assert expected[2][0] is not None  # c's row, from the first needed partition
    if ttl:
        assert expected[5][0] is None  # c's row one microsecond past the ttl

    need = [i for i, s in enumerate(starts) if needed(s, s + step, min(instants), latest, TTL[ttl])]
    assert need == list(range(0 if ttl is None else first_needed, last_needed + 1)), need
    for i, s in enumerate(starts):
        if i not in need:
            data_file(root, "wide", pkey(gran, s)).unlink()
    fs = FeatureStore(registry=registry(feature))
    out = fs.get_training_data(["wide"], labels)
    check_against_oracle(out, labels, keys, instants, [request])

    # deleting a file that IS needed must fail loudly, not silently return nulls
    for i in (need[0], need[-1]):
        path = data_file(root, "wide", pkey(gran, starts[i]))
        saved = path.read_bytes()
        path.unlink()
        try:
            with pytest.raises(Exception):
                fs.get_training_data(["wide"], labels)
        finally:
            path.write_bytes(saved)


def test_feature_store_is_public_api() -> None:
    import feature_pipelines

    assert feature_pipelines.FeatureStore is FeatureStore
    assert "FeatureStore" in feature_pipelines.__all__
