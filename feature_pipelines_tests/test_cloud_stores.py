"""The S3 and GCS offline stores against real HTTP servers on loopback, next to the local store.

There is one store implementation (`VersionedStore`); what differs is the `Blobs` backend. So the
same contract is checked for every backend, parametrized over [local, s3, gcs]:

* the primitives: `create` only if absent, `swap` only if the token read is still current;
* layout and `.gitignore` keys, under a prefix or at the bucket root;
* the versioning rules (initial / added / unchanged / patch / minor / major) and pinned reads;
* batched `write_partitions` (one version change), read-back equality with polars frames;
* real PROCESSES: 4 writers x 3 partitions of one feature at once (none lost), two writers patching
  one partition (both commits land as consecutive PATCH versions), a writer that dies between
  putting its data file and committing (`os._exit`: the previous version stays whole);
* errors: a missing bucket, refused credentials (moto's IAM mode: an unknown access key, a wrong
  secret, a user without s3:PutObject; for GCS, a token endpoint that refuses the credentials), each
  one StoreError naming the bucket, with nothing half-written and no secret in any message;
* `Profile.offline_store()` building each kind from YAML, and the Dagster resources.

Servers: moto's standalone server (`moto_server`) and fake-gcs-server (in-memory backend), each
started once per module on a free 127.0.0.1 port and stopped by its own pid. Credentials are fake
and live only in this process's environment (and its workers'); every socket this process opens is
checked to go to loopback, and EC2 metadata lookups are disabled.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from datetime import timezone
from itertools import count
from pathlib import Path

import polars as pl
import pytest

from feature_pipelines.errors import ProfileError, StoreError
from feature_pipelines.profiles import load_profile
from feature_pipelines.store import GCSStore, LocalStore, S3Store, VersionedStore
from feature_pipelines.store.versioned import GITIGNORE, content_hash
from feature_pipelines_tests.servers import ServerProcess, fake_gcs_server, moto_server, moto_set_auth, release_together
from feature_pipelines_tests.test_offline_store import assert_same_rows, make_frame, write

boto3 = pytest.importorskip("boto3")
storage = pytest.importorskip("google.cloud.storage")
from google.auth.credentials import AnonymousCredentials  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UTC = timezone.utc
KEYS = ["customer_id"]
TS = "feature_timestamp"
FEATURE = "customer_spend"
ACCESS_KEY = "AKIAFPTESTS000000000"
SECRET_KEY = "fp-test-secret-do-not-print-7f3a9c"  # must never show up in a message, description or metadata
REGION = "us-east-1"
KINDS = ["local", "s3", "gcs"]
_names = count(1)


# ---- no traffic beyond loopback ------------------------------------------------------------------

NETWORK_GUARD = r'''
import socket as _socket
_real_connect = _socket.socket.connect
def _loopback_only(self, address):
    if isinstance(address, tuple) and not (str(address[0]).startswith("127.") or address[0] in ("::1", "localhost")):
        raise ConnectionRefusedError(f"test guard: connection to {address!r} refused (loopback only)")
    return _real_connect(self, address)
_socket.socket.connect = _loopback_only
'''


@pytest.fixture(autouse=True, scope="module")
def loopback_only():
    """Every socket this process connects goes to loopback (python-level clients: boto3, google, urllib)."""
    real = socket.socket.connect

    def guarded(self, address):
        if isinstance(address, tuple) and not (str(address[0]).startswith("127.") or address[0] in ("::1", "localhost")):
            raise AssertionError(f"a test tried to connect to {address!r}: only loopback is allowed")
        return real(self, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = real


@pytest.fixture(scope="module")
def cloud_env(tmp_path_factory):
    """Fake AWS credentials in this process's environment only; no profile/config files, no metadata lookups."""
    nowhere = tmp_path_factory.mktemp("no-aws-config") / "none"
    with pytest.MonkeyPatch.context() as mp:
        for var in ["AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                    "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "STORAGE_EMULATOR_HOST",
                    "GOOGLE_APPLICATION_CREDENTIALS", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI"]:
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_CONFIG_FILE", str(nowhere))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
        mp.setenv("NO_GCE_CHECK", "true")  # google-auth: never probe the GCE metadata server
        yield


@pytest.fixture(scope="module")
def moto(cloud_env) -> ServerProcess:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def gcs(cloud_env) -> ServerProcess:
    with fake_gcs_server() as server:
        yield server


# ---- one interface over the three backends -------------------------------------------------------


class Backend:
    """Makes fresh stores of one kind and looks at what they stored, independently of the store."""

    kind = ""

    def new_store(self, prefix: str | None = None) -> VersionedStore: ...
    def spec(self, store: VersionedStore) -> dict: ...  # how a worker process rebuilds the same store
    def keys(self, store: VersionedStore) -> dict[str, bytes]: ...  # every object under the store root -> bytes
    def bucket_exists(self, name: str) -> bool: return True


class LocalBackend(Backend):
    kind = "local"

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def new_store(self, prefix=None):
        return LocalStore(str(self.tmp / f"store{next(_names)}" / (prefix or "")))

    def spec(self, store):
        return {"kind": "local", "path": store.path}

    def keys(self, store):
        root = Path(store.path)
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and not p.name.endswith(".lock")}


