"""The Unity Catalog offline store against a local Unity Catalog REST server and real local Delta tables.

`UnityCatalogStore` talks to `uc_server.UnityCatalogServer` (stdlib HTTP on a free 127.0.0.1 port) through
databricks-sdk exactly as it would talk to a workspace (`WorkspaceClient(host="http://127.0.0.1:<port>",
token=...)`); the tables are real Delta tables under a temp folder. Covered:

* versioning identical to `VersionedStore` (LocalStore) on the same sequence of writes: initial, unchanged,
  added, patch, lineage-only, minor (column added, config changed), major (dtype changed, column removed):
  the same versions, bumps, reasons, hashes, partitions, revisions and read-back frames;
* a ranged `write_partitions` replaces exactly those partitions in ONE Delta commit (history checked);
* pinned reads after a PATCH and after a MAJOR rewrote the table are Delta time travel to the recorded version;
* the `_feature_metadata` table: rows, Delta versions, JSON columns, UC registration;
* real PROCESSES: 4 writers x 3 partitions of one new feature at once (none lost); two writers patching one
  partition (consecutive PATCH versions); a writer killed between its Delta commit and its metadata record
  (readers keep the old version, the next write records it);
* errors: a wrong token (StoreError naming host and table, not the token), a missing catalog/schema, bad
  input changing nothing (Delta version unchanged), a table changed outside the store;
* the token appears in no file, message, description, repr or metadata;
* the Dagster IO manager on a ranged single-run backfill, unchanged, over this store;
* the Databricks online store's request building for every sync mode, and its profile validation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, time as clock, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from feature_pipelines.errors import DataError, ProfileError, StoreError
from feature_pipelines.online.databricks import (
    SYNC_MODES,
    DatabricksOnlineStore,
    build_online_table_request,
    build_refresh_request,
)
from feature_pipelines.store import LocalStore
from feature_pipelines.store.unity import METADATA_TABLE, MANIFEST_KEY, PARTITION_COLUMN, UnityCatalogStore
from feature_pipelines_tests.servers import release_together
from feature_pipelines_tests.uc_server import UnityCatalogServer

deltalake = pytest.importorskip("deltalake")
pytest.importorskip("databricks.sdk")

REPO = Path(__file__).resolve().parents[1]
UTC = timezone.utc
TOKEN = "dapi-fp-test-token-never-print-5c1e9a"  # must never show up in a message, description, file or metadata
FEATURE = "customer_spend"
KEYS = ["customer_id"]
TS = "feature_timestamp"
DAY0 = datetime(2024, 1, 1, tzinfo=UTC)


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def uc(tmp_path_factory) -> UnityCatalogServer:
    server = UnityCatalogServer(tmp_path_factory.mktemp("uc"), TOKEN, ("main.features",)).start()
    yield server
    server.stop()


@pytest.fixture
def schema(uc, request) -> str:
    """A fresh schema per test, so tests never see each other's tables."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:60] + f"_{time.monotonic_ns() % 10**6}"
    uc.add_schema(f"main.{name}")
    return name


@pytest.fixture
def store(uc, schema) -> UnityCatalogStore:
    return UnityCatalogStore("main", schema, host=uc.url, token=TOKEN)


def make_frame(partition: str, *, seed: int = 0, rows: int = 5, extra: dict | None = None) -> pl.DataFrame:
    """Rows of one daily partition: keys, a UTC timestamp, a float, an unsigned count (what the engine emits)."""
    day = DAY0 + timedelta(days=int(partition[-2:]) - 1) if partition[:4].isdigit() else DAY0
    frame = pl.DataFrame({
        "customer_id": [f"c{i:04d}" for i in range(rows)],
        TS: [day + timedelta(days=1)] * rows,
        "amount_sum_7d": [float(seed * 1000 + i) + 0.25 for i in range(rows)],
        "amount_count_7d": pl.Series([seed + i for i in range(rows)], dtype=pl.UInt32),
    }).with_columns(pl.col(TS).cast(pl.Datetime("us", "UTC")))
    return frame.with_columns(**(extra or {})) if extra else frame


def write(store, partitions: dict[str, pl.DataFrame], config: str = "cfg1", lineage: dict | None = None):
    return store.write_partitions(FEATURE, partitions, keys=KEYS, timestamp=TS, config_hash=config, lineage=lineage)


def location(uc: UnityCatalogServer, store: UnityCatalogStore, table: str) -> str:
    return uc.tables[f"main.{store.schema}.{table}"]["storage_location"]


def history(uc, store, table: str = FEATURE) -> list[dict]:
    return deltalake.DeltaTable(location(uc, store, table)).history()


def delta_version(uc, store, table: str = FEATURE) -> int:
    return deltalake.DeltaTable(location(uc, store, table)).version()


