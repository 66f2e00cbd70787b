"""The versioned local offline store checked against its documented contract.

Contract (module docstring of feature_pipelines/store/versioned.py):

* layout: `<root>/<feature>/<version>/` holds immutable data files and `.meta.json`,
  `<root>/<feature>/_latest.json` is the commit point, `<root>/.gitignore` keeps data out of git;
* versioning: first build 1.0.0; new partition -> same version; identical data -> nothing changes;
  changed data of an existing partition -> PATCH inheriting the other partitions; column added or
  config changed -> MINOR starting empty; column removed / dtype changed -> MAJOR;
* every write is "put data file, then compare-and-swap `_latest.json`", so concurrent writers of
  different partitions all survive, readers only see committed versions, and a writer that dies
  before its commit leaves the previous version untouched.

Concurrency and crash tests use real separate processes (`subprocess` running a small worker
script with the project's interpreter); the worker reads its frame from a parquet file the test
wrote, so the test knows exactly what each process committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from feature_pipelines.errors import DefinitionError, StoreError
from feature_pipelines.store import LocalBlobs, LocalStore, VersionedStore
from feature_pipelines.store.versioned import content_hash
from feature_pipelines_tests.servers import release_together

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
UTC = timezone.utc
KEYS = ["customer_id"]
TS = "feature_timestamp"
FEATURE = "customer_spend"
BASE_TIME = datetime(2024, 1, 1, tzinfo=UTC)


# ---- helpers ---------------------------------------------------------------------------------


def make_frame(partition: str, seed: int = 0, rows: int = 3, *, extra: bool = False, int_spend: bool = False) -> pl.DataFrame:
    """A small feature frame; different (partition, seed, shape) always give different content."""
    frame = pl.DataFrame(
        {
            "customer_id": [f"{partition}-c{i}" for i in range(rows)],
            TS: [BASE_TIME + timedelta(hours=i) for i in range(rows)],
            "spend": [seed * 1000 + i for i in range(rows)] if int_spend else [seed * 1000 + i + 0.5 for i in range(rows)],
        },
        schema={"customer_id": pl.String, TS: pl.Datetime("us", "UTC"), "spend": pl.Int64 if int_spend else pl.Float64},
    )
    if extra:
        frame = frame.with_columns(orders=pl.Series([seed + i for i in range(rows)], dtype=pl.Int64))
    return frame


def write(store: VersionedStore, partition: str, frame: pl.DataFrame, *, feature: str = FEATURE, config: str = "cfg1"):
    return store.write_partition(feature, partition, frame, keys=KEYS, timestamp=TS, config_hash=config)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones included) mapped to its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sort_all(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def assert_same_rows(actual: pl.DataFrame, expected: pl.DataFrame) -> None:
    assert_frame_equal(sort_all(actual), sort_all(expected))


def referenced_files(store: LocalStore, feature: str) -> set[str]:
    """Paths (relative to the feature dir) referenced by any committed version's manifest."""
    return {entry["file"] for v in store.versions(feature) for entry in store.manifest(feature, v)["partitions"].values()}


def assert_consistent(store: LocalStore, feature: str) -> None:
    """Latest parses, the version chain links up, and every referenced file exists and matches its hash."""
    root = Path(store.path)
    latest = json.loads((root / feature / "_latest.json").read_bytes())
    chain = store.versions(feature)
    assert chain and chain[-1] == latest["version"]
    assert chain == sorted(chain, key=lambda v: tuple(int(x) for x in v.split(".")))
    parent = None
    for version in chain:
        manifest = store.manifest(feature, version)
        assert manifest["version"] == version and manifest["name"] == feature
        assert manifest.get("parent_version") == parent, (version, manifest.get("parent_version"), parent)
        parent = version
        assert manifest["row_count"] == sum(e["rows"] for e in manifest["partitions"].values())
        for entry in manifest["partitions"].values():
            path = root / feature / entry["file"]
            assert path.is_file(), f"{version} references missing {entry['file']}"
            data = pl.read_parquet(path)
            assert data.height == entry["rows"]
            assert content_hash(data) == entry["content_hash"]
        assert store.read(feature, version=version).height == manifest["row_count"]


# ---- worker processes ------------------------------------------------------------------------

