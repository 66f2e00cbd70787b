"""The versioned offline store: immutable partition files and one atomic commit point per feature.

Layout under the store root::

    <feature>/_latest.json                 the commit point: full manifest of the newest version
    <feature>/<MAJOR.MINOR.PATCH>/.meta.json  that version's manifest (final once superseded)
    <feature>/<MAJOR.MINOR.PATCH>/<partition>-<hash>.parquet   immutable partition data
    .gitignore                             keeps data files out of git; metadata stays committable

Every write is: put the data file (invisible until referenced), then compare-and-swap
`_latest.json`. A writer that loses the race re-reads and retries, so two partitions written at
once both survive and readers only ever see committed versions. Versioning rules (store/versioning.py):
first build 1.0.0; MAJOR when a column is removed or changes dtype; MINOR when a column is added or
the definition's config changes (the new version starts empty: old partitions were computed by a
different definition); PATCH when an already-materialized partition gets different data (the new
version inherits every other partition); identical data changes nothing. A partition that holds rows
is never replaced by an empty one within a version (an emptied source is far likelier than an
interval that really lost every event): that write is a DataError and changes nothing, unless the
caller passes `allow_empty=True`.

Damage reads in one line: a metadata file that is not a manifest, or a data file that is missing or
unreadable, is one StoreError naming the file and its repair (`load_manifest`, `read_failure`).
`check_files` verifies every data file the committed versions reference (what `feature-pipelines sync`
reports and rebuilds); `collect_garbage` (store/cleanup.py) removes what killed or outraced writers left.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl
import xxhash

from feature_pipelines.errors import StoreError
from feature_pipelines.spec.names import check_identifier
from feature_pipelines.store.blobs import Blobs
from feature_pipelines.store.hashing import HASH_FORMAT, content_hash
from feature_pipelines.store.versioning import _some, decide  # unity.py imports both from here too

FORMAT = 1
LATEST = "_latest.json"
META = ".meta.json"
GITIGNORE = """# Written by feature_pipelines: data files stay out of git, metadata (*.json) is committable.
*.parquet
*.tmp
.*.lock
"""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def schema_of(frame: pl.DataFrame) -> list[dict[str, str]]:
    return [{"name": name, "dtype": str(dtype)} for name, dtype in frame.schema.items()]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


# ---- damaged metadata: one error naming the file and the repair ------------------------------------

_SEMVER = re.compile(r"\d+\.\d+\.\d+")
FILE_ENTRY = ("file", "rows", "content_hash")
"""The fields every partition entry of a file store's manifest has."""


def metadata_repair(feature: str, folder: str) -> str:
    """How to repair a file store's damaged metadata file (said after the file is named)."""
    return (f"restore it from git / version control (the store's metadata files are committable), or delete the feature's "
            f"folder {folder} and rebuild it (`feature-pipelines build --features {feature}`)")


def corrupt_metadata(feature: str, where: str, problem: str, repair: str) -> StoreError:
    """The one StoreError for damaged metadata: which feature, which file (or row), what is wrong, how to repair it."""
    return StoreError(f"feature {feature!r}: {where} is corrupt ({problem}); {repair}")


def load_manifest(data: bytes | str | dict, *, feature: str, where: str, repair: str, version: str | None = None,
                  entry_fields: tuple[str, ...] = FILE_ENTRY) -> dict:
    """A manifest from its stored JSON (or an already decoded dict), checked to be one; the shared helper of every store.

    `where` names the file or row (e.g. "metadata file s3://bucket/f/_latest.json"), `repair` says what to do;
    anything that is not JSON, not an object, lacks a field readers use, names another feature or (with
    `version`) another version is a StoreError built by `corrupt_metadata`.
    """
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise corrupt_metadata(feature, where, f"not valid JSON ({_first_line(err)})", repair) from None
    problem = _manifest_problem(data, feature, version, entry_fields)
    if problem:
        raise corrupt_metadata(feature, where, problem, repair)
    return data