class S3Backend(Backend):
    kind = "s3"

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client = boto3.client("s3", endpoint_url=server.url, region_name=REGION)
        self.bucket = f"fp-tests-{next(_names)}"
        self.client.create_bucket(Bucket=self.bucket)

    def new_store(self, prefix=None, bucket=None):
        if bucket is None and prefix == "":  # the bucket root: a bucket of its own
            bucket = f"fp-root-{next(_names)}"
            self.client.create_bucket(Bucket=bucket)
        return S3Store(bucket or self.bucket, f"run{next(_names)}/store" if prefix is None else prefix,
                       region=REGION, endpoint_url=self.server.url)

    def spec(self, store):
        return {"kind": "s3", "bucket": store.bucket, "prefix": store.prefix, "region": REGION, "endpoint_url": self.server.url}

    def keys(self, store):
        base = f"{store.prefix}/" if store.prefix else ""
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=base):
            for item in page.get("Contents", []):
                out[item["Key"][len(base):]] = self.client.get_object(Bucket=store.bucket, Key=item["Key"])["Body"].read()
        return out

    def bucket_exists(self, name):
        return any(b["Name"] == name for b in self.client.list_buckets()["Buckets"])


class GCSBackend(Backend):
    kind = "gcs"

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client = storage.Client(project="fp-tests", credentials=AnonymousCredentials(),
                                     client_options={"api_endpoint": server.url})
        self.bucket = f"fp-tests-{next(_names)}"
        self.client.create_bucket(self.bucket)

    def new_store(self, prefix=None, bucket=None):
        if bucket is None and prefix == "":
            bucket = f"fp-root-{next(_names)}"
            self.client.create_bucket(bucket)
        return GCSStore(bucket or self.bucket, f"run{next(_names)}/store" if prefix is None else prefix, endpoint=self.server.url)

    def spec(self, store):
        return {"kind": "gcs", "bucket": store.bucket, "prefix": store.prefix, "endpoint": self.server.url}

    def keys(self, store):
        base = f"{store.prefix}/" if store.prefix else ""
        return {b.name[len(base):]: b.download_as_bytes() for b in self.client.list_blobs(store.bucket, prefix=base)}

    def bucket_exists(self, name):
        return self.client.bucket(name).exists()


@pytest.fixture(scope="module")
def backends(tmp_path_factory, request) -> Callable[[str], Backend]:
    made: dict[str, Backend] = {}

    def get(kind: str) -> Backend:
        if kind not in made:
            if kind == "local":
                made[kind] = LocalBackend(tmp_path_factory.mktemp("local-stores"))
            elif kind == "s3":
                made[kind] = S3Backend(request.getfixturevalue("moto"))
            else:
                made[kind] = GCSBackend(request.getfixturevalue("gcs"))
        return made[kind]

    return get


@pytest.fixture(params=KINDS)
def backend(request, backends) -> Backend:
    return backends(request.param)


@pytest.fixture(params=["s3", "gcs"])
def cloud(request, backends) -> Backend:
    return backends(request.param)


# ---- helpers ---------------------------------------------------------------------------------------


def assert_consistent(store: VersionedStore, feature: str = FEATURE) -> None:
    """The version chain links up, and every file any version references exists and matches its hash."""
    latest = store.latest(feature)
    chain = store.versions(feature)
    assert chain and chain[-1] == latest["version"]
    assert chain == sorted(chain, key=lambda v: tuple(int(x) for x in v.split(".")))
    parent = None
    for version in chain:
        manifest = store.manifest(feature, version)
        assert manifest["version"] == version and manifest.get("parent_version") == parent
        parent = version
        assert manifest["row_count"] == sum(e["rows"] for e in manifest["partitions"].values())
        for entry in manifest["partitions"].values():
            found = store.blobs.read(f"{feature}/{entry['file']}")
            assert found is not None, f"{version} references missing {entry['file']}"
            import io  # noqa: PLC0415

            data = pl.read_parquet(io.BytesIO(found[0]))
            assert data.height == entry["rows"] and content_hash(data) == entry["content_hash"]
        assert store.read(feature, version=version).height == manifest["row_count"]


def referenced(store: VersionedStore, feature: str = FEATURE) -> set[str]:
    return {f"{feature}/{e['file']}" for v in store.versions(feature) for e in store.manifest(feature, v)["partitions"].values()}


# ---- worker processes ------------------------------------------------------------------------------

WORKER = NETWORK_GUARD + r'''
import dataclasses, json, os, sys, time
from pathlib import Path
import polars as pl
from feature_pipelines.store import GCSStore, LocalStore, S3Store

args = json.loads(sys.argv[1])
spec = dict(args["store"])
kind = spec.pop("kind")
store = {"local": lambda: LocalStore(spec["path"]), "s3": lambda: S3Store(**spec), "gcs": lambda: GCSStore(**spec)}[kind]()
if args.get("mode") == "exit_in_commit":  # die after the data file is put, at the commit of _latest.json
    blobs = store.blobs
    real_swap, real_create = blobs.swap, blobs.create
    def swap(path, data, token):
        if path.endswith("_latest.json"):
            os._exit(17)
        return real_swap(path, data, token)
    def create(path, data):
        if path.endswith("_latest.json"):
            os._exit(17)
        return real_create(path, data)
    blobs.swap, blobs.create = swap, create
elif args.get("mode") == "hang_at_commit":  # stall at the commit of _latest.json until SIGKILLed
    blobs = store.blobs
    real_swap = blobs.swap
    def swap(path, data, token):
        if path.endswith("_latest.json"):
            Path(args["signal"]).write_text("at commit")
            time.sleep(120)
        return real_swap(path, data, token)
    blobs.swap = swap
jobs = [(partition, pl.read_parquet(path)) for partition, path in args["jobs"]]
if "sync" in args:  # start barrier: announce readiness, then wait for the go file
    sync = Path(args["sync"])
    (sync / f"ready-{args['name']}").touch()
    deadline = time.monotonic() + 120
    while not (sync / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no go signal")
        time.sleep(0.001)
results = []
for partition, frame in jobs:
    result = store.write_partition(args["feature"], partition, frame, keys=args["keys"], timestamp=args["timestamp"],
                                   config_hash=args["config"])
    results.append(dataclasses.asdict(result))
print(json.dumps(results), flush=True)
'''


