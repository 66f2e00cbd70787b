"""Nothing changes silently, every failure reads in one line (issue 13): a damaged offline store.

* Corrupt metadata (`_latest.json`, a version's `.meta.json`) and damaged data files are one StoreError
  naming the file and the repair, in `feature-pipelines inspect/versions/build/publish`, in
  `FeatureStore.get_training_data` / `get_online_features`, and in an HTTP answer of the server.
* `feature-pipelines sync` verifies every data file every committed version references (present,
  readable, content hash as committed), reports each problem per feature/partition/versions, and
  rebuilds what the current definition reproduces bit for bit; partitions committed before the
  logical-value hash (v2) are reported as such, never as corrupt.
* `feature-pipelines gc` removes what killed or outraced writers leave (temp files, data files no
  version references) once older than a grace period, and nothing else.

Everything runs on real files, the real engine, the real CLI (in this process and as a subprocess)
and real killed processes; no mocks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from feature_pipelines.cli import main
from feature_pipelines.engine import PolarsEngine
from feature_pipelines.errors import StoreError
from feature_pipelines.profiles import load_profile
from feature_pipelines.registry import project_registry
from feature_pipelines.store import LocalStore
from feature_pipelines.store.versioned import content_hash
from feature_pipelines_tests.test_offline_store import Workers, make_frame, tree, write

UTC = timezone.utc
FEATURE = "shop_sales"
DAYS = [f"2024-01-0{d}" for d in range(1, 6)]

FEATURES = '''
import polars as pl
from feature_pipelines import Entity, Rolling, Source, feature

shop = Entity("shop", join_key="shop_id")
sales = Source("sales.parquet", timestamp="ts", base="data")


@feature(entities=[shop], source=sales, granularity="daily", start="2024-01-01", end="2024-01-06",
         metrics=[Rolling(windows=["2d"], aggregations={"amount": ["sum"]})], online=True)
def shop_sales(events: pl.LazyFrame) -> pl.LazyFrame:
    return events
'''


def _sales(path: Path, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    ts = [datetime(2024, 1, 1) + timedelta(minutes=int(m)) for m in rng.integers(0, 5 * 24 * 60, n)]
    frame = pl.DataFrame({"shop_id": rng.integers(0, 4, n).astype(str), "ts": ts, "amount": rng.uniform(1, 50, n)})
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project of its own with one online feature and its source; the working directory is its root."""
    for var in ("FEATURE_PIPELINES_ENV_DIR", "FEATURE_PIPELINES_PROFILE", "FEATURE_PIPELINES_DATA_DIR", "FEATURE_PIPELINES_PACKAGE"):
        monkeypatch.delenv(var, raising=False)
    package = f"repair_{tmp_path.name.replace('-', '_')}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "features.py").write_text(FEATURES)
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "shop"\n\n[tool.feature_pipelines]\npackage = "{package}"\n')
    _sales(tmp_path / "data" / "sales.parquet")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def materialize(keys: list[str] = DAYS):
    """Compute `keys` with the engine and commit them, as the IO manager does; the results."""
    feature = project_registry().feature(FEATURE)
    store = load_profile().offline_store()
    frames = PolarsEngine().compute(feature, keys)
    return store.write_partitions(FEATURE, frames, keys=feature.join_keys, timestamp="feature_timestamp",
                                  config_hash=feature.config_hash)


