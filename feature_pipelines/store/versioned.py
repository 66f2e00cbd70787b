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
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import polars as pl
import xxhash

from feature_pipelines.errors import StoreError
from feature_pipelines.spec.names import check_identifier
from feature_pipelines.store.blobs import Blobs
from feature_pipelines.store.hashing import content_hash
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


def _hash_json(value: Any) -> str:
    return xxhash.xxh3_64_hexdigest(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


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

    def latest(self, feature: str) -> dict | None:
        """The newest version's manifest, or None if the feature was never written."""
        found = self.blobs.read(f"{check_identifier(feature, 'feature name')}/{LATEST}")
        return None if found is None else json.loads(found[0])

    def manifest(self, feature: str, version: str | None = None) -> dict:
        """Manifest of `version` (default: the newest); a StoreError lists the versions that exist."""
        latest = newest_or_raise(self, feature)
        if not wants_older(feature, version, latest):
            return latest
        found = self.blobs.read(f"{feature}/{version}/{META}")
        if found is None or version not in self.versions(feature):
            raise StoreError(f"feature {feature!r} has no version {version!r}; versions: {self.versions(feature)}")
        return json.loads(found[0])

    def versions(self, feature: str) -> list[str]:
        """Committed versions, oldest first (follows parent links from the newest, skipping abandoned writes)."""
        latest = self.latest(feature)
        out = []
        version = latest and latest["version"]
        while version:
            out.append(version)
            found = self.blobs.read(f"{feature}/{version}/{META}") if version != latest["version"] else (json.dumps(latest).encode(), "")
            version = json.loads(found[0]).get("parent_version") if found else None
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
        manifest = self.manifest(feature, version)
        files = self._files(feature, manifest, partitions)
        if not files:
            return pl.DataFrame(schema=_polars_schema(manifest)).lazy()
        return self._scan_files(files)

    def _scan_files(self, files: list[str]) -> pl.LazyFrame:
        return pl.scan_parquet(files, **self.scan_options())

    def scan_options(self) -> dict:
        return {}

    def read(self, feature: str, version: str | None = None, partitions: list[str] | None = None, columns: list[str] | None = None) -> pl.DataFrame:
        frame = self.scan(feature, version, partitions)
        return (frame.select(columns) if columns else frame).collect()

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
            current, token = (json.loads(found[0]), found[1]) if found else (None, None)
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
                if rel not in written and not self.blobs.exists(f"{feature}/{rel}"):
                    self.blobs.put(f"{feature}/{rel}", _parquet_bytes(frame))
                written[rel] = partition
                if partition in base_partitions:
                    replaced[partition] = base_partitions[partition]["file"]
                base_partitions[partition] = {"file": rel, "rows": frame.height, "content_hash": digest, "written_at": now,
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
            elif json.loads(found[0]).get("revision", 0) >= revision or self.blobs.swap(path, blob, found[1]):
                return
        raise StoreError(f"feature {feature!r}: could not save the manifest of version {version} (heavy contention?)")

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


def wants_older(feature: str, version: str | None, latest: dict) -> bool:
    """True when `version` names a version other than the newest; a StoreError when it is not MAJOR.MINOR.PATCH."""
    if version is None or version in ("latest", "_latest", latest["version"]):
        return False
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise StoreError(f"version {version!r} of feature {feature!r} is not MAJOR.MINOR.PATCH, e.g. '1.0.0'")
    return True


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