class Workers:
    """Starts worker processes that each write some partitions into a store (rebuilt from its spec)."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "workers"
        self.dir.mkdir(exist_ok=True)
        self.script = self.dir / "worker.py"
        self.script.write_text(WORKER)
        self.count = 0
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "POLARS_MAX_THREADS": "1"}

    def start(self, spec: dict, jobs: list[tuple[str, pl.DataFrame]], **extra) -> subprocess.Popen:
        self.count += 1
        paths = []
        for j, (partition, frame) in enumerate(jobs):
            path = self.dir / f"frame-{self.count}-{j}.parquet"
            frame.write_parquet(path)
            paths.append((partition, str(path)))
        args = {"store": spec, "feature": FEATURE, "jobs": paths, "keys": KEYS, "timestamp": TS, "config": "cfg1",
                "name": str(self.count), **extra}
        return subprocess.Popen([sys.executable, str(self.script), json.dumps(args)], cwd=REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, spec: dict, jobs, **extra) -> tuple[int, str, str]:
        proc = self.start(spec, jobs, **extra)
        out, err = proc.communicate(timeout=180)
        return proc.returncode, out, err

    def run_together(self, spec: dict, per_process: list[list[tuple[str, pl.DataFrame]]]) -> list[list[dict]]:
        """One process per job list, all released at the same moment by a go file; their results."""
        sync = Path(tempfile.mkdtemp(dir=self.dir, prefix="sync-"))
        procs = [self.start(spec, jobs, sync=str(sync)) for jobs in per_process]
        return release_together(procs, sync, timeout=180)


@pytest.fixture
def workers(tmp_path: Path) -> Workers:
    return Workers(tmp_path)


# ---- 1. the primitives -----------------------------------------------------------------------------


def test_blob_primitives_create_and_compare_and_swap(backend):
    """create only if absent; swap only with the token of the content now there; read's token is THAT content's."""
    blobs = backend.new_store().blobs
    assert blobs.read("x/obj.json") is None and not blobs.exists("x/obj.json")
    assert blobs.create("x/obj.json", b"one") is True
    assert blobs.create("x/obj.json", b"two") is False
    data, token1 = blobs.read("x/obj.json")
    assert data == b"one" and blobs.exists("x/obj.json")
    assert blobs.swap("x/obj.json", b"three", token1) is True
    data, token3 = blobs.read("x/obj.json")
    assert data == b"three" and token3 != token1
    assert blobs.swap("x/obj.json", b"four", token1) is False  # stale token: someone swapped in between
    assert blobs.read("x/obj.json")[0] == b"three"
    assert blobs.swap("x/absent.json", b"five", token3) is False  # nothing to swap
    assert blobs.read("x/absent.json") is None
    blobs.put("x/data.parquet", b"\x00" * 10)
    blobs.put("x/data.parquet", b"\x00" * 10)  # data files may be re-put
    assert blobs.read("x/data.parquet")[0] == b"\x00" * 10
    assert blobs.list_dirs("") == ["x"] and blobs.list_dirs("x") == []


# ---- 2. layout ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "team/features"])
def test_layout_keys_and_gitignore(backend, prefix):
    """Exactly .gitignore, _latest.json, the version's .meta.json and one file per partition, all under the prefix."""
    store = backend.new_store(prefix=prefix)
    r1 = write(store, "2024-01-01", make_frame("2024-01-01"))
    r2 = write(store, "2024-01-02", make_frame("2024-01-02", rows=5))
    objects = backend.keys(store)
    assert set(objects) == {".gitignore", f"{FEATURE}/_latest.json", f"{FEATURE}/1.0.0/.meta.json", r1.path, r2.path}
    assert r1.path.startswith(f"{FEATURE}/1.0.0/2024-01-01-") and r1.path.endswith(".parquet")
    assert objects[".gitignore"] == GITIGNORE.encode()
    assert objects[f"{FEATURE}/_latest.json"] == objects[f"{FEATURE}/1.0.0/.meta.json"]
    latest = json.loads(objects[f"{FEATURE}/_latest.json"])
    assert latest == store.latest(FEATURE) and latest["version"] == "1.0.0" and latest["row_count"] == 8
    assert sorted(latest["partitions"]) == ["2024-01-01", "2024-01-02"]
    assert store.features() == [FEATURE]
    if backend.kind != "local":
        scheme = "s3" if backend.kind == "s3" else "gs"
        root = f"{scheme}://{store.bucket}/{prefix + '/' if prefix else ''}"
        assert r1.uri == root + r1.path
        assert store.description.startswith(f"{scheme}://{store.bucket}") and "endpoint http://127.0.0.1:" in store.description