WORKER = r'''
import json, os, sys, time, dataclasses
from pathlib import Path
import polars as pl
from feature_pipelines.store import LocalBlobs, LocalStore

args = json.loads(sys.argv[1])
mode = args.get("mode", "write")
if mode == "exit_in_swap":
    LocalBlobs.swap = lambda self, path, data, token: os._exit(17)
elif mode == "exit_in_create":
    real_create = LocalBlobs.create
    def create(self, path, data):
        if path.endswith("_latest.json"):
            os._exit(17)
        return real_create(self, path, data)
    LocalBlobs.create = create
elif mode == "hang_in_put":
    def fsync(fd):  # the data file is fully in its temp file, not yet renamed into place
        Path(args["signal"]).write_text("in put")
        time.sleep(120)
    os.fsync = fsync

store = LocalStore(args["root"])
frames = [pl.read_parquet(f) for f in args["frames"]]
if "sync" in args:  # start barrier: announce readiness, then wait for the go file
    sync = Path(args["sync"])
    (sync / f"ready-{args['name']}").touch()
    deadline = time.monotonic() + 120
    while not (sync / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.0005)
if mode == "loop":
    print("started", flush=True)
    i = 0
    while True:
        store.write_partition(args["feature"], args["partition"], frames[i % len(frames)], keys=args["keys"],
                              timestamp=args["timestamp"], config_hash=args["config"])
        i += 1
result = store.write_partition(args["feature"], args["partition"], frames[0], keys=args["keys"],
                               timestamp=args["timestamp"], config_hash=args["config"])
print(json.dumps(dataclasses.asdict(result)), flush=True)
'''


class Workers:
    """Starts worker processes that each write one frame into a store."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "workers"
        self.dir.mkdir(exist_ok=True)
        self.script = self.dir / "worker.py"
        self.script.write_text(WORKER)
        self.count = 0
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "POLARS_MAX_THREADS": "1"}

    def start(self, root: Path, partition: str, frames: list[pl.DataFrame], *, feature: str = FEATURE,
              config: str = "cfg1", **extra) -> subprocess.Popen:
        self.count += 1
        paths = []
        for j, frame in enumerate(frames):
            path = self.dir / f"frame-{self.count}-{j}.parquet"
            frame.write_parquet(path)
            paths.append(str(path))
        args = {"root": str(root), "feature": feature, "partition": partition, "frames": paths, "keys": KEYS,
                "timestamp": TS, "config": config, "name": str(self.count), **extra}
        return subprocess.Popen([PYTHON, str(self.script), json.dumps(args)], cwd=REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, root: Path, partition: str, frame: pl.DataFrame, **kw) -> tuple[int, str, str]:
        proc = self.start(root, partition, [frame], **kw)
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out, err

    def run_together(self, root: Path, jobs: list[tuple[str, pl.DataFrame]]) -> list[dict]:
        """Run one process per (partition, frame), released at the same moment by a go file."""
        sync = Path(tempfile.mkdtemp(dir=self.dir, prefix="sync-"))
        procs = [self.start(root, partition, [frame], sync=str(sync)) for partition, frame in jobs]
        return release_together(procs, sync, timeout=120)


@pytest.fixture
def workers(tmp_path: Path) -> Workers:
    return Workers(tmp_path)


# ---- 1. layout -------------------------------------------------------------------------------


def test_layout_and_manifest_fields(tmp_path):
    """Data and .meta.json live in the version dir, _latest.json names the newest, fields are all there."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    r1 = write(store, "2024-01-01", make_frame("2024-01-01"))
    r2 = write(store, "2024-01-02", make_frame("2024-01-02", rows=5))

    feature_dir = root / FEATURE
    assert (feature_dir / "_latest.json").is_file()
    assert (feature_dir / "1.0.0" / ".meta.json").is_file()
    data_files = sorted(p.name for p in (feature_dir / "1.0.0").glob("*.parquet"))
    assert len(data_files) == 2
    assert Path(r1.uri).parent == feature_dir / "1.0.0" and Path(r1.uri).is_file()
    assert r1.path == f"{FEATURE}/{Path(r1.uri).relative_to(feature_dir)}"
    assert store.features() == [FEATURE]

    latest = json.loads((feature_dir / "_latest.json").read_bytes())
    assert latest == store.latest(FEATURE) == store.manifest(FEATURE)
    assert latest["version"] == "1.0.0"
    assert (feature_dir / "1.0.0" / ".meta.json").read_bytes() == (feature_dir / "_latest.json").read_bytes()
    for field in ["name", "version", "keys", "timestamp_column", "columns", "schema_hash", "config_hash",
                  "content_hash", "row_count", "partitions", "created_at", "updated_at", "change"]:
        assert field in latest, field
    assert latest["name"] == FEATURE
    assert latest["keys"] == KEYS and latest["timestamp_column"] == TS
    assert latest["columns"] == [
        {"name": "customer_id", "dtype": "String"},
        {"name": TS, "dtype": "Datetime(time_unit='us', time_zone='UTC')"},
        {"name": "spend", "dtype": "Float64"},
    ]
    assert latest["config_hash"] == "cfg1" == r2.config_hash
    assert latest["schema_hash"] == r2.schema_hash
    assert latest["row_count"] == 8
    assert sorted(latest["partitions"]) == ["2024-01-01", "2024-01-02"]
    for partition, result in [("2024-01-01", r1), ("2024-01-02", r2)]:
        entry = latest["partitions"][partition]
        assert entry["rows"] == result.rows and entry["content_hash"] == result.content_hash
        assert entry["file"].startswith("1.0.0/") and entry["file"].endswith(".parquet")
        assert (feature_dir / entry["file"]).is_file()
    for stamp in (latest["created_at"], latest["updated_at"]):
        assert datetime.fromisoformat(stamp).tzinfo is not None
    assert latest["change"]["bump"] == "added" and latest["change"]["partitions"] == ["2024-01-02"]