def _manifest_problem(manifest: Any, feature: str, version: str | None, entry_fields: tuple[str, ...]) -> str | None:
    """What makes `manifest` unusable as `feature`'s manifest (of `version`), or None."""
    if not isinstance(manifest, dict):
        return f"not a manifest: a JSON {type(manifest).__name__.replace('NoneType', 'null')}, expected an object"
    expected = {"name": str, "version": str, "keys": list, "timestamp_column": str, "columns": list, "config_hash": str,
                "partitions": dict}
    for field, kind in expected.items():
        if field not in manifest:
            return f"no {field!r} field"
        if not isinstance(manifest[field], kind):
            return f"{field!r} is a JSON {type(manifest[field]).__name__.replace('NoneType', 'null')}, expected a {kind.__name__}"
    if manifest["name"] != feature:
        return f"it is the manifest of feature {manifest['name']!r}"
    if not _SEMVER.fullmatch(manifest["version"]):
        return f"version {manifest['version']!r} is not MAJOR.MINOR.PATCH"
    if version is not None and manifest["version"] != version:
        return f"it holds version {manifest['version']}, expected {version}"
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str) and isinstance(c.get("dtype"), str) for c in manifest["columns"]):
        return "'columns' is not a list of {name, dtype}"
    for key, entry in manifest["partitions"].items():
        missing = [f for f in entry_fields if f not in entry] if isinstance(entry, dict) else list(entry_fields)
        if missing:
            return f"partition {key!r} has no {missing[0]!r}"
    return None