# ---- 3. versioning rules -------------------------------------------------------------------------------


def test_version_rules_step_by_step(backend):
    """initial -> added -> unchanged -> patch -> minor (column) -> minor (config) -> major (dtype); pinned reads."""
    store = backend.new_store()
    a0, b0, a1 = make_frame("a"), make_frame("b"), make_frame("a", seed=1)
    steps = [
        (write(store, "a", a0), ("1.0.0", "initial")),
        (write(store, "b", b0), ("1.0.0", "added")),
        (write(store, "a", a0), ("1.0.0", "unchanged")),
        (write(store, "a", a1), ("1.0.1", "patch")),
    ]
    a_extra = make_frame("a", seed=2, extra=True)
    steps.append((write(store, "a", a_extra), ("1.1.0", "minor")))
    steps.append((write(store, "a", a_extra, config="cfg2"), ("1.2.0", "minor")))
    a_int = make_frame("a", seed=3, int_spend=True)  # spend Float64 -> Int64, orders removed
    steps.append((write(store, "a", a_int, config="cfg2"), ("2.0.0", "major")))
    for result, expected in steps:
        assert (result.version, result.bump) == expected, (result, expected)
    assert store.versions(FEATURE) == ["1.0.0", "1.0.1", "1.1.0", "1.2.0", "2.0.0"]
    assert "column(s) removed: orders" in steps[-1][0].reason and "spend Float64→Int64" in steps[-1][0].reason

    assert_same_rows(store.read(FEATURE, version="1.0.0"), pl.concat([a0, b0]))
    assert_same_rows(store.read(FEATURE, version="1.0.1"), pl.concat([a1, b0]))  # the patch inherits b
    assert_same_rows(store.read(FEATURE, version="1.0.1", partitions=["b"]), b0)
    assert_same_rows(store.read(FEATURE, version="1.1.0"), a_extra)  # a new MINOR starts empty
    assert_same_rows(store.read(FEATURE, version="1.2.0"), a_extra)
    assert_same_rows(store.read(FEATURE), a_int)
    assert store.read(FEATURE, version="1.0.0", columns=["spend"]).columns == ["spend"]
    with pytest.raises(StoreError, match=r"no version '1\.0\.7'.*1\.0\.0"):
        store.read(FEATURE, version="1.0.7")
    with pytest.raises(StoreError, match="no partition"):
        store.read(FEATURE, version="1.0.0", partitions=["zzz"])
    assert_consistent(store)


def test_batched_write_is_one_version_change(backend):
    """A batch that patches two partitions and adds one makes ONE patch version, inheriting the rest."""
    store = backend.new_store()
    first = {p: make_frame(p) for p in ["p1", "p2", "p3"]}
    results = store.write_partitions(FEATURE, first, keys=KEYS, timestamp=TS, config_hash="cfg1")
    assert [(r.partition, r.version, r.bump) for r in results] == [(p, "1.0.0", "initial") for p in first]
    second = {"p1": make_frame("p1", seed=1), "p2": make_frame("p2", seed=1), "p4": make_frame("p4"), "p3": first["p3"]}
    results = store.write_partitions(FEATURE, second, keys=KEYS, timestamp=TS, config_hash="cfg1")
    assert {r.partition: (r.version, r.bump) for r in results} == {
        "p1": ("1.0.1", "patch"), "p2": ("1.0.1", "patch"), "p4": ("1.0.1", "added"), "p3": ("1.0.1", "unchanged")}
    assert store.versions(FEATURE) == ["1.0.0", "1.0.1"]
    assert store.latest(FEATURE)["change"]["partitions"] == ["p1", "p2", "p4"]
    assert_same_rows(store.read(FEATURE), pl.concat(list(second.values())))
    assert_same_rows(store.read(FEATURE, version="1.0.0"), pl.concat(list(first.values())))
    for partition, frame in second.items():
        assert_same_rows(store.read(FEATURE, partitions=[partition]), frame)
    # Lazy scans keep working with filters and column selection on every backend.
    scanned = store.scan(FEATURE, partitions=["p1", "p4"]).filter(pl.col("spend") > 1000).select("customer_id").collect()
    assert sorted(scanned["customer_id"]) == ["p1-c0", "p1-c1", "p1-c2"]
    assert_consistent(store)


def test_read_back_equals_written_frames_with_nulls_and_many_rows(backend):
    """Values, dtypes (UTC datetimes, nulls) and order-independent content survive the round trip."""
    store = backend.new_store()
    big = make_frame("big", rows=20_000).with_columns(
        spend=pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col("spend")))
    write(store, "2024-01-01", big)
    back = store.read(FEATURE)
    assert back.schema == big.schema
    assert_same_rows(back, big)
    assert content_hash(back.sort(back.columns)) == content_hash(big.sort(big.columns))


# ---- 4. real processes -------------------------------------------------------------------------------