def test_gitignore_keeps_data_out_and_metadata_in(tmp_path):
    """<root>/.gitignore ignores parquet (and temp/lock) files but never the json metadata."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    write(store, "2024-01-01", make_frame("2024-01-01"))
    write(store, "2024-01-01", make_frame("2024-01-01", seed=1))  # patch: a superseded .meta.json too
    assert (root / ".gitignore").is_file()
    data = [str(p.relative_to(root)) for p in root.rglob("*.parquet")]
    meta = [str(p.relative_to(root)) for p in root.rglob("*.json")]
    assert len(data) == 2 and len(meta) == 3  # _latest.json, 1.0.0/.meta.json, 1.0.1/.meta.json
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    subprocess.run(["git", "init", "-q", str(root)], check=True)

    def ignored(rel: str) -> bool:
        return subprocess.run(["git", "-C", str(root), "check-ignore", "-q", rel]).returncode == 0

    assert all(ignored(p) for p in data)
    assert ignored(f"{FEATURE}/1.0.0/.x.parquet.abc.tmp")
    assert not any(ignored(p) for p in meta)
    assert not ignored(".gitignore")


# ---- 2. versioning ---------------------------------------------------------------------------


def test_version_rules_step_by_step(tmp_path):
    """initial -> added -> unchanged -> patch -> minor (column) -> minor (config) -> major (removed) -> major (dtype)."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    a0, b0 = make_frame("a"), make_frame("b")

    r = write(store, "a", a0)
    assert (r.version, r.bump) == ("1.0.0", "initial")
    r = write(store, "b", b0)
    assert (r.version, r.bump) == ("1.0.0", "added")

    before = tree(root)
    r = write(store, "a", a0.clone())
    assert (r.version, r.bump) == ("1.0.0", "unchanged")
    assert tree(root) == before  # no new files, manifest bytes unchanged

    a1 = make_frame("a", seed=1)
    latest_100 = store.latest(FEATURE)
    r = write(store, "a", a1)
    assert (r.version, r.bump) == ("1.0.1", "patch")
    m = store.manifest(FEATURE)
    assert m["parent_version"] == "1.0.0"
    assert m["partitions"]["b"] == latest_100["partitions"]["b"]  # inherited, same file
    assert m["change"]["replaced_files"] == {"a": latest_100["partitions"]["a"]["file"]}
    assert store.manifest(FEATURE, "1.0.0") == latest_100  # frozen
    assert_same_rows(store.read(FEATURE, version="1.0.0"), pl.concat([a0, b0]))  # pinned read: old data
    assert_same_rows(store.read(FEATURE), pl.concat([a1, b0]))

    c_extra = make_frame("c", extra=True)
    r = write(store, "c", c_extra)
    assert (r.version, r.bump) == ("1.1.0", "minor")
    assert "orders" in r.reason
    assert list(store.manifest(FEATURE)["partitions"]) == ["c"]  # starts empty
    assert_same_rows(store.read(FEATURE), c_extra)

    r = write(store, "c", c_extra, config="cfg2")
    assert (r.version, r.bump) == ("1.2.0", "minor")
    assert store.manifest(FEATURE)["config_hash"] == "cfg2"
    assert list(store.manifest(FEATURE)["partitions"]) == ["c"]

    r = write(store, "a", a1, config="cfg2")  # 'orders' removed
    assert (r.version, r.bump) == ("2.0.0", "major")
    assert "orders" in r.reason

    a_int = make_frame("a", int_spend=True)
    r = write(store, "a", a_int, config="cfg2")  # spend Float64 -> Int64
    assert (r.version, r.bump) == ("3.0.0", "major")
    assert "spend" in r.reason

    assert store.versions(FEATURE) == ["1.0.0", "1.0.1", "1.1.0", "1.2.0", "2.0.0", "3.0.0"]
    expected = {
        "1.0.0": pl.concat([a0, b0]), "1.0.1": pl.concat([a1, b0]), "1.1.0": c_extra, "1.2.0": c_extra,
        "2.0.0": a1, "3.0.0": a_int,
    }
    for version, frame in expected.items():
        assert_same_rows(store.read(FEATURE, version=version), frame)
    assert_consistent(store, FEATURE)