@pytest.fixture()
def built(shop: Path) -> Path:
    """`shop` with every partition of shop_sales committed (1.0.0); the feature's folder."""
    materialize()
    return shop / "feature_store" / FEATURE


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_PIPELINES_")}
    return subprocess.run([sys.executable, "-m", "feature_pipelines.cli", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def _data_file(folder: Path, partition: str, version: str = "1.0.0") -> Path:
    manifest = json.loads((folder / "_latest.json").read_text())
    if manifest["version"] != version:
        manifest = json.loads((folder / version / ".meta.json").read_text())
    return folder / manifest["partitions"][partition]["file"]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "not a manifest": lambda data: b'["valid JSON, but no manifest"]',
    "manifest without partitions": lambda data: json.dumps({k: v for k, v in json.loads(data).items() if k != "partitions"}).encode(),
}


def _corrupt(path: Path, how: str) -> None:
    path.write_bytes(CORRUPTIONS[how](path.read_bytes()))


# ---- 1. corrupt metadata and damaged data files read in one line ---------------------------------


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_corrupt_latest_json_is_one_line_naming_the_file_in_every_command(built: Path, capsys, how: str) -> None:
    latest = built / "_latest.json"
    _corrupt(latest, how)
    damaged = latest.read_bytes()
    for argv in (["inspect", FEATURE], ["versions", FEATURE], ["publish", "--features", FEATURE],
                 ["build", "--features", FEATURE], ["list"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        line = _last_line(err)
        assert line.startswith("error: ") and str(latest) in line, (argv, err)
        assert "is corrupt" in line and "restore it from git" in line and "feature-pipelines build --features shop_sales" in line, line
        assert "Traceback" not in err and "JSONDecodeError" not in err
    assert latest.read_bytes() == damaged  # reading never "repairs" behind the user's back


def test_corrupt_latest_json_last_stderr_line_of_a_subprocess(built: Path) -> None:
    latest = built / "_latest.json"
    _corrupt(latest, "truncated")
    done = _cli(built.parents[1], "publish", "--features", FEATURE)
    assert done.returncode == 2, done.stdout + done.stderr
    line = _last_line(done.stderr)
    assert str(latest) in line and "is corrupt (not valid JSON" in line and "restore it from git" in line, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_corrupt_metadata_is_a_store_error_in_feature_store_and_writes(built: Path) -> None:
    from feature_pipelines import FeatureStore

    materialize_patch(built)  # 1.0.0 and 1.0.1
    meta = built / "1.0.0" / ".meta.json"
    _corrupt(meta, "truncated")
    labels = pl.DataFrame({"shop_id": ["1", "2"], "label_time": [datetime(2024, 1, 4, tzinfo=UTC)] * 2})
    store = FeatureStore()
    assert store.get_training_data([FEATURE], labels).height == 2  # the newest version does not need 1.0.0's file
    for call in (lambda: store.get_training_data([f"{FEATURE}@1.0.0"], labels), lambda: store.offline.versions(FEATURE)):
        with pytest.raises(StoreError, match=r"metadata file .*1\.0\.0/\.meta\.json is corrupt .*restore it from git"):
            call()

    latest = built / "_latest.json"
    _corrupt(latest, "manifest without partitions")
    before = tree(built)
    with pytest.raises(StoreError, match=r"_latest\.json is corrupt \(no 'partitions'"):
        FeatureStore().get_training_data([FEATURE], labels)
    with pytest.raises(StoreError, match=r"_latest\.json is corrupt"):
        materialize(["2024-01-02"])  # a write on corrupt metadata changes nothing
    assert tree(built) == before


def materialize_patch(folder: Path) -> None:
    """A PATCH (1.0.1) of 2024-01-03: its events change in the source."""
    source = folder.parents[1] / "data" / "sales.parquet"
    events = pl.read_parquet(source)
    day = (pl.col("ts") > datetime(2024, 1, 3, 1)) & (pl.col("ts") < datetime(2024, 1, 3, 23))
    events.with_columns(amount=pl.when(day).then(pl.col("amount") + 1).otherwise(pl.col("amount"))).write_parquet(source)
    (result,) = materialize(["2024-01-03"])
    assert (result.version, result.bump) == ("1.0.1", "patch")


def test_corrupt_latest_json_is_a_503_naming_the_file_over_http(built: Path) -> None:
    from feature_pipelines import FeatureStore
    from feature_pipelines.serving import make_server
    from feature_pipelines_tests.test_serving import _request
    from feature_pipelines_tests.servers import wait_for

    assert main(["publish", "--features", FEATURE]) == 0
    latest = built / "_latest.json"
    _corrupt(latest, "empty")
    store = FeatureStore()
    server = make_server(store, "127.0.0.1", 0, max_batch=10)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        wait_for(lambda: _request(port, "GET", "/health"), what="embedded server answering", timeout=60)
        body = json.dumps({"features": [FEATURE], "entities": [{"shop_id": "1"}]}).encode()
        status, answer = _request(port, "POST", "/online-features", body)
        assert status == 503, answer
        assert str(latest) in answer["error"] and "is corrupt" in answer["error"] and "restore it from git" in answer["error"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)
        store.close()


def test_truncated_data_file_is_one_line_naming_it_in_publish_and_reads(built: Path, capsys) -> None:
    bad = _data_file(built, "2024-01-03")
    _truncate(bad)
    assert main(["publish", "--features", FEATURE]) == 2
    err = capsys.readouterr().err
    line = _last_line(err)
    assert str(bad) in line and "partition 2024-01-03" in line and "unreadable" in line, err
    assert "run `feature-pipelines sync` to rebuild it" in line and "Traceback" not in err
    store = LocalStore(built.parent)
    with pytest.raises(StoreError, match=r"2024-01-03.*run `feature-pipelines sync`"):
        store.read(FEATURE)
    assert store.read(FEATURE, partitions=["2024-01-01", "2024-01-02"]).height > 0  # the others still read

    done = _cli(built.parents[1], "publish", "--features", FEATURE)
    assert done.returncode == 2 and str(bad) in _last_line(done.stderr) and "Traceback" not in done.stderr, done.stderr


# ---- 2. sync verifies ----------------------------------------------------------------------------


def _hashes_verify(folder: Path) -> None:
    store = LocalStore(folder.parent)
    for version in store.versions(FEATURE):
        for entry in store.manifest(FEATURE, version)["partitions"].values():
            assert content_hash(pl.read_parquet(folder / entry["file"])) == entry["content_hash"]


def test_sync_finds_and_rebuilds_missing_unreadable_and_altered_files(built: Path, capsys) -> None:
    missing, truncated, altered, fine = (_data_file(built, d) for d in ("2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"))
    metadata = {p: p.read_bytes() for p in built.rglob("*.json")}
    missing.unlink()
    _truncate(truncated)
    pl.read_parquet(altered).with_columns(pl.col("amount_sum_2d") * 2).write_parquet(altered)  # readable, same rows, other values
    untouched = fine.stat().st_mtime_ns

    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert f"{FEATURE} 2024-01-01 (1.0.0): missing → rebuilt" in out, out
    assert f"{FEATURE} 2024-01-02 (1.0.0): unreadable (" in out and "→ rebuilt" in out, out
    assert f"{FEATURE} 2024-01-03 (1.0.0): content differs from the committed hash (corrupt) → rebuilt" in out, out
    assert "2024-01-04" not in out and "5 data file(s) checked, 3 rebuilt" in out, out
    _hashes_verify(built)
    assert fine.stat().st_mtime_ns == untouched  # a good file is not rewritten
    assert {p: p.read_bytes() for p in built.rglob("*.json")} == metadata  # metadata is never changed by sync

    assert main(["sync"]) == 0  # idempotent: nothing left to do
    assert "5 data file(s) checked, all verified" in capsys.readouterr().out


def test_sync_reports_what_it_cannot_rebuild_and_fails(built: Path, capsys) -> None:
    materialize_patch(built)  # 1.0.1 re-made 2024-01-03 from changed events: 1.0.0's file cannot be recomputed now
    old = _data_file(built, "2024-01-03", "1.0.0")
    inherited = _data_file(built, "2024-01-01", "1.0.1")
    assert inherited.parent.name == "1.0.0"  # inherited by 1.0.1: one file, two versions
    _truncate(old)
    inherited.unlink()

    assert main(["sync"]) == 2
    captured = capsys.readouterr()
    assert f"{FEATURE} 2024-01-01 (1.0.0, 1.0.1): missing → rebuilt" in captured.out, captured.out
    assert f"{FEATURE} 2024-01-03 (1.0.0): unreadable" in captured.out, captured.out
    assert "recomputed data differs from the committed hash" in captured.out, captured.out
    line = _last_line(captured.err)
    assert line.startswith("error: sync: 1 data file(s) could not be rebuilt") and str(old) in line, captured.err
    assert inherited.is_file() and old.read_bytes() != b""


def test_sync_skips_a_feature_whose_definition_changed(built: Path, capsys) -> None:
    _data_file(built, "2024-01-02").unlink()
    package = next(p for p in built.parents[1].iterdir() if p.name.startswith("repair_"))
    (package / "features.py").write_text(FEATURES.replace('["2d"]', '["3d"]'))
    assert main(["sync"]) == 2
    captured = capsys.readouterr()
    assert f"{FEATURE} 2024-01-02 (1.0.0): missing; not rebuilt: the current definition of {FEATURE} differs" in captured.out
    assert "1 data file(s) could not be rebuilt" in _last_line(captured.err)


def _as_if_committed_before_v2(folder: Path, partition: str, *, old_hash: str | None) -> None:
    """Rewrite the metadata as a store from before today's change would have: no hash_format (and a v1 hash)."""
    for path in [folder / "_latest.json", *folder.glob("*/.meta.json")]:
        manifest = json.loads(path.read_text())
        for key, entry in manifest["partitions"].items():
            entry.pop("hash_format", None)
            if key == partition and old_hash:
                entry["content_hash"] = old_hash
        path.write_text(json.dumps(manifest, indent=1))


def test_sync_says_older_hash_format_not_corrupt(built: Path, capsys) -> None:
    manifest = json.loads((built / "_latest.json").read_text())
    assert all(e["hash_format"] == 2 for e in manifest["partitions"].values())  # new commits record it
    _as_if_committed_before_v2(built, "2024-01-02", old_hash="0123456789abcdef0123456789abcdef")  # a v1 hash
    file = _data_file(built, "2024-01-02")
    before = file.read_bytes()
    assert main(["sync"]) == 0
    out = capsys.readouterr().out
    assert (f"{FEATURE} 2024-01-02 (1.0.0): committed with an older hash format; rebuild the partition to re-verify "
            f"(`feature-pipelines build --features {FEATURE} --partition 2024-01-02 --force`)") in out, out
    assert "corrupt" not in out and file.read_bytes() == before
    # Old-format partitions whose v2 hash matches (committed between the two changes) simply verify.
    assert "4 verified" in out, out


def test_sync_old_format_but_wrong_row_count_is_corrupt(built: Path, capsys) -> None:
    _as_if_committed_before_v2(built, "2024-01-02", old_hash="0123456789abcdef0123456789abcdef")
    file = _data_file(built, "2024-01-02")
    frame = pl.read_parquet(file)
    frame.head(frame.height - 1).write_parquet(file)
    assert main(["sync"]) == 2
    captured = capsys.readouterr()
    assert f"{FEATURE} 2024-01-02 (1.0.0): {frame.height - 1} rows, the manifest says {frame.height} (corrupt)" in captured.out
    assert "cannot verify the recomputed data against a hash of the older format" in captured.out, captured.out


def test_sync_reports_corrupt_metadata_per_feature_and_goes_on(built: Path, capsys) -> None:
    _corrupt(built / "_latest.json", "truncated")
    assert main(["sync"]) == 2
    captured = capsys.readouterr()
    assert f"{FEATURE}: metadata file {built / '_latest.json'} is corrupt" in captured.out, captured.out
    assert "error: sync:" in _last_line(captured.err)


# ---- 3. gc: leftovers of killed and outraced writers -----------------------------------------------


def _leave_leftovers(tmp_path: Path, root: Path) -> tuple[LocalStore, set[str]]:
    """Two committed partitions, then a writer SIGKILLed inside its put (a temp file) and one that dies at its
    commit (an unreferenced data file); the leftover paths, relative to the store root."""
    store = LocalStore(str(root))
    write(store, "a", make_frame("a"))
    write(store, "b", make_frame("b"))
    write(store, "a", make_frame("a", seed=1))  # 1.0.1: the chain has two versions
    before = set(tree(root))
    workers = Workers(tmp_path)
    code, _, err = workers.run(root, "b", make_frame("b", seed=7), mode="exit_in_swap")
    assert code == 17, err
    signal_file = tmp_path / "in-put"
    proc = workers.start(root, "c", [make_frame("c", seed=3, rows=200_000)], mode="hang_in_put", signal=str(signal_file))
    deadline = time.monotonic() + 120
    while not signal_file.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    leftovers = set(tree(root)) - before
    assert any(p.endswith(".tmp") for p in leftovers) and any(p.endswith(".parquet") for p in leftovers), leftovers
    return store, leftovers


def _committed(store: LocalStore, root: Path) -> dict:
    """Every version's frame, and the bytes of every metadata and referenced data file."""
    frames = {v: store.read("customer_spend", version=v) for v in store.versions("customer_spend")}
    files = {p: b for p, b in tree(root).items() if not p.endswith((".tmp", ".parquet")) or
             any(p == f"customer_spend/{e['file']}" for v in frames for e in store.manifest("customer_spend", v)["partitions"].values())}
    return {"frames": frames, "files": files}


def test_gc_removes_only_what_killed_writers_left_after_the_grace_period(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store, leftovers = _leave_leftovers(tmp_path, root)
    committed = _committed(store, root)

    assert store.collect_garbage() == []  # within the grace period (1 hour): a writer may still be running
    assert store.collect_garbage(older_than=timedelta(0), dry_run=True) and set(tree(root)) >= leftovers
    removed = store.collect_garbage(older_than=timedelta(0))
    assert {r.path for r in removed} == leftovers
    assert {r.reason for r in removed} == {"temporary file", "unreferenced data file"}
    after = _committed(store, root)
    assert set(tree(root)) == set(committed["files"])
    assert after["files"] == committed["files"]
    for version, frame in committed["frames"].items():
        assert after["frames"][version].equals(frame)
    assert store.collect_garbage(older_than=timedelta(0)) == []
    write(store, "c", make_frame("c", seed=3))  # the store still works
    assert store.versions("customer_spend")[-1] == "1.0.1"


def test_gc_default_grace_spares_fresh_files_and_takes_old_leftovers(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "store"
    store, leftovers = _leave_leftovers(tmp_path, root)
    committed = _committed(store, root)
    (root / "customer_spend" / "notes.txt").write_text("mine")  # not the store's: never touched
    (root / "customer_spend" / "1.0.0" / "mine.parquet").write_bytes(b"not the store's naming")
    two_hours_ago = time.time() - 7200
    aged = sorted(leftovers)[:1]
    for rel in aged:
        os.utime(root / rel, (two_hours_ago, two_hours_ago))
    for rel in committed["files"]:  # referenced and metadata files, however old, stay
        os.utime(root / rel, (two_hours_ago, two_hours_ago))
    for rel in ("customer_spend/notes.txt", "customer_spend/1.0.0/mine.parquet"):
        os.utime(root / rel, (two_hours_ago, two_hours_ago))

    env = tmp_path / "env"
    env.mkdir()
    (env / "gc.yaml").write_text(f"offline_store:\n  kind: local\n  path: {root}\n")
    monkeypatch.setenv("FEATURE_PIPELINES_ENV_DIR", str(env))
    assert main(["--profile", "gc", "gc", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove customer_spend/{Path(aged[0]).relative_to('customer_spend')}" in out, out
    assert all((root / rel).exists() for rel in leftovers)
    assert main(["--profile", "gc", "gc"]) == 0
    out = capsys.readouterr().out
    assert f"removed customer_spend/{Path(aged[0]).relative_to('customer_spend')}" in out and "1 file(s)" in out, out
    assert set(tree(root)) == set(committed["files"]) | (leftovers - set(aged)) | {
        "customer_spend/notes.txt", "customer_spend/1.0.0/mine.parquet"}
    assert main(["--profile", "gc", "gc", "--features", "customer_spend", "--older-than", "0s"]) == 0
    assert set(tree(root)) == set(committed["files"]) | {"customer_spend/notes.txt", "customer_spend/1.0.0/mine.parquet"}
    assert {k: v for k, v in tree(root).items() if k in committed["files"]} == committed["files"]
    assert main(["--profile", "gc", "gc", "--older-than", "soon"]) == 2
    assert "--older-than 'soon'" in _last_line(capsys.readouterr().err)


def test_gc_refuses_a_feature_whose_metadata_it_cannot_read(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store, leftovers = _leave_leftovers(tmp_path, root)
    meta = root / "customer_spend" / "1.0.0" / ".meta.json"
    original = meta.read_bytes()
    meta.unlink()  # the chain 1.0.1 -> 1.0.0 is broken: 1.0.0's files would look unreferenced
    before = tree(root)
    with pytest.raises(StoreError, match=r"1\.0\.0/\.meta\.json is missing.*nothing was removed"):
        store.collect_garbage(older_than=timedelta(0))
    meta.write_text("{")
    with pytest.raises(StoreError, match=r"1\.0\.0/\.meta\.json is corrupt.*nothing was removed"):
        store.collect_garbage(older_than=timedelta(0))
    assert {k: v for k, v in tree(root).items() if k != str(meta.relative_to(root))} == before
    meta.write_bytes((root / "customer_spend" / "1.0.1" / ".meta.json").read_bytes())  # another version's manifest
    with pytest.raises(StoreError, match=r"1\.0\.0/\.meta\.json is corrupt \(it holds version"):
        store.collect_garbage(older_than=timedelta(0))
    meta.write_bytes(original)
    (root / "customer_spend" / "_latest.json").unlink()  # versions have manifests, the commit point is gone
    with pytest.raises(StoreError, match=r"_latest\.json is missing but versions have manifests.*nothing was removed"):
        store.collect_garbage(older_than=timedelta(0))
    assert all((root / rel).exists() for rel in leftovers)


def test_sync_reports_a_version_manifest_missing_from_the_chain(built: Path, capsys) -> None:
    materialize_patch(built)
    (built / "1.0.0" / ".meta.json").unlink()
    assert main(["sync"]) == 2
    captured = capsys.readouterr()
    assert f"{FEATURE}: metadata file {built / '1.0.0' / '.meta.json'} is missing (version 1.0.0 is on the chain of 1.0.1)" in captured.out
    assert "the metadata of shop_sales cannot be read" in _last_line(captured.err)


def test_gc_of_a_feature_never_committed(tmp_path: Path) -> None:
    """A first writer killed before creating _latest.json leaves a data file and no feature: gc takes it once old."""
    root = tmp_path / "store"
    store = LocalStore(str(root))
    code, _, err = Workers(tmp_path).run(root, "a", make_frame("a"), mode="exit_in_create")
    assert code == 17, err
    orphans = [p for p in tree(root) if p.endswith(".parquet")]
    assert len(orphans) == 1 and store.features() == []
    assert store.collect_garbage() == []
    assert [r.path for r in store.collect_garbage(older_than=timedelta(0))] == orphans


def test_an_unreadable_metadata_path_is_one_store_error(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "store"))
    write(store, "a", make_frame("a"))
    latest = tmp_path / "store" / "customer_spend" / "_latest.json"
    latest.unlink()
    latest.mkdir()  # a folder where the commit point should be
    with pytest.raises(StoreError, match=rf"cannot read {latest}: Is a directory; check its permissions"):
        store.read("customer_spend")
    with pytest.raises(StoreError, match=rf"cannot read {latest}"):
        write(store, "b", make_frame("b"))


def test_build_through_dagster_on_corrupt_metadata_ends_with_one_line(built: Path) -> None:
    """--force skips the up-to-date check: the write inside the Dagster run meets the corrupt file."""
    latest = built / "_latest.json"
    _corrupt(latest, "not a manifest")
    done = _cli(built.parents[1], "build", "--features", FEATURE, "--partition", "2024-01-02", "--force")
    assert done.returncode == 2, done.stdout + done.stderr
    line = _last_line(done.stderr)
    assert line.startswith("error: building shop_sales failed") and str(latest) in line and "restore it from git" in line, done.stderr
    assert "Traceback" not in done.stderr


def test_truncated_data_file_in_training_data_names_it(built: Path) -> None:
    from feature_pipelines import FeatureStore

    bad = _data_file(built, "2024-01-02")
    _truncate(bad)
    labels = pl.DataFrame({"shop_id": ["1"], "label_time": [datetime(2024, 1, 4, tzinfo=UTC)]})
    with pytest.raises(StoreError, match=rf"data file {bad} \(partition 2024-01-02\) is unreadable .*feature-pipelines sync"):
        FeatureStore().get_training_data([FEATURE], labels)