def sorted_rows(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(KEYS + [TS])


# ---- 1. versioning: the same as VersionedStore --------------------------------------------------------


def _steps():
    """(description, frames, config, lineage, expected (version, bump)) — the same writes for both stores."""
    d = {p: make_frame(p, seed=i) for i, p in enumerate(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"])}
    return [
        ("initial", {"2024-01-01": d["2024-01-01"], "2024-01-02": d["2024-01-02"]}, "cfg1", None, ("1.0.0", "initial")),
        ("unchanged", {"2024-01-01": d["2024-01-01"], "2024-01-02": d["2024-01-02"]}, "cfg1", None, ("1.0.0", "unchanged")),
        ("added", {"2024-01-03": d["2024-01-03"]}, "cfg1", None, ("1.0.0", "added")),
        ("patch", {"2024-01-02": make_frame("2024-01-02", seed=9)}, "cfg1", None, ("1.0.1", "patch")),
        ("patch+added+unchanged in one batch",
         {"2024-01-01": d["2024-01-01"], "2024-01-03": make_frame("2024-01-03", seed=7), "2024-01-04": d["2024-01-04"]},
         "cfg1", None, ("1.0.2", "patch")),
        ("lineage only", {"2024-01-01": d["2024-01-01"]}, "cfg1", {"source_fingerprint": "abc"}, ("1.0.2", "unchanged")),
        ("minor: column added", {"2024-01-05": make_frame("2024-01-05", extra={"amount_mean_7d": pl.lit(1.5)})},
         "cfg1", None, ("1.1.0", "minor")),
        ("added to the minor", {"2024-01-06": make_frame("2024-01-06", extra={"amount_mean_7d": pl.lit(2.5)})},
         "cfg1", None, ("1.1.0", "added")),
        ("minor: config changed", {"2024-01-06": make_frame("2024-01-06", extra={"amount_mean_7d": pl.lit(2.5)})},
         "cfg2", None, ("1.2.0", "minor")),
        ("major: dtype changed", {"2024-01-06": make_frame("2024-01-06", extra={"amount_mean_7d": pl.lit(2)})},
         "cfg2", None, ("2.0.0", "major")),
        ("major: column removed", {"2024-01-07": make_frame("2024-01-07")}, "cfg2", None, ("3.0.0", "major")),
        ("patch after major", {"2024-01-07": make_frame("2024-01-07", seed=3)}, "cfg2", None, ("3.0.1", "patch")),
    ]


def test_versioning_matches_versioned_store_step_by_step(uc, store, tmp_path):
    local = LocalStore(tmp_path / "local")
    for what, frames, config, lineage, expected in _steps():
        ours, theirs = write(store, frames, config, lineage), write(local, frames, config, lineage)
        assert {r.version for r in ours} == {expected[0]} and expected[1] in {r.bump for r in ours}, what
        keep = ("feature", "partition", "version", "bump", "reason", "rows", "content_hash", "schema_hash", "config_hash")
        assert [{k: getattr(r, k) for k in keep} for r in ours] == [{k: getattr(r, k) for k in keep} for r in theirs], what

    assert store.versions(FEATURE) == local.versions(FEATURE) == ["1.0.0", "1.0.1", "1.0.2", "1.1.0", "1.2.0", "2.0.0", "3.0.0", "3.0.1"]
    assert store.features() == local.features() == [FEATURE]
    for version in store.versions(FEATURE):
        mine, theirs = store.manifest(FEATURE, version), local.manifest(FEATURE, version)
        # created_revision serves snapshot pins (VERSION+rN) on the blob stores; Unity Catalog pins through Delta time travel.
        assert set(theirs) - {"created_revision"} <= set(mine), set(theirs) - set(mine)
        for key in ("name", "version", "parent_version", "keys", "timestamp_column", "columns", "schema_hash",
                    "config_hash", "info", "revision", "row_count", "content_hash"):
            assert mine[key] == theirs[key], (version, key)
        assert {k: mine["change"][k] for k in ("bump", "reason", "partitions")} == \
               {k: theirs["change"][k] for k in ("bump", "reason", "partitions")}, version
        assert sorted(mine["change"]["replaced_files"]) == sorted(theirs["change"]["replaced_files"])
        assert list(mine["partitions"]) == list(theirs["partitions"])
        for partition, entry in theirs["partitions"].items():
            assert set(entry) - {"file"} <= set(mine["partitions"][partition])
            for key in ("rows", "content_hash", "lineage"):
                assert mine["partitions"][partition].get(key) == entry.get(key), (version, partition, key)
        # read-back: every partition of every version (time travel for the old ones), and a subset
        assert_frame_equal(store.read(FEATURE, version), local.read(FEATURE, version))
        first = sorted(theirs["partitions"])[:1]
        assert_frame_equal(store.read(FEATURE, version, first, columns=[TS, "customer_id"]),
                           local.read(FEATURE, version, first, columns=[TS, "customer_id"]))
    assert store.latest(FEATURE)["version"] == local.latest(FEATURE)["version"] == "3.0.1"
    assert store.latest(FEATURE)["partitions"]["2024-01-07"]["delta_version"] == delta_version(uc, store)


def test_dtypes_delta_cannot_hold_come_back_as_written(store, tmp_path):
    """UInt*, Duration, Time, Categorical, ns Datetime, Date, Null: read back as written (and as LocalStore reads them)."""
    frame = pl.DataFrame({
        "customer_id": ["a", "b", "c"],
        TS: pl.Series([datetime(2024, 1, 2)] * 3).cast(pl.Datetime("ns", "UTC")),
        "u8": pl.Series([0, 200, 255], dtype=pl.UInt8),
        "u16": pl.Series([0, 1, 65535], dtype=pl.UInt16),
        "u32": pl.Series([0, 1, 2**32 - 1], dtype=pl.UInt32),
        "u64": pl.Series([0, 1, 2**62], dtype=pl.UInt64),
        "i8": pl.Series([-128, 0, 127], dtype=pl.Int8),
        "f32": pl.Series([1.5, None, -2.0], dtype=pl.Float32),
        "dur": pl.Series([timedelta(days=7), timedelta(seconds=1), None]),
        "cat": pl.Series(["x", "y", "x"], dtype=pl.Categorical),
        "day": [date(2024, 1, 1), None, date(2024, 1, 3)],
        "flag": [True, False, None],
        "nothing": pl.Series([None, None, None], dtype=pl.Null),
        "naive": pl.Series([datetime(2024, 1, 1, 12)] * 3),
        "tod": [clock(1, 2, 3), None, clock(23, 59, 59, 999999)],
    })
    local = LocalStore(tmp_path / "local")
    (result,) = write(store, {"2024-01-01": frame})
    assert result.content_hash == write(local, {"2024-01-01": frame})[0].content_hash
    back = store.read(FEATURE)
    assert_frame_equal(back, frame, check_dtypes=True)
    assert_frame_equal(back, local.read(FEATURE), check_dtypes=True)
    assert store.manifest(FEATURE)["columns"] == local.manifest(FEATURE)["columns"]
    (again,) = write(store, {"2024-01-01": frame})
    assert again.bump == "unchanged"


def test_partition_keys_with_colons_quotes_spaces_and_slashes(store):
    """Hourly keys carry ':'; static keys can hold anything: the predicate quotes them, the paths encode them."""
    keys = ["2024-01-05-13:00", "2024-01-05-14:00", "it's", "a b/c"]
    frames = {k: make_frame("2024-01-01", seed=i) for i, k in enumerate(keys)}
    write(store, frames)
    for k in keys:
        assert_frame_equal(store.read(FEATURE, partitions=[k]), frames[k])
    patched = make_frame("2024-01-01", seed=50)
    assert write(store, {"it's": patched})[0].bump == "patch"
    assert_frame_equal(store.read(FEATURE, partitions=["it's"]), patched)
    assert_frame_equal(store.read(FEATURE, partitions=["a b/c", "2024-01-05-13:00"]),
                       pl.concat([frames["2024-01-05-13:00"], frames["a b/c"]]))  # partition order, like the file stores
    assert_frame_equal(store.read(FEATURE, "1.0.0", partitions=["it's"]), frames["it's"])


# ---- 2. one Delta transaction per write, ranges included -------------------------------------------------


def test_ranged_write_replaces_exactly_those_partitions_in_one_delta_commit(uc, store):
    days = [f"2024-01-{d:02d}" for d in range(1, 11)]
    original = {p: make_frame(p, seed=i) for i, p in enumerate(days)}
    results = write(store, original)
    assert {(r.version, r.bump) for r in results} == {("1.0.0", "initial")}
    loc = location(uc, store, FEATURE)
    before = deltalake.DeltaTable(loc)
    files_before = {p: sorted(before.file_uris(file_pruning_predicate=[(PARTITION_COLUMN, "=", p)])) for p in days}
    v0 = before.version()

    # a range of 5: 3 changed, 2 identical (the identical ones are not rewritten)
    rng = days[3:8]
    new = {p: (make_frame(p, seed=100 + i) if i % 2 == 0 else original[p]) for i, p in enumerate(rng)}
    results = write(store, new)
    changed = [p for i, p in enumerate(rng) if i % 2 == 0]
    assert {r.partition: r.bump for r in results} == {p: ("patch" if p in changed else "unchanged") for p in rng}
    assert {r.version for r in results} == {"1.0.1"}

    after = deltalake.DeltaTable(loc)
    assert after.version() == v0 + 1, "a ranged write must be ONE Delta commit"
    (commit,) = [h for h in after.history() if json.loads(h.get(MANIFEST_KEY, "{}")).get("delta_version") == v0 + 1]
    assert commit["operation"] == "WRITE" and commit["operationParameters"]["mode"] == "Overwrite"
    predicate = commit["operationParameters"]["predicate"]
    assert all(p in predicate for p in changed) and not any(p in predicate for p in days if p not in changed), predicate
    for p in days:
        files = sorted(after.file_uris(file_pruning_predicate=[(PARTITION_COLUMN, "=", p)]))
        assert (files != files_before[p]) == (p in changed), p  # only the changed partitions got new files
    for p in days:
        assert_frame_equal(store.read(FEATURE, partitions=[p]), new.get(p, original[p]))
        assert_frame_equal(store.read(FEATURE, "1.0.0", partitions=[p]), original[p])
    assert_frame_equal(store.read(FEATURE), pl.concat([new.get(p, original[p]) for p in days]))
    manifest = store.latest(FEATURE)
    assert manifest["delta_version"] == v0 + 1 and manifest["change"]["partitions"] == changed
    (old_file,) = store.partition_files(FEATURE, "1.0.0", [changed[0]])
    assert f"{PARTITION_COLUMN}={changed[0]}" in old_file and Path(old_file).exists()
    assert old_file not in store.partition_files(FEATURE, None, [changed[0]])  # the patch wrote a new file
    assert {p: e["delta_version"] for p, e in manifest["partitions"].items()} == {p: (v0 + 1 if p in changed else v0) for p in days}


def test_pinned_reads_time_travel_after_patch_and_after_major(uc, store):
    a, b = make_frame("2024-01-01"), make_frame("2024-01-02")
    write(store, {"2024-01-01": a, "2024-01-02": b})
    b2 = make_frame("2024-01-02", seed=5)
    assert write(store, {"2024-01-02": b2})[0].version == "1.0.1"
    m100, m101 = store.manifest(FEATURE, "1.0.0"), store.manifest(FEATURE, "1.0.1")
    assert m100["delta_version"] < m101["delta_version"]
    assert_frame_equal(store.read(FEATURE, "1.0.0"), pl.concat([a, b]))
    assert_frame_equal(store.read(FEATURE, "1.0.1"), pl.concat([a, b2]))
    assert_frame_equal(store.read(FEATURE), pl.concat([a, b2]))
    # the pin is literally Delta time travel
    travelled = pl.read_delta(location(uc, store, FEATURE), version=m100["delta_version"])
    assert_frame_equal(sorted_rows(travelled.filter(pl.col(PARTITION_COLUMN) == "2024-01-02").drop(PARTITION_COLUMN)
                                   .with_columns(pl.col("amount_count_7d").cast(pl.UInt32))), sorted_rows(b))

    # a MAJOR rewrites the table with another schema; the old pins still read
    c = make_frame("2024-01-03").with_columns(pl.col("amount_sum_7d").cast(pl.Int64))
    assert write(store, {"2024-01-03": c})[0].version == "2.0.0"
    assert_frame_equal(store.read(FEATURE), c)
    assert_frame_equal(store.read(FEATURE, "1.0.0", ["2024-01-02"]), b)
    assert_frame_equal(store.read(FEATURE, "1.0.1", ["2024-01-02"]), b2)
    assert store.scan(FEATURE, "1.0.1", []).collect().schema == a.schema  # an empty pinned read keeps the dtypes
    with pytest.raises(StoreError, match=r"has no partition\(s\) \['2024-01-01'\]"):
        store.read(FEATURE, partitions=["2024-01-01"])
    with pytest.raises(StoreError, match="has no version '1.0.7'; versions"):
        store.read(FEATURE, "1.0.7")


def test_feature_metadata_table_contents(uc, store):
    write(store, {"2024-01-01": make_frame("2024-01-01"), "2024-01-02": make_frame("2024-01-02")})
    write(store, {"2024-01-03": make_frame("2024-01-03")})
    write(store, {"2024-01-02": make_frame("2024-01-02", seed=4)}, lineage={"source_fingerprint": "fp1"})
    store.write_partition("merchant_spend", "2024-01-01", make_frame("2024-01-01"), keys=KEYS, timestamp=TS, config_hash="m")

    info = uc.tables[f"main.{store.schema}.{METADATA_TABLE}"]
    assert info["table_type"] == "EXTERNAL" and info["data_source_format"] == "DELTA"
    assert [c["name"] for c in info["columns"]][:4] == ["feature", "version", "delta_version", "revision"]
    rows = pl.read_delta(info["storage_location"]).sort("feature", "delta_version")
    assert rows.select("feature", "version", "delta_version", "revision", "parent_version", "change_bump",
                       "row_count", "partition_count").rows() == [
        ("customer_spend", "1.0.0", 2, 2, None, "added", 15, 3),
        ("customer_spend", "1.0.1", 3, 3, "1.0.0", "patch", 15, 3),
        ("merchant_spend", "1.0.0", 1, 1, None, "initial", 5, 1),
    ]
    # each row's Delta version is the commit whose commitInfo carries that very manifest
    for row in rows.iter_rows(named=True):
        table = deltalake.DeltaTable(row["storage_location"])
        assert row["storage_location"] == location(uc, store, row["feature"])
        assert row["table_name"] == f"main.{store.schema}.{row['feature']}"
        logged = {json.loads(h[MANIFEST_KEY])["delta_version"]: json.loads(h[MANIFEST_KEY]) for h in table.history() if MANIFEST_KEY in h}
        assert logged[row["delta_version"]]["version"] == row["version"]
        assert logged[row["delta_version"]]["content_hash"] == row["content_hash"]
        assert json.loads(row["partitions"]) == logged[row["delta_version"]]["partitions"]
        assert row["delta_version"] <= table.version()
    partitions = json.loads(rows.row(1, named=True)["partitions"])
    assert partitions["2024-01-02"]["lineage"] == {"source_fingerprint": "fp1"}
    assert {p: e["delta_version"] for p, e in partitions.items()} == {"2024-01-01": 1, "2024-01-02": 3, "2024-01-03": 2}
    assert rows["created_at"].dtype == pl.Datetime("us", "UTC") and rows["recorded_at"].null_count() == 0
    assert json.loads(rows.row(1, named=True)["change"])["replaced_files"] == {"2024-01-02": f"main.{store.schema}.{FEATURE}@v1"}
    assert uc.tables[f"main.{store.schema}.{FEATURE}"]["columns"][-1] | {"type_json": ""} == {
        "name": PARTITION_COLUMN, "type_text": "string", "type_name": "STRING", "type_json": "", "position": 4,
        "nullable": True, "partition_index": 0}


# ---- 3. real processes -------------------------------------------------------------------------------------

WORKER = r'''
import dataclasses, json, os, sys, time
from pathlib import Path
import polars as pl
from feature_pipelines.store.unity import UnityCatalogStore

args = json.loads(sys.argv[1])
store = UnityCatalogStore(args["catalog"], args["schema"])  # host and token from DATABRICKS_HOST / DATABRICKS_TOKEN
if args.get("mode") == "exit_before_record":
    UnityCatalogStore._record = lambda self, feature: os._exit(17)  # dies right after its Delta commit
jobs = [(p, pl.read_parquet(path)) for p, path in args["jobs"]]
if args.get("sync"):
    Path(args["sync"], "ready-" + args["name"]).touch()
    while not Path(args["sync"], "go").exists():
        time.sleep(0.002)
results = [dataclasses.asdict(store.write_partition(args["feature"], p, f, keys=args["keys"], timestamp=args["ts"],
                                                    config_hash="cfg1")) for p, f in jobs]
print(json.dumps(results), flush=True)
'''


class Workers:
    def __init__(self, tmp_path: Path, uc: UnityCatalogServer, schema: str) -> None:
        self.dir = tmp_path / "workers"
        self.dir.mkdir()
        self.script = self.dir / "worker.py"
        self.script.write_text(WORKER)
        self.schema, self.count = schema, 0
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ARM_"))}
        self.env = {**env, "PYTHONPATH": str(REPO), "POLARS_MAX_THREADS": "1",
                    "DATABRICKS_HOST": uc.url, "DATABRICKS_TOKEN": TOKEN}

    def start(self, jobs, **extra) -> subprocess.Popen:
        self.count += 1
        paths = []
        for j, (partition, frame) in enumerate(jobs):
            path = self.dir / f"frame-{self.count}-{j}.parquet"
            frame.write_parquet(path)
            paths.append((partition, str(path)))
        args = {"catalog": "main", "schema": self.schema, "feature": FEATURE, "jobs": paths, "keys": KEYS, "ts": TS,
                "name": str(self.count), **extra}
        return subprocess.Popen([sys.executable, str(self.script), json.dumps(args)], cwd=REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run_together(self, per_process) -> list[list[dict]]:
        sync = Path(tempfile.mkdtemp(dir=self.dir, prefix="sync-"))
        procs = [self.start(jobs, sync=str(sync)) for jobs in per_process]
        return release_together(procs, sync, timeout=180)


def test_four_processes_write_three_partitions_each_of_a_new_feature_at_once(uc, store, schema, tmp_path):
    per_process = [[(f"2024-01-{3 * w + i + 1:02d}", make_frame(f"2024-01-{3 * w + i + 1:02d}", seed=w * 10 + i, rows=200))
                     for i in range(3)] for w in range(4)]
    results = Workers(tmp_path, uc, schema).run_together(per_process)
    bumps = sorted(r["bump"] for rs in results for r in rs)
    assert bumps == ["added"] * 11 + ["initial"], bumps
    assert {r["version"] for rs in results for r in rs} == {"1.0.0"}
    expected = dict(job for jobs in per_process for job in jobs)
    latest = store.latest(FEATURE)
    assert sorted(latest["partitions"]) == sorted(expected)
    assert latest["row_count"] == 200 * 12 and latest["revision"] == 12
    assert store.versions(FEATURE) == ["1.0.0"]
    assert_frame_equal(store.read(FEATURE), pl.concat([expected[p] for p in sorted(expected)]))
    # 12 data commits after CREATE TABLE, each carrying a manifest; the metadata row names the newest
    commits = [h for h in history(uc, store) if MANIFEST_KEY in h]
    assert len(commits) == 12 and latest["delta_version"] == delta_version(uc, store) == 12


def test_two_processes_patch_the_same_partition_at_once(uc, store, schema, tmp_path):
    """Both commits land, serialized by the Delta log as consecutive PATCH versions, each readable pinned."""
    other = make_frame("2024-01-02")
    write(store, {"2024-01-01": make_frame("2024-01-01"), "2024-01-02": other})
    frames = [make_frame("2024-01-01", seed=10 + i, rows=300) for i in range(2)]
    results = [rs[0] for rs in Workers(tmp_path, uc, schema).run_together([[("2024-01-01", f)] for f in frames])]
    assert sorted((r["version"], r["bump"]) for r in results) == [("1.0.1", "patch"), ("1.0.2", "patch")]
    for result, frame in zip(results, frames):
        assert_frame_equal(store.read(FEATURE, result["version"], ["2024-01-01"]), frame)
        assert_frame_equal(store.read(FEATURE, result["version"], ["2024-01-02"]), other)
    assert store.versions(FEATURE) == ["1.0.0", "1.0.1", "1.0.2"]


def test_writer_killed_between_delta_commit_and_metadata_record(uc, store, schema, tmp_path):
    a, b = make_frame("2024-01-01"), make_frame("2024-01-02")
    write(store, {"2024-01-01": a})
    workers = Workers(tmp_path, uc, schema)
    proc = workers.start([("2024-01-01", make_frame("2024-01-01", seed=5))], mode="exit_before_record")
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 17, err[-3000:]
    assert delta_version(uc, store) == 2  # committed in Delta ...
    assert store.versions(FEATURE) == ["1.0.0"] and store.latest(FEATURE)["delta_version"] == 1  # ... not yet visible
    assert_frame_equal(store.read(FEATURE), a)

    # the next write builds on the committed 1.0.1 and records both versions
    result = write(store, {"2024-01-02": b})[0]
    assert (result.version, result.bump) == ("1.0.1", "added")
    assert store.versions(FEATURE) == ["1.0.0", "1.0.1"]
    assert store.manifest(FEATURE, "1.0.1")["revision"] == 3


def test_repair_records_commits_the_metadata_table_lacks(uc, store, monkeypatch):
    write(store, {"2024-01-01": make_frame("2024-01-01")})
    with monkeypatch.context() as m:
        m.setattr(UnityCatalogStore, "_record", lambda self, feature: None)
        assert write(store, {"2024-01-01": make_frame("2024-01-01", seed=3)})[0].version == "1.0.1"
    assert store.versions(FEATURE) == ["1.0.0"]
    store.repair()
    assert store.versions(FEATURE) == ["1.0.0", "1.0.1"]
    store.repair(FEATURE)  # idempotent
    assert pl.read_delta(location(uc, store, METADATA_TABLE)).height == 2


# ---- 4. errors ---------------------------------------------------------------------------------------------


def test_wrong_token_names_host_and_table_but_not_the_token(uc, schema):
    good = UnityCatalogStore("main", schema, host=uc.url, token=TOKEN)
    write(good, {"2024-01-01": make_frame("2024-01-01")})
    wrong = "dapi-wrong-token-also-secret-77"
    bad = UnityCatalogStore("main", schema, host=uc.url, token=wrong)
    for call in (lambda: write(bad, {"2024-01-02": make_frame("2024-01-02")}), lambda: bad.latest(FEATURE),
                 lambda: bad.read(FEATURE)):
        with pytest.raises(StoreError) as caught:
            call()
        message = str(caught.value)
        assert uc.url in message and f"main.{schema}." in message and "UNAUTHENTICATED" in message, message
        assert "token" in message.lower()  # says what to check ...
        assert wrong not in message and TOKEN not in message  # ... never what it is
        assert wrong not in repr(caught.value.__cause__) and caught.value.__suppress_context__
    assert ("GET", f"/api/2.1/unity-catalog/tables/main.{schema}.{FEATURE}", 401) in uc.requests
    assert good.versions(FEATURE) == ["1.0.0"]  # nothing changed


def test_missing_catalog_schema_and_table_are_clear(uc, store):
    with pytest.raises(StoreError, match=r"Catalog 'nocatalog' does not exist.*CREATE SCHEMA IF NOT EXISTS nocatalog\.features"):
        UnityCatalogStore("nocatalog", host=uc.url, token=TOKEN).latest(FEATURE)
    with pytest.raises(StoreError, match=r"Schema 'main\.noschema' does not exist"):
        UnityCatalogStore("main", "noschema", host=uc.url, token=TOKEN).write_partition(
            FEATURE, "2024-01-01", make_frame("2024-01-01"), keys=KEYS, timestamp=TS, config_hash="c")
    # a feature (table) that does not exist yet is not an error to ask about, and a clear one to read
    assert store.latest(FEATURE) is None and store.features() == [] and store.versions(FEATURE) == []
    with pytest.raises(StoreError, match=r"feature 'customer_spend' has no data in unity-catalog:main\.t_.*materialize it first"):
        store.read(FEATURE)
    with pytest.raises(StoreError, match="Invalid|not valid"):
        UnityCatalogStore("main", "bad.schema", host=uc.url, token=TOKEN)
    # a table dropped from Unity Catalog while the metadata still names it
    write(store, {"2024-01-01": make_frame("2024-01-01")})
    uc.drop_table(f"main.{store.schema}.{FEATURE}")
    fresh = UnityCatalogStore("main", store.schema, host=uc.url, token=TOKEN)  # no cached locations
    with pytest.raises(StoreError, match=r"table main\.t_.*\.customer_spend is not in Unity Catalog .* \(dropped\?\)"):
        fresh.read(FEATURE)


def test_bad_input_changes_nothing(uc, store, schema):
    write(store, {"2024-01-01": make_frame("2024-01-01")})
    before_version, before_meta = delta_version(uc, store), delta_version(uc, store, METADATA_TABLE)
    before_tables = set(uc.tables)
    good = make_frame("2024-01-02")
    bad_inputs = {
        "lacks key/timestamp column": {"2024-01-02": good.drop("customer_id")},
        "different schema from": {"2024-01-02": good, "2024-01-03": good.drop("amount_sum_7d")},
        "reserved": {"2024-01-02": good.with_columns(pl.lit("x").alias(PARTITION_COLUMN))},
        "cannot be stored": {"2024-01-02": good.with_columns(pl.lit(2**63 + 1, pl.UInt64).alias("huge"))},
    }
    for message, frames in bad_inputs.items():
        with pytest.raises(StoreError, match=message):
            write(store, frames)
        with pytest.raises(StoreError, match=message):  # a feature that does not exist yet: not even created
            store.write_partitions("brand_new", frames, keys=KEYS, timestamp=TS, config_hash="c")
    assert delta_version(uc, store) == before_version and delta_version(uc, store, METADATA_TABLE) == before_meta
    assert set(uc.tables) == before_tables and store.features() == [FEATURE]
    assert not (Path(uc.storage_root("main", schema)) / "brand_new").exists()
    assert store.versions(FEATURE) == ["1.0.0"]


def test_emptied_partition_is_never_replaced_by_an_empty_one(uc, store):
    """The rule of VersionedStore (test_silent_changes.py): within a version, rows are never replaced by no rows."""
    a, b = make_frame("2024-01-01"), make_frame("2024-01-02")
    write(store, {"2024-01-01": a, "2024-01-02": b})
    before_version, before_meta = delta_version(uc, store), delta_version(uc, store, METADATA_TABLE)
    with pytest.raises(DataError, match=r"2024-01-02 \(5 rows\).*nothing was written.*allow_empty=True") as error:
        write(store, {"2024-01-01": a, "2024-01-02": b.clear()})
    assert "1.0.0" in str(error.value) and FEATURE in str(error.value)
    with pytest.raises(DataError, match=r"2024-01-01 \(5 rows\)"):
        store.write_partition(FEATURE, "2024-01-01", a.clear(), keys=KEYS, timestamp=TS, config_hash="cfg1")
    assert delta_version(uc, store) == before_version and delta_version(uc, store, METADATA_TABLE) == before_meta
    assert store.versions(FEATURE) == ["1.0.0"]

    (result,) = store.write_partitions(FEATURE, {"2024-01-02": b.clear()}, keys=KEYS, timestamp=TS, config_hash="cfg1",
                                       allow_empty=True)
    assert (result.version, result.bump, result.rows) == ("1.0.1", "patch", 0)
    assert_frame_equal(store.read(FEATURE), a)  # 2024-01-01 is inherited
    added = store.write_partition(FEATURE, "2024-01-03", a.clear(), keys=KEYS, timestamp=TS, config_hash="cfg1")
    assert (added.bump, added.rows) == ("added", 0)  # a new partition may be empty
    assert store.write_partition(FEATURE, "2024-01-05", a, keys=KEYS, timestamp=TS, config_hash="cfg1", allow_empty=True).bump == "added"


def test_corrupt_metadata_row_is_one_store_error_naming_it(uc, store):
    import pyarrow as pa

    write(store, {"2024-01-01": make_frame("2024-01-01")})
    meta = location(uc, store, METADATA_TABLE)
    rows = pl.read_delta(meta).with_columns(partitions=pl.lit('{"2024-01-01": {"rows": 5,'))
    deltalake.write_deltalake(meta, rows.to_arrow().cast(pa.schema(deltalake.DeltaTable(meta).schema().to_arrow())), mode="overwrite",
                              predicate=f"feature = '{FEATURE}'")
    for call in (lambda: store.latest(FEATURE), lambda: store.read(FEATURE), lambda: store.manifest(FEATURE)):
        with pytest.raises(StoreError) as caught:
            call()
        message = str(caught.value)
        assert f"the {METADATA_TABLE} row of version 1.0.0 of {FEATURE!r} in main.{store.schema}.{METADATA_TABLE}" in message, message
        assert "is corrupt (column partitions is not valid JSON" in message and f"repair('{FEATURE}')" in message, message
    # The documented repair works: delete the feature's rows, repair() records them again from the Delta log.
    deltalake.DeltaTable(meta).delete(f"feature = '{FEATURE}'")
    store.repair(FEATURE)
    assert_frame_equal(store.read(FEATURE), make_frame("2024-01-01"))


def test_table_changed_outside_the_store_is_refused_but_optimize_is_fine(uc, store):
    write(store, {"2024-01-01": make_frame("2024-01-01"), "2024-01-02": make_frame("2024-01-02")})
    write(store, {"2024-01-03": make_frame("2024-01-03")})
    loc = location(uc, store, FEATURE)
    deltalake.DeltaTable(loc).optimize.compact()  # maintenance: same data
    assert write(store, {"2024-01-04": make_frame("2024-01-04")})[0].bump == "added"
    assert_frame_equal(store.read(FEATURE, partitions=["2024-01-01"]), make_frame("2024-01-01"))
    stray = make_frame("2024-01-05").with_columns(pl.col("amount_count_7d").cast(pl.Int64), pl.lit("2024-01-05").alias(PARTITION_COLUMN))
    deltalake.write_deltalake(loc, stray.to_arrow(), mode="append")
    with pytest.raises(StoreError, match=r"changed outside feature_pipelines \(WRITE\).*RESTORE"):
        write(store, {"2024-01-06": make_frame("2024-01-06")})
    assert store.latest(FEATURE)["partitions"].keys() == {"2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"}


def test_token_is_nowhere(uc, store, schema, monkeypatch):
    """Not in repr, description, results, manifests, metadata rows, Delta logs or any file of the tables."""
    results = write(store, {"2024-01-01": make_frame("2024-01-01")})
    texts = [repr(store), store.description, repr(store.catalog_client), json.dumps([dataclasses.asdict(r) for r in results]),
             json.dumps(store.latest(FEATURE))]
    assert not any(TOKEN in t for t in texts), texts
    root = Path(uc.storage_root("main", schema))
    files = [p for p in root.rglob("*") if p.is_file()]
    assert len(files) > 5 and not any(TOKEN.encode() in p.read_bytes() for p in files)
    # the environment path (as on Databricks): host and token from DATABRICKS_HOST / DATABRICKS_TOKEN
    monkeypatch.setenv("DATABRICKS_HOST", uc.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    from_env = UnityCatalogStore("main", schema)
    assert from_env.versions(FEATURE) == ["1.0.0"] and TOKEN not in repr(from_env) + from_env.description


# ---- 5. Dagster, unchanged -----------------------------------------------------------------------------------


def test_dagster_io_manager_ranged_backfill_and_load(uc, schema, monkeypatch):
    import dagster as dg

    from feature_pipelines.orchestration.io_manager import FeatureStoreIOManager
    from feature_pipelines.orchestration.resources import UnityCatalogStoreResource

    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)

    daily = dg.DailyPartitionsDefinition(start_date="2024-01-01")

    @dg.asset(name=FEATURE, partitions_def=daily, backfill_policy=dg.BackfillPolicy.single_run(),
              metadata={"feature_pipelines/keys": KEYS, "feature_pipelines/timestamp": TS, "feature_pipelines/config_hash": "c1"})
    def spend(context):
        return {k: make_frame(k, seed=int(k[-2:])) for k in context.partition_keys}

    manager = FeatureStoreIOManager(offline_store=UnityCatalogStoreResource(catalog="main", schema_name=schema, host=uc.url))
    result = dg.materialize([spend], resources={"io_manager": manager},
                            tags={"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-05"})
    assert result.success
    mats = result.asset_materializations_for_node(FEATURE)
    assert sorted(m.partition for m in mats) == [f"2024-01-0{d}" for d in range(1, 6)]
    assert {m.metadata["version"].value for m in mats} == {"1.0.0"}
    assert all(TOKEN not in str(m.metadata) for m in mats)
    store = manager.store()
    assert isinstance(store, UnityCatalogStore)
    assert len([h for h in history(uc, store) if MANIFEST_KEY in h]) == 1  # the whole range: one Delta commit
    defs = dg.Definitions(assets=[spend], resources={"io_manager": manager})
    assert_frame_equal(defs.load_asset_value(FEATURE, partition_key="2024-01-03"), make_frame("2024-01-03", seed=3))


# ---- 6. the Databricks online store: request building ------------------------------------------------------


@pytest.mark.parametrize("mode, schedule", [
    ("snapshot", {"run_triggered": {}, "perform_full_copy": True}),
    ("triggered", {"run_triggered": {}}),
    ("continuous", {"run_continuously": {}}),
])
def test_online_table_request_for_each_sync_mode(mode, schedule):
    from databricks.sdk.service.catalog import OnlineTable

    body = build_online_table_request("main.online.customer_spend_online_v1", "main.features.customer_spend",
                                      ["customer_id"], "feature_timestamp", mode)
    assert body == {"name": "main.online.customer_spend_online_v1", "spec": {
        "source_table_full_name": "main.features.customer_spend", "primary_key_columns": ["customer_id"],
        "timeseries_key": "feature_timestamp", **schedule}}
    assert OnlineTable.from_dict(body).as_dict() == body  # exactly what databricks-sdk would send
    refresh = build_refresh_request("pipe-123", mode)
    if mode == "continuous":
        assert refresh is None
    else:
        assert refresh == ("POST", "/api/2.0/pipelines/pipe-123/updates", {"full_refresh": mode == "snapshot"})


def test_bad_sync_mode_is_a_clear_error():
    with pytest.raises(ProfileError, match=r"sync_mode 'hourly' is not supported; expected one of: 'snapshot'.*'triggered'.*'continuous'"):
        build_online_table_request("a.b.c", "a.b.d", ["k"], None, "hourly")
    with pytest.raises(ProfileError, match="sync_mode 'Triggered'"):
        DatabricksOnlineStore.from_profile({"kind": "databricks", "catalog": "main", "sync_mode": "Triggered"})
    with pytest.raises(ProfileError, match="needs `sync_mode`"):
        DatabricksOnlineStore.from_profile({"catalog": "main"})
    with pytest.raises(ProfileError, match="takes no `token`"):
        DatabricksOnlineStore.from_profile({"catalog": "main", "sync_mode": "snapshot", "token": "x"})
    with pytest.raises(ProfileError, match=r"unknown setting\(s\) \['endpoint_name'\]"):
        DatabricksOnlineStore.from_profile({"catalog": "main", "sync_mode": "snapshot", "endpoint_name": "x"})
    assert set(SYNC_MODES) == {"snapshot", "triggered", "continuous"}


class RecordingAdapter:
    """Stands in for OnlineTablesAdapter (the part that needs a real workspace): records what would be sent."""

    def __init__(self, existing: dict | None = None) -> None:
        self.tables = dict(existing or {})
        self.calls: list[tuple] = []

    def get_online_table(self, name):
        self.calls.append(("get", name))
        return self.tables.get(name)

    def create_online_table(self, request):
        self.calls.append(("create", request))
        self.tables[request["name"]] = {**request, "spec": {**request["spec"], "pipeline_id": "pipe-1"}}
        return self.tables[request["name"]]

    def start_update(self, method, path, body):
        self.calls.append(("update", method, path, body))
        return {"update_id": "u1"}


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_online_store_write_creates_then_syncs_per_mode(mode):
    adapter = RecordingAdapter()
    online = DatabricksOnlineStore.from_profile({"kind": "databricks", "catalog": "main", "schema": "features",
                                                 "online_schema": "online", "sync_mode": mode}, adapter=adapter)
    frame = make_frame("2024-01-01")
    assert online.write(FEATURE, 1, KEYS, frame).written == frame.height
    name = "main.online.customer_spend_online_v1"
    assert adapter.calls == [("get", name), ("create", build_online_table_request(
        name, "main.features.customer_spend", KEYS, "feature_timestamp", mode))]
    adapter.calls.clear()
    online.write(FEATURE, 1, KEYS, frame)
    update = ("update", "POST", "/api/2.0/pipelines/pipe-1/updates", {"full_refresh": mode == "snapshot"})
    expected = [] if mode == "continuous" else [update]
    assert adapter.calls == [("get", name), *expected]
    assert "online" in online.description and mode in online.description
    with pytest.raises(StoreError, match="Feature Serving endpoint"):
        online.read([])


def test_tables_are_registered_through_a_sql_warehouse_when_one_is_given(uc, schema):
    """On Databricks, external tables are registered with CREATE TABLE ... LOCATION on a SQL warehouse."""
    store = UnityCatalogStore("main", schema, host=uc.url, token=TOKEN, warehouse_id="wh-123")
    before = len(uc.requests)
    store.write_partition(FEATURE, "2024-01-01", make_frame("2024-01-01"), keys=KEYS, timestamp=TS, config_hash="c1")
    calls = uc.requests[before:]
    assert ("POST", "/api/2.0/sql/statements", 200) in calls
    assert not any(method == "POST" and path.endswith("/unity-catalog/tables") for method, path, _ in calls)
    assert f"main.{schema}.{FEATURE}" in uc.tables
    assert_frame_equal(store.read(FEATURE), make_frame("2024-01-01"))


def test_create_table_statement_quotes_names_and_location():
    from feature_pipelines.store.unity import create_table_statement

    request = create_table_statement("ml", "features", "spend", "s3://lake/it's here", "wh-1")
    assert request == {"warehouse_id": "wh-1", "wait_timeout": "30s", "on_wait_timeout": "CANCEL",
                       "statement": "CREATE TABLE IF NOT EXISTS `ml`.`features`.`spend` USING DELTA LOCATION 's3://lake/it''s here'"}
    with pytest.raises(StoreError, match="not a valid"):
        create_table_statement("ml", "features", "spend`; DROP TABLE x; --", "s3://lake", "wh-1")


def test_cloud_tables_use_credentials_vended_by_unity_catalog(tmp_path, monkeypatch):
    """Tables in S3 (moto) that this process has no credentials for: Unity Catalog vends them, per table."""
    import boto3

    from feature_pipelines_tests.servers import moto_server

    with moto_server() as s3:
        boto3.client("s3", endpoint_url=s3.url, aws_access_key_id="uc-key", aws_secret_access_key="uc-secret",
                     region_name="us-east-1").create_bucket(Bucket="lake")
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
        for var, value in {"AWS_ENDPOINT_URL": s3.url, "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
                           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "none"),
                           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
            monkeypatch.setenv(var, value)
        vended = {"access_key_id": "uc-key", "secret_access_key": "uc-secret", "session_token": "uc-session"}
        uc = UnityCatalogServer(tmp_path / "uc", TOKEN, ("main.features",), storage_root="s3://lake/uc", vended=vended).start()
        try:
            store = UnityCatalogStore("main", "features", host=uc.url, token=TOKEN)
            frames = {k: make_frame(k, seed=i) for i, k in enumerate(["2024-01-01", "2024-01-02"])}
            store.write_partitions(FEATURE, frames, keys=KEYS, timestamp=TS, config_hash="c1")
            assert uc.tables[f"main.features.{FEATURE}"]["storage_location"].startswith("s3://lake/uc/")
            assert_frame_equal(store.read(FEATURE, partitions=["2024-01-02"]), frames["2024-01-02"])
            asked = {(v["path"].rsplit("/", 1)[-1], v.get("operation")) for v in uc.vended_for}
            assert ("temporary-path-credentials", "PATH_CREATE_TABLE") in asked
            assert ("temporary-table-credentials", "READ_WRITE") in asked
            objects = boto3.client("s3", endpoint_url=s3.url, aws_access_key_id="uc-key", aws_secret_access_key="uc-secret",
                                   region_name="us-east-1").list_objects_v2(Bucket="lake", Prefix="uc/main/features/")
            assert any(o["Key"].endswith(".parquet") for o in objects.get("Contents", []))
            assert "uc-secret" not in repr(store) + store.description + json.dumps(store.manifest(FEATURE), default=str)
            # Without vending (and without credentials of its own) the same store cannot reach the data.
            with pytest.raises(StoreError, match="s3://lake/uc/main/features"):
                UnityCatalogStore("main", "features", host=uc.url, token=TOKEN, vend_credentials=False).read(FEATURE)
        finally:
            uc.stop()