def test_four_processes_write_three_partitions_each_at_once(backend, workers):
    """4 processes x 3 partitions of one feature, released together: all 12 in the final manifest."""
    store = backend.new_store()
    per_process = [[(f"2024-01-{3 * w + i + 1:02d}", make_frame(f"w{w}p{i}", seed=w, rows=500)) for i in range(3)]
                   for w in range(4)]
    results = workers.run_together(backend.spec(store), per_process)
    bumps = sorted(r["bump"] for rs in results for r in rs)
    assert bumps == ["added"] * 11 + ["initial"], bumps
    assert {r["version"] for rs in results for r in rs} == {"1.0.0"}
    expected = dict(job for jobs in per_process for job in jobs)
    latest = store.latest(FEATURE)
    assert sorted(latest["partitions"]) == sorted(expected)
    assert latest["row_count"] == 500 * 12 and latest["revision"] == 12
    assert store.versions(FEATURE) == ["1.0.0"]
    assert_same_rows(store.read(FEATURE), pl.concat(list(expected.values())))
    for partition, frame in expected.items():
        assert_same_rows(store.read(FEATURE, partitions=[partition]), frame)
    assert_consistent(store)


def test_two_processes_patch_the_same_partition_at_once(backend, workers):
    """Both commits land, serialized as consecutive PATCH versions, each readable pinned with its own data."""
    store = backend.new_store()
    write(store, "p", make_frame("p"))
    other = make_frame("q")
    write(store, "q", other)
    for rnd in range(2):
        frames = [make_frame("p", seed=10 * (rnd + 1) + i, rows=2000) for i in range(2)]
        results = [rs[0] for rs in workers.run_together(backend.spec(store), [[("p", f)] for f in frames])]
        assert sorted(r["bump"] for r in results) == ["patch", "patch"]
        assert sorted(r["version"] for r in results) == [f"1.0.{2 * rnd + 1}", f"1.0.{2 * rnd + 2}"]
        for result, frame in zip(results, frames):
            assert_same_rows(store.read(FEATURE, version=result["version"], partitions=["p"]), frame)
            assert_same_rows(store.read(FEATURE, version=result["version"], partitions=["q"]), other)
    assert store.versions(FEATURE) == ["1.0.0", "1.0.1", "1.0.2", "1.0.3", "1.0.4"]
    assert_consistent(store)


@pytest.mark.parametrize("change", ["patch", "add"])
def test_writer_killed_between_data_put_and_commit(backend, workers, change):
    """os._exit at the commit: _latest.json is byte-identical, the orphan file is unreferenced, the next writer succeeds."""
    store = backend.new_store()
    a, b = make_frame("a"), make_frame("b")
    write(store, "a", a)
    write(store, "b", b)
    before = backend.keys(store)
    partition, frame = ("a", make_frame("a", seed=7)) if change == "patch" else ("c", make_frame("c", seed=7))

    code, _, err = workers.run(backend.spec(store), [(partition, frame)], mode="exit_in_commit")
    assert code == 17, err[-3000:]

    after = backend.keys(store)
    assert {k: after[k] for k in before} == before  # nothing that existed changed (a re-frozen manifest is identical)
    new = set(after) - set(before)
    assert len(new) == 1 and next(iter(new)).endswith(".parquet"), new  # the data file was put ...
    assert not new & referenced(store)  # ... but nothing refers to it
    assert store.versions(FEATURE) == ["1.0.0"]
    assert_same_rows(store.read(FEATURE), pl.concat([a, b]))

    result = write(store, partition, frame)
    assert (result.version, result.bump) == (("1.0.1", "patch") if change == "patch" else ("1.0.0", "added"))
    assert_same_rows(store.read(FEATURE, partitions=[partition]), frame)
    assert_same_rows(store.read(FEATURE, version="1.0.0", partitions=["a", "b"]), pl.concat([a, b]))
    assert_consistent(store)


def test_first_writer_killed_before_creating_latest(backend, workers):
    """A crashed first build commits nothing: no feature, no _latest.json; the next writer builds 1.0.0."""
    store = backend.new_store()
    frame = make_frame("a")
    code, _, err = workers.run(backend.spec(store), [("a", frame)], mode="exit_in_commit")
    assert code == 17, err[-3000:]
    objects = backend.keys(store)
    assert f"{FEATURE}/_latest.json" not in objects and any(k.endswith(".parquet") for k in objects)
    assert store.features() == [] and store.latest(FEATURE) is None
    with pytest.raises(StoreError, match="has no data"):
        store.read(FEATURE)
    result = write(store, "a", frame)
    assert (result.version, result.bump) == ("1.0.0", "initial")
    assert_same_rows(store.read(FEATURE), frame)
    assert_consistent(store)


# ---- 5. errors -------------------------------------------------------------------------------------------


def test_missing_bucket_is_one_clear_error_and_creates_nothing(cloud):
    name = f"fp-missing-{next(_names)}"
    with pytest.raises(StoreError) as caught:
        if cloud.kind == "s3":
            S3Store(name, "features", region=REGION, endpoint_url=cloud.server.url)
        else:
            GCSStore(name, "features", endpoint=cloud.server.url)
    message = str(caught.value)
    scheme = "s3" if cloud.kind == "s3" else "gs"
    assert message.startswith(f"{scheme}://{name}/features") and f"bucket '{name}' does not exist" in message
    assert "profile's offline_store" in message and SECRET_KEY not in message
    assert not cloud.bucket_exists(name)