SCHEMAS = {
    "base": {"customer_id": "String", TS: "Datetime", "spend": "Float64"},
    "extra": {"customer_id": "String", TS: "Datetime", "spend": "Float64", "orders": "Int64"},
    "int": {"customer_id": "String", TS: "Datetime", "spend": "Int64"},
}


def schema_frame(partition: str, schema: str, seed: int) -> pl.DataFrame:
    return make_frame(partition, seed, extra=schema == "extra", int_spend=schema == "int")


OPS = st.lists(
    st.tuples(st.sampled_from(["p0", "p1", "p2"]), st.sampled_from(["base", "base", "base", "extra", "int"]),
              st.integers(0, 2), st.sampled_from(["c1", "c1", "c1", "c2"])),
    min_size=1, max_size=10,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_version_rules_match_a_model(tmp_path, ops):
    """Random write sequences: bump, version and every pinned version's rows match a plain model."""
    store = LocalStore(tempfile.mkdtemp(dir=tmp_path))
    model: dict[str, dict[str, tuple]] = {}  # version -> partition -> (partition, schema, seed)
    current = None  # (version, schema, config)
    for partition, schema, seed, config in ops:
        key = (partition, schema, seed)
        if current is None:
            version, bump, contents = "1.0.0", "initial", {}
        else:
            version, old_schema, old_config = current
            major, minor, patch = (int(x) for x in version.split("."))
            old, new = SCHEMAS[old_schema], SCHEMAS[schema]
            contents = dict(model[version])
            if any(c not in new or new[c] != old[c] for c in old):
                version, bump, contents = f"{major + 1}.0.0", "major", {}
            elif any(c not in old for c in new) or config != old_config:
                version, bump, contents = f"{major}.{minor + 1}.0", "minor", {}
            elif partition not in contents:
                bump = "added"
            elif contents[partition] == key:
                bump = "unchanged"
            else:
                version, bump = f"{major}.{minor}.{patch + 1}", "patch"
        contents[partition] = key
        model[version] = contents
        current = (version, schema, config)

        result = write(store, partition, schema_frame(*key), config=config)
        assert (result.version, result.bump) == (version, bump)

    assert store.versions(FEATURE) == list(model)
    for version, contents in model.items():
        expected = pl.concat([schema_frame(*contents[p]) for p in sorted(contents)])
        assert_same_rows(store.read(FEATURE, version=version), expected)
    assert_consistent(store, FEATURE)


# ---- 3. concurrency (real processes) ---------------------------------------------------------


def test_eight_processes_write_different_partitions_at_once(tmp_path, workers):
    """8 processes released together, 3 rounds: every partition survives in the latest manifest."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    expected: dict[str, pl.DataFrame] = {}
    for rnd in range(3):
        jobs = [(f"2024-0{rnd + 1}-{i + 10:02d}", make_frame(f"r{rnd}p{i}", seed=rnd, rows=2000)) for i in range(8)]
        results = workers.run_together(root, jobs)
        expected.update(jobs)
        bumps = sorted(r["bump"] for r in results)
        assert bumps == (["added"] * 7 + ["initial"] if rnd == 0 else ["added"] * 8), bumps
        assert {r["version"] for r in results} == {"1.0.0"}
        latest = store.latest(FEATURE)
        assert sorted(latest["partitions"]) == sorted(expected)
        assert latest["row_count"] == 2000 * len(expected)
        for partition, frame in expected.items():
            assert_same_rows(store.read(FEATURE, partitions=[partition]), frame)
        assert_same_rows(store.read(FEATURE), pl.concat(list(expected.values())))
        assert_consistent(store, FEATURE)


def test_two_processes_patch_the_same_partition_at_once(tmp_path, workers):
    """Both writers commit, as consecutive PATCH versions, each readable pinned with its own data."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    write(store, "p", make_frame("p", seed=0))
    other = make_frame("q", seed=0)
    write(store, "q", other)
    for rnd in range(3):
        frames = [make_frame("p", seed=10 * (rnd + 1) + i, rows=5000) for i in range(2)]
        results = workers.run_together(root, [("p", f) for f in frames])
        assert sorted(r["bump"] for r in results) == ["patch", "patch"]
        assert sorted(r["version"] for r in results) == [f"1.0.{2 * rnd + 1}", f"1.0.{2 * rnd + 2}"]
        for result, frame in zip(results, frames):
            assert_same_rows(store.read(FEATURE, version=result["version"], partitions=["p"]), frame)
            assert_same_rows(store.read(FEATURE, version=result["version"], partitions=["q"]), other)
        assert_consistent(store, FEATURE)
    assert store.versions(FEATURE) == ["1.0.0"] + [f"1.0.{i}" for i in range(1, 7)]


class PausingBlobs(LocalBlobs):
    """LocalBlobs whose first write (put, create or swap) of one path stalls until released: a slow writer."""

    def __init__(self, root, path: str) -> None:
        super().__init__(root)
        self.pause_path, self.armed = path, True
        self.reached, self.release = threading.Event(), threading.Event()

    def _maybe_pause(self, path: str) -> None:
        if self.armed and path == self.pause_path:
            self.armed = False
            self.reached.set()
            assert self.release.wait(30)

    def put(self, path: str, data: bytes) -> None:
        self._maybe_pause(path)
        super().put(path, data)

    def create(self, path: str, data: bytes) -> bool:
        self._maybe_pause(path)
        return super().create(path, data)

    def swap(self, path: str, data: bytes, token: str) -> bool:
        self._maybe_pause(path)
        return super().swap(path, data, token)


@pytest.mark.parametrize("slow_write", ["patch_p1", "add_p2"])
def test_superseded_manifest_is_final_despite_a_slow_writer(tmp_path, slow_write):
    """A version's frozen .meta.json keeps every partition committed to it, whatever a slow writer does.

    Interleaving (deterministic, one slow writer in a thread, stalled on its put of 1.0.0/.meta.json):
    * patch_p1: slow writer reads latest (1.0.0 = {p1}) and stalls before freezing 1.0.0; meanwhile p2 is
      added to 1.0.0 and p1 is patched (-> 1.0.1, freezing 1.0.0 = {p1, p2}); the slow writer resumes.
    * add_p2: slow writer commits p2 into 1.0.0 and stalls before its post-commit put of 1.0.0/.meta.json;
      meanwhile p3 is added to 1.0.0 and p1 is patched (-> 1.0.1); the slow writer resumes.
    """
    root = tmp_path / "store"
    store = LocalStore(str(root))
    frames = {p: make_frame(p) for p in ["p1", "p2", "p3"]}
    write(store, "p1", frames["p1"])
    # patch_p1 stalls right before its commit (it would have frozen 1.0.0 from a stale read);
    # add_p2 stalls after its commit, before saving 1.0.0's manifest.
    pause = f"{FEATURE}/_latest.json" if slow_write == "patch_p1" else f"{FEATURE}/1.0.0/.meta.json"
    slow = VersionedStore(PausingBlobs(root, pause))
    slow_partition, slow_frame = ("p1", make_frame("p1", seed=1)) if slow_write == "patch_p1" else ("p2", frames["p2"])
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", write(slow, slow_partition, slow_frame)))
    thread.start()
    assert slow.blobs.reached.wait(30)
    committed_to_100 = ["p1", slow_partition] if slow_write == "add_p2" else ["p1"]
    other = "p2" if slow_write == "patch_p1" else "p3"
    assert write(store, other, frames[other]).version == "1.0.0"
    committed_to_100.append(other)
    assert write(store, "p1", make_frame("p1", seed=2)).version == "1.0.1"
    slow.blobs.release.set()
    thread.join(30)
    assert "r" in out

    frozen = store.manifest(FEATURE, "1.0.0")
    assert sorted(frozen["partitions"]) == sorted(set(committed_to_100)), (
        f"1.0.0 was committed with {sorted(set(committed_to_100))} but its frozen manifest lists "
        f"{sorted(frozen['partitions'])}"
    )
    assert_same_rows(store.read(FEATURE, version="1.0.0", partitions=[other]), frames[other])
    assert_consistent(store, FEATURE)


# ---- 4. crash safety -------------------------------------------------------------------------


def _prepare_two_partitions(root: Path) -> tuple[LocalStore, pl.DataFrame]:
    store = LocalStore(str(root))
    a, b = make_frame("a"), make_frame("b")
    write(store, "a", a)
    write(store, "b", b)
    return store, pl.concat([a, b])


@pytest.mark.parametrize("change", ["patch", "add"])
def test_writer_dies_between_data_put_and_commit(tmp_path, workers, change):
    """os._exit inside swap: latest is untouched, the orphan file is unreferenced, the next writer succeeds."""
    root = tmp_path / "store"
    store, committed = _prepare_two_partitions(root)
    before = tree(root)
    partition, frame = ("a", make_frame("a", seed=7)) if change == "patch" else ("c", make_frame("c", seed=7))

    code, _, err = workers.run(root, partition, frame, mode="exit_in_swap")
    assert code == 17, err

    after = tree(root)
    assert {k: after[k] for k in before} == before  # nothing existing changed (re-frozen meta is identical)
    new_files = set(after) - set(before)
    assert len(new_files) == 1 and next(iter(new_files)).endswith(".parquet"), new_files
    orphan = Path(next(iter(new_files))).relative_to(FEATURE).as_posix()
    assert orphan not in referenced_files(store, FEATURE)
    assert store.versions(FEATURE) == ["1.0.0"]
    assert_same_rows(store.read(FEATURE), committed)

    result = write(store, partition, frame)
    assert (result.version, result.bump) == (("1.0.1", "patch") if change == "patch" else ("1.0.0", "added"))
    assert_same_rows(store.read(FEATURE, partitions=[partition]), frame)
    assert_same_rows(store.read(FEATURE, version="1.0.0", partitions=["a", "b"]), committed)
    assert_consistent(store, FEATURE)


def test_first_writer_dies_before_creating_latest(tmp_path, workers):
    """A crashed first build leaves no feature; the next writer builds 1.0.0 normally."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    frame = make_frame("a")
    code, _, err = workers.run(root, "a", frame, mode="exit_in_create")
    assert code == 17, err
    assert list((root / FEATURE).glob("1.0.0/*.parquet"))  # the data file was put ...
    assert store.features() == [] and store.latest(FEATURE) is None  # ... but nothing was committed
    with pytest.raises(StoreError):
        store.read(FEATURE)
    result = write(store, "a", frame)
    assert (result.version, result.bump) == ("1.0.0", "initial")
    assert_same_rows(store.read(FEATURE), frame)
    assert_consistent(store, FEATURE)


def test_sigkill_during_large_data_write(tmp_path, workers):
    """SIGKILL while the data file is being written (inside put): previous version byte-identical, temp file ignored."""
    root = tmp_path / "store"
    store, committed = _prepare_two_partitions(root)
    before = tree(root)
    big = make_frame("a", seed=3, rows=300_000)
    signal_file = tmp_path / "in-put"
    proc = workers.start(root, "a", [big], mode="hang_in_put", signal=str(signal_file))
    deadline = time.monotonic() + 120
    while not signal_file.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    after = tree(root)
    assert {k: after[k] for k in before} == before
    leftovers = set(after) - set(before)
    assert leftovers and all(Path(p).name.startswith(".") and p.endswith(".tmp") for p in leftovers), leftovers
    assert_same_rows(store.read(FEATURE), committed)
    assert store.versions(FEATURE) == ["1.0.0"]

    result = write(store, "a", big)
    assert (result.version, result.bump) == ("1.0.1", "patch")
    assert_same_rows(store.read(FEATURE, partitions=["a"]), big)
    assert_consistent(store, FEATURE)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5])
def test_sigkill_at_an_arbitrary_moment_leaves_a_consistent_store(tmp_path, workers, delay):
    """A process looping over large patches is killed at some moment: the store stays consistent."""
    root = tmp_path / "store"
    store, _ = _prepare_two_partitions(root)
    frames = [make_frame("a", seed=s, rows=200_000) for s in (1, 2)]
    proc = workers.start(root, "a", frames, mode="loop")
    assert proc.stdout.readline().strip() == "started"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)

    assert_consistent(store, FEATURE)
    version = store.latest(FEATURE)["version"]
    assert_same_rows(store.read(FEATURE, partitions=["b"]), make_frame("b"))
    fresh = make_frame("a", seed=99)
    result = write(store, "a", fresh)
    assert result.bump == "patch" and store.versions(FEATURE)[-2:] == [version, result.version]
    assert_same_rows(store.read(FEATURE, partitions=["a"]), fresh)
    assert_consistent(store, FEATURE)


# ---- 5. bad input changes nothing ------------------------------------------------------------


@pytest.mark.parametrize("drop", ["customer_id", TS])
def test_frame_missing_key_or_timestamp_changes_nothing(tmp_path, drop):
    """StoreError naming the missing column; every file name and byte in the store is unchanged."""
    root = tmp_path / "store"
    store, _ = _prepare_two_partitions(root)
    before = tree(root)
    for partition in ["a", "new"]:
        with pytest.raises(StoreError, match=re.escape(drop)):
            write(store, partition, make_frame(partition, seed=5).drop(drop))
    assert tree(root) == before


def test_frame_missing_column_on_first_write_creates_nothing(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(str(root))
    before = tree(root)
    with pytest.raises(StoreError):
        write(store, "a", make_frame("a").drop(TS))
    assert tree(root) == before and store.features() == []


@pytest.mark.parametrize("name", ["../x", "a/b", "a b", "", ".hidden", "1abc", "x.y", "/abs"])
def test_unsafe_feature_name_is_rejected_and_creates_nothing(tmp_path, name):
    """DefinitionError from writes and reads; nothing appears inside or next to the store."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    outside = sorted(p.name for p in tmp_path.iterdir())
    before = tree(root)
    with pytest.raises(DefinitionError):
        write(store, "a", make_frame("a"), feature=name)
    for call in (store.latest, store.manifest, store.versions, store.read, store.partition_files):
        with pytest.raises(DefinitionError):
            call(name)
    assert tree(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == outside


def test_hostile_partition_names_stay_inside_the_feature_dir(tmp_path):
    """Partition values become file names only after sanitising; the manifest keeps the original value."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    frames = {p: make_frame(f"x{i}") for i, p in enumerate(["../../evil", "a/b", "2024-01-01T00:00:00"])}
    for partition, frame in frames.items():
        result = write(store, partition, frame)
        assert Path(result.uri).parent == root / FEATURE / "1.0.0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    for partition, frame in frames.items():
        assert_same_rows(store.read(FEATURE, partitions=[partition]), frame)


def test_unknown_feature_error_names_what_exists(tmp_path):
    """Reading a feature that was never written raises StoreError naming the features that do exist."""
    store = LocalStore(str(tmp_path / "store"))
    write(store, "a", make_frame("a"))
    write(store, "a", make_frame("a"), feature="other_feature")
    assert store.latest("nope") is None and store.versions("nope") == []
    for call in (store.manifest, store.read, store.partition_files):
        with pytest.raises(StoreError) as info:
            call("nope")
        message = str(info.value)
        assert "nope" in message
        assert FEATURE in message and "other_feature" in message, message


def test_unknown_version_error_lists_versions(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    write(store, "a", make_frame("a"))
    write(store, "a", make_frame("a", seed=1))
    for version in ["9.9.9", "1.0.2", "0.0.0"]:
        for call in (lambda: store.manifest(FEATURE, version), lambda: store.read(FEATURE, version=version)):
            with pytest.raises(StoreError) as info:
                call()
            message = str(info.value)
            assert version in message and "1.0.0" in message and "1.0.1" in message, message
    for bad in ["latest-ish", "1.0", "../../etc", "1.0.0/../1.0.1"]:
        with pytest.raises(StoreError, match="MAJOR.MINOR.PATCH"):
            store.manifest(FEATURE, bad)


def test_orphan_version_dir_is_not_a_version(tmp_path, workers):
    """A directory left by a crashed writer (1.0.1 with only an orphan file) is not readable as a version."""
    root = tmp_path / "store"
    store, _ = _prepare_two_partitions(root)
    code, _, err = workers.run(root, "a", make_frame("a", seed=7), mode="exit_in_swap")
    assert code == 17, err
    assert (root / FEATURE / "1.0.1").is_dir()
    with pytest.raises(StoreError, match=r"1\.0\.0"):
        store.read(FEATURE, version="1.0.1")


def test_missing_partition_error_lists_what_is_materialized(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    for day in ["2024-01-01", "2024-01-02", "2024-01-03"]:
        write(store, day, make_frame(day))
    for call in (lambda: store.read(FEATURE, partitions=["2024-01-01", "2025-12-31"]),
                 lambda: store.partition_files(FEATURE, partitions=["2025-12-31"])):
        with pytest.raises(StoreError) as info:
            call()
        message = str(info.value)
        assert "2025-12-31" in message and "2024-01-01" in message and "2024-01-03" in message and "3" in message, message


# ---- 6. round trip ---------------------------------------------------------------------------

ROW = st.fixed_dictionaries({
    "customer_id": st.text(max_size=6),
    TS: st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    "spend": st.none() | st.floats(allow_nan=False, width=64),
    "orders": st.none() | st.integers(-(2**63), 2**63 - 1),
    "active": st.none() | st.booleans(),
})
ROUND_TRIP_SCHEMA = {"customer_id": pl.String, TS: pl.Datetime("us", "UTC"), "spend": pl.Float64,
                     "orders": pl.Int64, "active": pl.Boolean}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.lists(ROW, max_size=8), min_size=1, max_size=4), data=st.data())
def test_read_returns_what_was_written(tmp_path, parts, data):
    """read() (all, column subset, partition subset) returns exactly the rows written, dtypes included."""
    store = LocalStore(tempfile.mkdtemp(dir=tmp_path))
    frames = {f"2024-01-{i + 1:02d}": pl.DataFrame(rows, schema=ROUND_TRIP_SCHEMA, orient="row") if rows
              else pl.DataFrame(schema=ROUND_TRIP_SCHEMA) for i, rows in enumerate(parts)}
    for partition, frame in frames.items():
        write(store, partition, frame)
    everything = pl.concat(list(frames.values()))
    assert_same_rows(store.read(FEATURE), everything)

    columns = data.draw(st.lists(st.sampled_from(list(ROUND_TRIP_SCHEMA)), min_size=1, unique=True))
    got = store.read(FEATURE, columns=columns)
    assert got.columns == columns
    assert_same_rows(got, everything.select(columns))

    chosen = data.draw(st.lists(st.sampled_from(list(frames)), min_size=1, unique=True))
    assert_same_rows(store.read(FEATURE, partitions=chosen), pl.concat([frames[p] for p in chosen]))
    files = store.partition_files(FEATURE, partitions=chosen)
    assert files == [store.partition_files(FEATURE, partitions=[p])[0] for p in chosen]  # in the given order
    assert store.partition_files(FEATURE) == [store.partition_files(FEATURE, partitions=[p])[0] for p in sorted(frames)]


def test_read_columns_and_partitions_on_a_pinned_version(tmp_path):
    """Column and partition selection also apply to an older, pinned version."""
    store = LocalStore(str(tmp_path / "store"))
    old = {p: make_frame(p) for p in ["a", "b", "c"]}
    for p, f in old.items():
        write(store, p, f)
    write(store, "b", make_frame("b", seed=1))
    got = store.read(FEATURE, version="1.0.0", partitions=["b", "c"], columns=["spend", "customer_id"])
    assert got.columns == ["spend", "customer_id"]
    assert_same_rows(got, pl.concat([old["b"], old["c"]]).select("spend", "customer_id"))


# ---- batched writes (a ranged backfill commits its partitions together) --------------------------


def write_many(store: VersionedStore, frames: dict, *, lineage: dict | None = None, config: str = "cfg1"):
    return store.write_partitions(FEATURE, frames, keys=KEYS, timestamp=TS, config_hash=config, lineage=lineage)


def test_batch_write_is_one_version_change(tmp_path):
    store = LocalStore(tmp_path / "store")
    results = write_many(store, {p: make_frame(p) for p in ("a", "b", "c")})
    assert {(r.version, r.bump) for r in results} == {("1.0.0", "initial")}
    assert store.versions(FEATURE) == ["1.0.0"]

    # Two partitions change, one is new, one is identical: one PATCH for the whole batch.
    results = write_many(store, {"a": make_frame("a", seed=1), "b": make_frame("b", seed=1), "c": make_frame("c"), "d": make_frame("d")})
    assert {r.partition: (r.version, r.bump) for r in results} == {
        "a": ("1.0.1", "patch"), "b": ("1.0.1", "patch"), "c": ("1.0.1", "unchanged"), "d": ("1.0.1", "added")}
    assert store.versions(FEATURE) == ["1.0.0", "1.0.1"]
    latest = store.latest(FEATURE)
    assert latest["change"]["bump"] == "patch" and latest["change"]["partitions"] == ["a", "b", "d"]
    assert sorted(latest["change"]["replaced_files"]) == ["a", "b"]
    assert_same_rows(store.read(FEATURE), pl.concat([make_frame("a", seed=1), make_frame("b", seed=1), make_frame("c"), make_frame("d")]))
    assert_same_rows(store.read(FEATURE, version="1.0.0"), pl.concat([make_frame(p) for p in ("a", "b", "c")]))


def test_identical_batch_changes_nothing_but_records_new_lineage(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(root)
    frames = {p: make_frame(p) for p in ("a", "b")}
    write_many(store, frames, lineage={"source_fingerprint": "one"})
    before = tree(root)
    assert {r.bump for r in write_many(store, frames, lineage={"source_fingerprint": "one"})} == {"unchanged"}
    assert tree(root) == before  # not a byte changed
    results = write_many(store, frames, lineage={"source_fingerprint": "two"})
    assert {(r.version, r.bump) for r in results} == {("1.0.0", "unchanged")}
    latest = store.latest(FEATURE)
    assert {p: e["lineage"]["source_fingerprint"] for p, e in latest["partitions"].items()} == {"a": "two", "b": "two"}
    assert latest["change"]["bump"] == "initial"  # the last real change is still the one shown
    assert [p for p in tree(root) if p.endswith(".parquet")] == [p for p in before if p.endswith(".parquet")]


def test_batch_with_inconsistent_schemas_is_refused_and_changes_nothing(tmp_path):
    root = tmp_path / "store"
    store = LocalStore(root)
    write_many(store, {"a": make_frame("a")})
    before = tree(root)
    with pytest.raises(StoreError, match="different schema"):
        write_many(store, {"b": make_frame("b"), "c": make_frame("c", extra=True)})
    assert tree(root) == before