def _hash_json(value: Any) -> str:
    return xxhash.xxh3_64_hexdigest(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


@dataclass(frozen=True)
class FileCheck:
    """One data file a committed version references, as `VersionedStore.check_files` found it.

    `status`: ok | missing | unreadable | corrupt (reads, but its columns, row count or content hash differ from the
    manifest) | old_format (reads, rows as committed, but its entry predates `hash_format` and today's hash differs:
    v1 or damage, which cannot be told apart). `detail` says it in words.
    """

    feature: str
    partition: str
    path: str  # relative to the store root
    uri: str
    versions: tuple[str, ...]  # the committed versions that reference it
    entry: dict
    config_hash: str
    columns: list
    status: str
    detail: str


@dataclass(frozen=True)
class CommitResult:
    """What one partition write did: the version it landed in and why."""

    feature: str
    partition: str
    version: str
    bump: str  # initial | major | minor | patch | added | unchanged
    reason: str
    rows: int
    content_hash: str
    schema_hash: str
    config_hash: str
    path: str
    uri: str


class VersionedStore:
    """Versioned, atomically committed partition storage for feature frames over any `Blobs`."""

    def __init__(self, blobs: Blobs, *, description: str = "") -> None:
        self.blobs = blobs
        self.description = description or blobs.uri("")
        if not blobs.exists(".gitignore"):
            blobs.create(".gitignore", GITIGNORE.encode())

    # ---- reading -------------------------------------------------------------------------

    def features(self) -> list[str]:
        return [name for name in self.blobs.list_dirs("") if self.blobs.exists(f"{name}/{LATEST}")]

    def _load(self, feature: str, path: str, found: tuple[bytes, str], version: str | None = None) -> dict:
        """The manifest stored at `path` (bytes already read), or the StoreError naming the file and the repair."""
        return load_manifest(found[0], feature=feature, where=f"metadata file {self.blobs.uri(path)}", version=version,
                             repair=metadata_repair(feature, self.blobs.uri(feature)))

    def _read_manifest(self, feature: str, version: str | None = None) -> tuple[dict, str] | None:
        """(manifest, token) of `_latest.json` (or of `version`'s .meta.json), None if absent; StoreError if damaged."""
        path = f"{feature}/{LATEST}" if version is None else f"{feature}/{version}/{META}"
        found = self.blobs.read(path)
        return None if found is None else (self._load(feature, path, found, version), found[1])

    def latest(self, feature: str) -> dict | None:
        """The newest version's manifest, or None if the feature was never written."""
        found = self._read_manifest(check_identifier(feature, "feature name"))
        return None if found is None else found[0]

    def manifest(self, feature: str, version: str | None = None) -> dict:
        """Manifest of `version` (default: the newest), or of a snapshot `version+rN` (the version as commit N left it);
        a StoreError lists the versions that exist."""
        if version and "+r" in version:
            base, _, revision = version.partition("+r")
            return snapshot(feature, self.manifest(feature, base), revision)
        latest = newest_or_raise(self, feature)
        if not wants_older(feature, version, latest):
            return latest
        found = self._read_manifest(feature, version)
        if found is None or version not in self.versions(feature):
            raise StoreError(f"feature {feature!r} has no version {version!r}; versions: {self.versions(feature)}")
        return found[0]

    def versions(self, feature: str) -> list[str]:
        """Committed versions, oldest first (follows parent links from the newest, skipping abandoned writes)."""
        latest = self.latest(feature)
        out = []
        version = latest and latest["version"]
        while version and version not in out:
            out.append(version)
            found = self._read_manifest(feature, version) if version != latest["version"] else (latest, "")
            version = found[0].get("parent_version") if found else None
        return out[::-1]

    def chain(self, feature: str) -> list[dict]:
        """The manifests of every committed version, oldest first, each read once; unlike `versions`, a version manifest
        missing from the parent chain is a StoreError (it is written before its successor commits: it was lost)."""
        latest = newest_or_raise(self, feature)
        out = [latest]
        parent = latest.get("parent_version")
        while parent and parent not in {m["version"] for m in out}:
            found = self._read_manifest(feature, parent)
            if found is None:
                raise StoreError(f"feature {feature!r}: metadata file {self.blobs.uri(f'{feature}/{parent}/{META}')} is "
                                 f"missing (version {parent} is on the chain of {latest['version']}); restore it from git / "
                                 "version control")
            out.append(found[0])
            parent = found[0].get("parent_version")
        return out[::-1]

    def partition_files(self, feature: str, version: str | None = None, partitions: list[str] | None = None) -> list[str]:
        """URIs of the data files of `partitions` (default all), in partition order."""
        return self._files(feature, self.manifest(feature, version), partitions)

    def _files(self, feature: str, manifest: dict, partitions: list[str] | None) -> list[str]:
        entries = manifest["partitions"]
        if partitions is None:
            keys = sorted(entries)
        else:
            missing = [p for p in partitions if p not in entries]
            if missing:
                have = sorted(entries)
                span = f"{have[0]} … {have[-1]} ({len(have)} partitions)" if have else "none"
                raise StoreError(
                    f"feature {feature!r} version {manifest['version']} has no partition(s) {missing[:5]}; "
                    f"materialized: {span}"
                )
            keys = list(partitions)
        return [self.blobs.uri(f"{feature}/{entries[k]['file']}") for k in keys]

    def scan(self, feature: str, version: str | None = None, partitions: list[str] | None = None) -> pl.LazyFrame:
        """Lazy scan over a version's partition files, so column selection and filters push down.

        The manifest is read once: files and schema come from the same committed version.
        """
        return self._scan_manifest(feature, self.manifest(feature, version), partitions)

    def _scan_manifest(self, feature: str, manifest: dict, partitions: list[str] | None) -> pl.LazyFrame:
        files = self._files(feature, manifest, partitions)
        if not files:
            return pl.DataFrame(schema=_polars_schema(manifest)).lazy()
        try:
            return self._scan_files(files)
        except (OSError, pl.exceptions.PolarsError) as err:  # a store that reads eagerly (GCS) fails here
            raise self.read_failure(feature, manifest, partitions, err) from None

    def _scan_files(self, files: list[str]) -> pl.LazyFrame:
        return pl.scan_parquet(files, **self.scan_options())

    def scan_options(self) -> dict:
        return {}

    def read(self, feature: str, version: str | None = None, partitions: list[str] | None = None, columns: list[str] | None = None) -> pl.DataFrame:
        """A version's partitions (default: all) as one frame; a missing or unreadable data file is a StoreError naming it."""
        manifest = self.manifest(feature, version)
        frame = self._scan_manifest(feature, manifest, partitions)
        try:
            return (frame.select(columns) if columns else frame).collect()
        except (OSError, pl.exceptions.PolarsError) as err:
            if isinstance(err, pl.exceptions.ColumnNotFoundError):
                raise
            raise self.read_failure(feature, manifest, partitions, err) from None

    def read_failure(self, feature: str, manifest: dict, partitions: list[str] | None, err: BaseException) -> StoreError:
        """The StoreError for a read of `partitions` of `manifest` that failed with `err`: it names the first data file that
        is missing or unreadable (each one is checked now) and says how to rebuild it."""
        keys = sorted(manifest["partitions"]) if partitions is None else list(partitions)
        damaged = []
        for key in keys:
            rel = f"{feature}/{manifest['partitions'][key]['file']}"
            problem = self._file_problem(rel)
            if problem:
                damaged.append((key, rel, problem))
        if not damaged:
            return StoreError(f"feature {feature!r} version {manifest['version']}: reading its data files from "
                              f"{self.description} failed: {_first_line(err)}")
        key, rel, problem = damaged[0]
        more = (f"; {len(damaged) - 1} more data file(s) of this read are damaged too (`feature-pipelines sync` lists them)"
                if len(damaged) > 1 else "")
        return StoreError(f"feature {feature!r} version {manifest['version']}: data file {self.blobs.uri(rel)} (partition "
                          f"{key}) is {problem}; run `feature-pipelines sync` to rebuild it{more}")

    def _file_problem(self, rel: str) -> str | None:
        """'missing', 'unreadable (...)' or None for the data file at `rel`."""
        found = self.blobs.read(rel)
        if found is None:
            return "missing"
        try:
            pl.read_parquet(io.BytesIO(found[0]))
        except (OSError, pl.exceptions.PolarsError) as err:
            return f"unreadable ({_first_line(err)})"
        return None

    # ---- writing -------------------------------------------------------------------------

    def write_partition(
        self,
        feature: str,
        partition: str,
        frame: pl.DataFrame,
        *,
        keys: list[str],
        timestamp: str,
        config_hash: str,
        info: dict | None = None,
        lineage: dict | None = None,
        allow_empty: bool = False,
    ) -> CommitResult:
        """Store one partition's frame and commit it atomically; see `write_partitions`."""
        (result,) = self.write_partitions(feature, {partition: frame}, keys=keys, timestamp=timestamp,
                                          config_hash=config_hash, info=info, lineage=lineage, allow_empty=allow_empty)
        return result

    def write_partitions(
        self,
        feature: str,
        frames: dict[str, pl.DataFrame],
        *,
        keys: list[str],
        timestamp: str,
        config_hash: str,
        info: dict | None = None,
        lineage: dict | None = None,
        allow_empty: bool = False,
    ) -> list[CommitResult]:
        """Store partition frames (one file each) and commit them together in one atomic version change.

        A backfill that changes many partitions therefore makes one PATCH, not one per partition.
        `lineage` (opaque, e.g. the source fingerprint) is kept on each partition's entry; the store
        records an unchanged partition's new lineage without changing the version. Replacing a
        partition that holds rows with an empty frame is a DataError unless `allow_empty`.
        """
        check_identifier(feature, "feature name")
        if not frames:
            return []
        prepared = {}
        for partition, frame in frames.items():
            missing = [c for c in [*keys, timestamp] if c not in frame.columns]
            if missing:
                raise StoreError(f"feature {feature!r} partition {partition!r}: frame lacks key/timestamp column(s) {missing}")
            prepared[partition] = (frame, schema_of(frame), content_hash(frame))
        schema = next(iter(prepared.values()))[1]
        odd = [p for p, (_, s, _) in prepared.items() if s != schema]
        if odd:
            raise StoreError(f"feature {feature!r}: partitions {odd[:3]} have a different schema from {next(iter(prepared))!r} in one write")
        written: dict[str, str] = {}  # data files already put, by relative path
        for _ in range(100):
            found = self.blobs.read(f"{feature}/{LATEST}")
            current, token = (self._load(feature, f"{feature}/{LATEST}", found), found[1]) if found else (None, None)
            outcome, version, bump, reason = decide(current, {p: d for p, (_, _, d) in prepared.items()}, schema, config_hash,
                                                    rows=None if allow_empty else {p: f.height for p, (f, _, _) in prepared.items()})
            fresh = bump in ("initial", "major", "minor")
            base_partitions: dict = {} if fresh else dict(current["partitions"])
            stale_lineage = [p for p, (b, _) in outcome.items()
                             if b == "unchanged" and lineage and current["partitions"][p].get("lineage") != lineage]
            if bump == "unchanged" and not stale_lineage:
                return [self._result(feature, p, current, "unchanged", outcome[p][1], current["partitions"][p]) for p in prepared]
            now = _now()
            replaced = {}
            for partition, (frame, _, digest) in prepared.items():
                part_bump = outcome[partition][0]
                if part_bump == "unchanged":
                    base_partitions[partition] = {**base_partitions[partition], **({"lineage": lineage} if lineage else {})}
                    continue
                rel = f"{version}/{_safe(partition)}-{digest[:16]}.parquet"
                if rel not in written:
                    # Put even when a file of this name exists (left by a killed writer): the fresh write makes it
                    # young again, so `collect_garbage` never takes a file this commit is about to reference.
                    self.blobs.put(f"{feature}/{rel}", _parquet_bytes(frame))
                written[rel] = partition
                if partition in base_partitions:
                    replaced[partition] = base_partitions[partition]["file"]
                base_partitions[partition] = {"file": rel, "rows": frame.height, "content_hash": digest,
                                              "hash_format": HASH_FORMAT, "written_at": now,
                                              **({"lineage": lineage} if lineage else {})}
            new = next_manifest(feature, current, version, bump, reason, outcome, keys=keys, timestamp=timestamp, schema=schema,
                                config_hash=config_hash, info=info, partitions=base_partitions, replaced=replaced, now=now)
            blob = json.dumps(new, indent=1, sort_keys=False).encode()
            if current is None:
                committed = self.blobs.create(f"{feature}/{LATEST}", blob)
            else:
                if version != current["version"]:
                    # Freeze the superseded version's manifest before the swap makes it history.
                    self._save_manifest(feature, current["version"], found[0], current.get("revision", 0))
                committed = self.blobs.swap(f"{feature}/{LATEST}", blob, token)
            if committed:
                self._save_manifest(feature, version, blob, new["revision"])
                return [self._result(feature, p, new, *outcome[p], new["partitions"][p]) for p in prepared]
        raise StoreError(f"feature {feature!r}: could not commit {_some(list(prepared))} after 100 attempts (heavy contention?)")

    def _save_manifest(self, feature: str, version: str, blob: bytes, revision: int) -> None:
        """Write a version's .meta.json unless a newer revision is already there (a slow writer never regresses it)."""
        path = f"{feature}/{version}/{META}"
        for _ in range(100):
            found = self.blobs.read(path)
            if found is None:
                if self.blobs.create(path, blob):
                    return
            elif _revision(found[0]) >= revision or self.blobs.swap(path, blob, found[1]):
                return
        raise StoreError(f"feature {feature!r}: could not save the manifest of version {version} (heavy contention?)")

    # ---- verifying and restoring data files (feature-pipelines sync) ------------------------------

    def check_files(self, feature: str) -> list[FileCheck]:
        """Every data file the committed versions of `feature` reference, each read and checked against its manifest
        entry: present, readable, same columns and row count, same content hash (see `FileCheck.status`)."""
        files: dict[str, tuple[str, list[str], dict, dict]] = {}  # rel -> (partition, versions, entry, manifest)
        for manifest in self.chain(feature):
            version = manifest["version"]
            for key, entry in sorted(manifest["partitions"].items()):
                rel = f"{feature}/{entry['file']}"
                files.setdefault(rel, (key, [], entry, manifest))[1].append(version)
        return [self._check(feature, rel, *found) for rel, found in sorted(files.items(), key=lambda kv: (kv[1][0], kv[0]))]

    def _check(self, feature: str, rel: str, partition: str, versions: list[str], entry: dict, manifest: dict) -> FileCheck:
        def result(status: str, detail: str) -> FileCheck:
            return FileCheck(feature, partition, rel, self.blobs.uri(rel), tuple(versions), entry, manifest["config_hash"],
                             manifest["columns"], status, detail)

        found = self.blobs.read(rel)
        if found is None:
            return result("missing", "missing")
        try:
            frame = pl.read_parquet(io.BytesIO(found[0]))
        except (OSError, pl.exceptions.PolarsError) as err:
            return result("unreadable", f"unreadable ({_first_line(err)})")
        if schema_of(frame) != manifest["columns"]:
            return result("corrupt", "its columns differ from the manifest's (corrupt)")
        if frame.height != entry["rows"]:
            return result("corrupt", f"{frame.height} rows, the manifest says {entry['rows']} (corrupt)")
        if content_hash(frame) == entry["content_hash"]:
            return result("ok", "verified")
        if entry.get("hash_format") == HASH_FORMAT:
            return result("corrupt", "content differs from the committed hash (corrupt)")
        return result("old_format", f"committed with an older hash format; rebuild the partition to re-verify "
                                    f"(`feature-pipelines build --features {feature} --partition {partition} --force`)")

    def restore_file(self, check: FileCheck, frame: pl.DataFrame) -> str | None:
        """Write `frame` (the partition recomputed) as `check`'s data file if it is exactly what was committed.

        Returns None when written, else why not; a file that verifies is never rewritten.
        """
        if check.status in ("ok", "old_format"):
            return "the file verifies" if check.status == "ok" else "the file reads fine"
        if schema_of(frame) != check.columns:
            return "the recomputed columns differ from the committed ones"
        digest = content_hash(frame)
        if digest != check.entry["content_hash"]:
            if check.entry.get("hash_format") != HASH_FORMAT:
                return (f"cannot verify the recomputed data against a hash of the older format; rebuild the partition "
                        f"(`feature-pipelines build --features {check.feature} --partition {check.partition} --force`)")
            return "recomputed data differs from the committed hash (the source or the definition's code changed since?)"
        self.blobs.put(check.path, _parquet_bytes(frame))
        return None

    # ---- leftovers (feature-pipelines gc) -----------------------------------------------------

    def collect_garbage(self, features: list[str] | None = None, *, older_than: timedelta = timedelta(hours=1),
                        dry_run: bool = False) -> list:
        """Remove temp files and unreferenced data files older than `older_than` under `features` (default: every
        feature folder); see store/cleanup.py for the rules. Returns what was (or, with `dry_run`, would be) removed."""
        from feature_pipelines.store.cleanup import collect_garbage

        return collect_garbage(self, features, older_than=older_than, dry_run=dry_run)

    def _result(self, feature: str, partition: str, manifest: dict, bump: str, reason: str, entry: dict) -> CommitResult:
        return commit_result(feature, partition, manifest, bump, reason, entry, path=f"{feature}/{entry['file']}",
                             uri=self.blobs.uri(f"{feature}/{entry['file']}"))

def commit_result(feature: str, partition: str, manifest: dict, bump: str, reason: str, entry: dict, *,
                  path: str, uri: str) -> CommitResult:
    """What a write reports for one partition, from the committed manifest and the partition's entry."""
    return CommitResult(feature=feature, partition=partition, version=manifest["version"], bump=bump, reason=reason,
                        rows=entry["rows"], content_hash=entry["content_hash"], schema_hash=manifest["schema_hash"],
                        config_hash=manifest["config_hash"], path=path, uri=uri)


def next_manifest(feature: str, current: dict | None, version: str, bump: str, reason: str, outcome: dict, *,
                  keys: list[str], timestamp: str, schema: list, config_hash: str, info: dict | None,
                  partitions: dict, replaced: dict, now: str) -> dict:
    """The manifest a write commits, from the current one and the write's outcome; the same for every store.

    `partitions` are the new version's entries; `replaced` maps partitions to what they replaced.
    """
    changed = sorted(p for p, (b, _) in outcome.items() if b != "unchanged")
    new = {
        "format": FORMAT,
        "name": feature,
        "version": version,
        "parent_version": current["version"] if current and version != current["version"] else (current or {}).get("parent_version"),
        "keys": list(keys),
        "timestamp_column": timestamp,
        "columns": schema,
        "schema_hash": _hash_json(schema),
        "config_hash": config_hash,
        "info": info or {},
        "revision": (current or {}).get("revision", 0) + 1,
        "created_at": now if not current or version != current["version"] else current["created_at"],
        "updated_at": now,
        "change": current["change"] if bump == "unchanged" else
        {"bump": bump, "reason": reason, "partitions": changed, "replaced_files": replaced},
    }
    # Each entry records the commit (revision) that wrote it, and the manifest the revision its version began at:
    # a version's files only ever grow (changed data is a new version), so "version+rN" is an exact, frozen snapshot.
    new["created_revision"] = (new["revision"] if not current or version != current["version"]
                               else current.get("created_revision", 0))
    partitions = {p: ({**e, "revision": new["revision"]} if p in changed else e) for p, e in partitions.items()}
    new["partitions"] = dict(sorted(partitions.items()))
    new["row_count"] = sum(p["rows"] for p in new["partitions"].values())
    new["content_hash"] = _hash_json({k: v["content_hash"] for k, v in new["partitions"].items()})
    return new


def newest_or_raise(store, feature: str) -> dict:
    """`store.latest(feature)`, or a StoreError saying how to materialize it and which features have data."""
    latest = store.latest(feature)
    if latest is None:
        raise StoreError(
            f"feature {feature!r} has no data in {store.description}; materialize it first "
            f"(e.g. `feature-pipelines build --features {feature}`); features with data: "
            f"{', '.join(store.features()) or 'none'}"
        )
    return latest


def snapshot(feature: str, manifest: dict, revision: str | int) -> dict:
    """`manifest` as commit `revision` left it: the partitions committed at or before it, with that revision's totals."""
    if not str(revision).isdigit():
        raise StoreError(f"snapshot '{manifest['version']}+r{revision}' of feature {feature!r} is not VERSION+rN, e.g. '1.0.0+r7'")
    revision = int(revision)
    first, last = manifest.get("created_revision", 0), manifest.get("revision", 0)
    if not first <= revision <= last:
        raise StoreError(f"feature {feature!r} version {manifest['version']} has no snapshot r{revision}: it spans commits "
                         f"r{first} … r{last}")
    kept = {p: e for p, e in manifest["partitions"].items() if e.get("revision", 0) <= revision}
    return {**manifest, "partitions": kept, "revision": revision, "row_count": sum(e["rows"] for e in kept.values()),
            "content_hash": _hash_json({k: v["content_hash"] for k, v in kept.items()})}


def snapshot_name(manifest: dict) -> str:
    """`VERSION+rN`: the exact snapshot `manifest` describes, accepted back as a pin."""
    return f"{manifest['version']}+r{manifest.get('revision', 0)}"


def wants_older(feature: str, version: str | None, latest: dict) -> bool:
    """True when `version` names a version other than the newest; a StoreError when it is not MAJOR.MINOR.PATCH."""
    if version is None or version in ("latest", "_latest", latest["version"]):
        return False
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise StoreError(f"version {version!r} of feature {feature!r} is not MAJOR.MINOR.PATCH, e.g. '1.0.0'")
    return True


def _revision(blob: bytes) -> int:
    """The revision of a stored .meta.json; -1 when it is damaged, so the authoritative copy replaces it."""
    try:
        return int(json.loads(blob).get("revision", 0))
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError):
        return -1


def _safe(partition: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]", "", partition.replace(":", ""))


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf, compression="zstd", statistics=True)
    return buf.getvalue()


_DTYPES = {"String": pl.String, "Float64": pl.Float64, "Int64": pl.Int64, "Boolean": pl.Boolean}


def _polars_schema(manifest: dict) -> dict:
    """Best-effort polars schema from a manifest, for an empty scan of a version with no partitions."""
    out = {}
    for column in manifest["columns"]:
        dtype = column["dtype"]
        if dtype.startswith("Datetime"):
            out[column["name"]] = pl.Datetime("us", "UTC" if "UTC" in dtype else None)
        else:
            out[column["name"]] = _DTYPES.get(dtype, pl.String)
    return out