@pytest.fixture
def moto_with_auth(cloud_env):
    """A moto server of its own that checks every request against its IAM: an admin and a read-only user."""
    with moto_server() as server:
        iam = boto3.client("iam", endpoint_url=server.url, region_name=REGION)
        keys = {}
        for user, actions in [("admin", ["s3:*"]), ("reader", ["s3:GetObject", "s3:ListBucket"])]:
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName=f"{user}-s3", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = boto3.session.Session(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                                               region_name=REGION)
        keys["admin"].client("s3", endpoint_url=server.url).create_bucket(Bucket="fp-guarded")
        moto_set_auth(server, True)
        try:
            yield server, keys
        finally:
            moto_set_auth(server, False)


def test_s3_refused_credentials_are_one_clear_error(moto_with_auth):
    """Unknown key, wrong secret, no s3:PutObject: one StoreError each, naming bucket and cause, no secret, nothing written."""
    server, sessions = moto_with_auth
    admin = S3Store("fp-guarded", "features", region=REGION, endpoint_url=server.url, session=sessions["admin"])
    frame = make_frame("a")
    write(admin, "2024-01-01", frame)
    s3 = sessions["admin"].client("s3", endpoint_url=server.url)

    def snapshot():
        listed = s3.list_objects_v2(Bucket="fp-guarded").get("Contents", [])
        return {o["Key"]: s3.get_object(Bucket="fp-guarded", Key=o["Key"])["Body"].read() for o in listed}

    before = snapshot()
    assert len(before) == 4

    unknown = boto3.session.Session(aws_access_key_id="AKIAUNKNOWNKEY000000", aws_secret_access_key=SECRET_KEY, region_name=REGION)
    with pytest.raises(StoreError) as caught:
        S3Store("fp-guarded", "features", region=REGION, endpoint_url=server.url, session=unknown)
    message = str(caught.value)
    assert message.startswith("s3://fp-guarded/features") and "credentials were refused" in message
    assert "InvalidAccessKeyId" in message and SECRET_KEY not in message

    real_key = sessions["reader"].get_credentials().get_frozen_credentials().access_key
    wrong_secret = boto3.session.Session(aws_access_key_id=real_key, aws_secret_access_key=SECRET_KEY, region_name=REGION)
    with pytest.raises(StoreError, match="SignatureDoesNotMatch") as caught:
        S3Store("fp-guarded", "features", region=REGION, endpoint_url=server.url, session=wrong_secret).latest(FEATURE)
    assert "credentials were refused" in str(caught.value) and SECRET_KEY not in str(caught.value)

    reader = S3Store("fp-guarded", "features", region=REGION, endpoint_url=server.url, session=sessions["reader"])
    assert_same_rows(reader.read(FEATURE), frame)  # reading is allowed (polars signs with the reader's keys)
    for attempt in [lambda: write(reader, "2024-01-02", make_frame("b")), lambda: write(reader, "2024-01-01", make_frame("a", seed=1))]:
        with pytest.raises(StoreError) as caught:
            attempt()
        message = str(caught.value)
        assert message.startswith("s3://fp-guarded/features") and "access denied for PutObject" in message
        assert "the credentials need s3:PutObject on this bucket" in message
        assert snapshot() == before  # nothing half-written: no data file, no manifest, _latest.json untouched
    assert admin.versions(FEATURE) == ["1.0.0"]
    assert_consistent(admin)


class _RefusingTokenEndpoint(http.server.BaseHTTPRequestHandler):
    """An OAuth token endpoint that refuses every refresh, as Google's does for a revoked credential."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"error": "invalid_grant", "error_description": "Token has been expired or revoked."}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_gcs_refused_credentials_are_one_clear_error(gcs, backends):
    """fake-gcs-server checks no credentials, so the refusal comes from the token endpoint (on loopback), as for a revoked key."""
    from google.oauth2.credentials import Credentials  # noqa: PLC0415

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingTokenEndpoint)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        creds = Credentials(token=None, refresh_token=SECRET_KEY, client_id="fp-tests", client_secret=SECRET_KEY,
                            token_uri=f"http://127.0.0.1:{httpd.server_address[1]}/token")
        client = storage.Client(project="fp-tests", credentials=creds, client_options={"api_endpoint": gcs.url})
        bucket = backends("gcs").bucket
        with pytest.raises(StoreError) as caught:
            GCSStore(bucket, "refused", client=client)
        message = str(caught.value)
        assert message.startswith(f"gs://{bucket}/refused") and "credentials were refused" in message
        assert "RefreshError" in message and SECRET_KEY not in message
        assert not any(b.name.startswith("refused/") for b in backends("gcs").client.list_blobs(bucket, prefix="refused/"))
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_secrets_stay_out_of_descriptions_metadata_and_messages(moto):
    """The secret key reaches polars through scan_options only: not description, repr, manifests or results."""
    store = S3Store(S3Backend(moto).bucket, "secrets", region=REGION, endpoint_url=moto.url)
    result = write(store, "2024-01-01", make_frame("a"))
    visible = [store.description, repr(store), json.dumps(dataclasses.asdict(result)), json.dumps(store.latest(FEATURE))]
    assert not any(SECRET_KEY in text for text in visible)
    options = store.scan_options()
    assert options["storage_options"]["aws_secret_access_key"] == SECRET_KEY  # polars needs it ...
    assert options["storage_options"]["aws_endpoint_url"] == moto.url and options["credential_provider"] is None
    with pytest.raises(StoreError) as caught:
        store.read(FEATURE, version="9.9.9")
    assert SECRET_KEY not in str(caught.value)


# ---- 6. profiles and Dagster resources -----------------------------------------------------------------


def _profile(project: Path, text: str) -> None:
    (project / "env" / "test.yaml").write_text(text)


@pytest.mark.parametrize("kind", KINDS)
def test_profile_builds_each_kind_from_yaml(project, monkeypatch, backends, kind):
    if kind == "local":
        _profile(project, "offline_store:\n  kind: local\n  path: ./store\n")
    elif kind == "s3":
        s3 = backends("s3")
        monkeypatch.setenv("FP_TEST_S3_ENDPOINT", s3.server.url)
        _profile(project, f"offline_store:\n  kind: s3\n  bucket: {s3.bucket}\n  prefix: profiles/s3\n  region: {REGION}\n"
                          "  endpoint_url: ${FP_TEST_S3_ENDPOINT}\n")
    else:
        g = backends("gcs")
        monkeypatch.setenv("FP_TEST_GCS_ENDPOINT", g.server.url)
        _profile(project, f"offline_store:\n  kind: gcs\n  bucket: {g.bucket}\n  prefix: profiles/gcs\n  project: fp-tests\n"
                          "  endpoint: ${FP_TEST_GCS_ENDPOINT}\n")
    store = load_profile().offline_store()
    assert type(store) is {"local": LocalStore, "s3": S3Store, "gcs": GCSStore}[kind]
    if kind == "local":
        assert Path(store.path) == (project / "store").resolve()
    else:
        assert store.prefix == f"profiles/{kind}" and store.description.startswith(("s3://", "gs://"))
    frame = make_frame("a", seed=next(_names))
    write(store, "2024-01-01", frame)
    assert_same_rows(load_profile().offline_store().read(FEATURE, partitions=["2024-01-01"]), frame)


def test_profile_empty_optional_settings_count_as_unset(project, monkeypatch, backends):
    """`region: ${AWS_REGION_FOR_FEATURES:-}` left unset means "from the AWS config", not region ''."""
    s3 = backends("s3")
    monkeypatch.setenv("FP_TEST_S3_ENDPOINT", s3.server.url)
    _profile(project, f"offline_store:\n  kind: s3\n  bucket: {s3.bucket}\n  prefix: ${{FP_UNSET_PREFIX:-}}\n"
                      "  region: ${FP_UNSET_REGION:-}\n  endpoint_url: ${FP_TEST_S3_ENDPOINT}\n")
    store = load_profile().offline_store()
    assert store.prefix == "" and store.blobs.region == REGION  # from AWS_DEFAULT_REGION


@pytest.mark.parametrize(("settings", "message"), [
    ("kind: s3\n  bucket: b\n  access_key: x", r"kind 's3' has unknown setting 'access_key'; it takes: bucket, prefix, region, endpoint_url "
                                              r"\(credentials come from the environment"),
    ("kind: gcs\n  bucket: b\n  endpoint_url: x", r"kind 'gcs' has unknown setting 'endpoint_url'; it takes: bucket, prefix, project, endpoint"),
    ("kind: local\n  pth: ./store", r"kind 'local' has unknown setting 'pth'; it takes: path"),
    ("kind: s3\n  prefix: features", r"kind 's3' needs `bucket`"),
    ("kind: gcs\n  bucket: ''", r"kind 'gcs' needs `bucket`"),
    ("kind: azure\n  bucket: b", r"kind 'azure' is not supported; expected one of 'local', 's3', 'gcs', 'unity_catalog'"),
])
def test_profile_offline_store_mistakes_are_profile_errors(project, settings, message):
    _profile(project, f"offline_store:\n  {settings}\n")
    with pytest.raises(ProfileError, match=message):
        load_profile().offline_store()


def test_s3_store_from_dagster_s3_resource(moto, backends):
    from dagster_aws.s3 import S3Resource  # noqa: PLC0415

    resource = S3Resource(region_name=REGION, endpoint_url=moto.url, aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY, max_attempts=3)
    store = S3Store.from_resource(resource, backends("s3").bucket, "from-resource")
    frame = make_frame("a")
    assert write(store, "2024-01-01", frame).bump == "initial"
    assert_same_rows(store.read(FEATURE), frame)
    assert SECRET_KEY not in store.description


def test_gcs_store_from_dagster_gcs_resource(gcs, backends, monkeypatch):
    from dagster_gcp import GCSResource  # noqa: PLC0415

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)  # how google-cloud-storage itself is pointed at an emulator
    store = GCSStore.from_resource(GCSResource(project="fp-tests"), backends("gcs").bucket, "from-resource")
    frame = make_frame("a")
    assert write(store, "2024-01-01", frame).bump == "initial"
    assert_same_rows(store.read(FEATURE), frame)


# ---- 7. damaged stores: one error naming the object; leftovers of killed writers ---------------------------


def test_corrupt_latest_json_is_one_store_error_naming_the_object(backend):
    store = backend.new_store()
    write(store, "a", make_frame("a"))
    good = store.blobs.read(f"{FEATURE}/_latest.json")[0]
    store.blobs.put(f"{FEATURE}/_latest.json", good[: len(good) // 2])
    before = backend.keys(store)
    where = store.blobs.uri(f"{FEATURE}/_latest.json")
    for call in (lambda: store.latest(FEATURE), lambda: store.read(FEATURE), lambda: store.versions(FEATURE),
                 lambda: write(store, "b", make_frame("b"))):
        with pytest.raises(StoreError) as caught:
            call()
        message = str(caught.value)
        assert f"metadata file {where} is corrupt (not valid JSON" in message and "restore it from git" in message, message
    assert backend.keys(store) == before


def test_truncated_data_file_is_one_store_error_naming_it(backend):
    store = backend.new_store()
    write(store, "a", make_frame("a"))
    result = write(store, "b", make_frame("b"))
    good = store.blobs.read(result.path)[0]
    store.blobs.put(result.path, good[:-5])
    with pytest.raises(StoreError) as caught:
        store.read(FEATURE)
    message = str(caught.value)
    assert f"data file {result.uri} (partition b) is unreadable" in message, message
    assert "run `feature-pipelines sync` to rebuild it" in message
    assert_same_rows(store.read(FEATURE, partitions=["a"]), make_frame("a"))


def test_gc_removes_what_a_killed_writer_left_and_nothing_else(backend, workers, tmp_path):
    """SIGKILL at the commit leaves an unreferenced data file: gc spares it within the grace period, then removes it
    (grace 0) and nothing else; every version reads as before."""
    import signal
    import time
    from datetime import timedelta

    store = backend.new_store()
    write(store, "a", make_frame("a"))
    write(store, "b", make_frame("b"))
    write(store, "a", make_frame("a", seed=1))
    store.blobs.put(f"{FEATURE}/readme.txt", b"not the store's")
    store.blobs.put(f"{FEATURE}/1.0.0/mine.parquet", b"not the store's naming")
    store.blobs.put("other/1.0.0/x-0123456789abcdef.parquet.bak", b"not the store's")
    versions = {v: store.read(FEATURE, version=v) for v in store.versions(FEATURE)}
    kept = backend.keys(store)

    signal_file = tmp_path / "at-commit"
    proc = workers.start(backend.spec(store), [("b", make_frame("b", seed=7))], mode="hang_at_commit", signal=str(signal_file))
    deadline = time.monotonic() + 120
    while not signal_file.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    after_kill = backend.keys(store)
    orphans = {k for k in after_kill if k not in kept and not k.endswith(".lock")}
    assert len(orphans) == 1 and next(iter(orphans)).startswith(f"{FEATURE}/1.0.2/b-"), orphans
    assert not orphans & referenced(store)

    assert store.collect_garbage() == []  # fresh: a writer may still be on its way to the commit
    assert {r.path for r in store.collect_garbage(older_than=timedelta(0), dry_run=True)} == orphans
    assert backend.keys(store) == after_kill
    removed = store.collect_garbage(older_than=timedelta(0))
    assert {r.path for r in removed} == orphans and {r.reason for r in removed} == {"unreferenced data file"}
    final = {k: v for k, v in backend.keys(store).items() if not k.endswith(".lock")}
    assert final == {k: v for k, v in kept.items() if not k.endswith(".lock")}  # everything else, bit for bit
    for version, frame in versions.items():
        assert store.read(FEATURE, version=version).equals(frame)
    assert_consistent(store)
    assert store.collect_garbage(older_than=timedelta(0)) == []


def test_check_files_and_restore_file_on_every_backend(backend):
    """What `feature-pipelines sync` runs: each referenced file checked against its manifest entry; a damaged one is
    rewritten only from data with the committed hash."""
    store = backend.new_store()
    a, b, c = make_frame("a"), make_frame("b"), make_frame("c")
    write(store, "a", a)
    write(store, "b", b)
    write(store, "c", c)
    write(store, "a", make_frame("a", seed=1))  # 1.0.1 inherits b and c
    files = {r.partition: r for r in store.check_files(FEATURE) if r.path.startswith(f"{FEATURE}/1.0.0/")}
    good = store.blobs.read(files["b"].path)[0]
    store.blobs.put(files["b"].path, good[: len(good) // 2])
    store.blobs.put(files["c"].path, store.blobs.read(files["a"].path)[0])  # readable, but another partition's data
    checks = {(r.partition, r.versions): r for r in store.check_files(FEATURE)}
    assert {k: v.status for k, v in checks.items()} == {
        ("a", ("1.0.0",)): "ok", ("a", ("1.0.1",)): "ok", ("b", ("1.0.0", "1.0.1")): "unreadable",
        ("c", ("1.0.0", "1.0.1")): "corrupt"}
    damaged_b, damaged_c = checks[("b", ("1.0.0", "1.0.1"))], checks[("c", ("1.0.0", "1.0.1"))]
    assert damaged_b.uri == store.blobs.uri(damaged_b.path) and damaged_b.detail.startswith("unreadable (")
    assert "differs from the committed hash" in store.restore_file(damaged_b, make_frame("b", seed=5))
    assert store.blobs.read(damaged_b.path)[0] == good[: len(good) // 2]  # refused: nothing written
    assert store.restore_file(damaged_b, b) is None and store.restore_file(damaged_c, c) is None
    assert {r.status for r in store.check_files(FEATURE)} == {"ok"}
    assert_same_rows(store.read(FEATURE, version="1.0.0"), pl.concat([a, b, c]))
    assert_consistent(store)
