"""Sources: where a feature's raw events come from."""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import xxhash

from feature_pipelines.errors import DataError, DefinitionError
from feature_pipelines.spec.names import check_identifier

FORMATS = ("parquet", "csv", "delta")


@dataclass(frozen=True)
class Source:
    """Event data at `path` (a file, a glob, or a Delta table directory) with event time in `timestamp`.

    Scanned lazily so that a partition's time filter is pushed down into the reader.
    """

    path: str
    timestamp: str = "timestamp"
    format: str | None = None  # inferred from the path's suffix when not given
    base: str | None = None  # folder a relative `path` is resolved against (relative: under the project root); not part of the identity
    name: str | None = None  # the source's asset name in Dagster (default: the file or folder name, e.g. `transactions`)

    def __post_init__(self) -> None:
        fmt = self.format or _infer_format(self.location)
        if fmt not in FORMATS:
            raise DefinitionError(f"source {self.path!r}: format {fmt!r} is not supported; expected one of {FORMATS}")
        object.__setattr__(self, "format", fmt)
        if not isinstance(self.timestamp, str) or not self.timestamp:
            raise DefinitionError(f"source {self.path!r}: timestamp must name a column")

    @property
    def asset_name(self) -> str:
        """The source's name as a Dagster asset: `name`, else the path's file or folder name without its suffix."""
        if self.name:
            return check_identifier(self.name, "source name")
        stem = self.path.rstrip("/").rsplit("/", 1)[-1].split("*")[0].split(".")[0]
        return re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_") or "source"

    @property
    def location(self) -> str:
        """The path to read: `path`, under `base` when relative, under the project root when still relative.

        `${VAR}` / `${VAR:-default}` in `path` and `base` come from the environment when the source is read,
        so `base="${DATA_DIR:-data}"` lets each machine say where the files are.
        """
        from feature_pipelines.project import expand, project_root

        path = expand(self.path, f"source {self.path!r}")
        if "://" in path or Path(path).is_absolute():
            return path
        if self.base is not None:
            base = expand(self.base, f"source {self.path!r} base")
            path = f"{base.rstrip('/')}/{path}" if "://" in base else str(Path(base) / path)
            if "://" in path or Path(path).is_absolute():
                return path
        return str(project_root() / path)

    def fingerprint(self) -> str | None:
        """A digest of the source's current content (local files and Delta tables), None when unknown.

        Builds record it per partition so `feature-pipelines build` can skip a range that is already
        materialized from the same data with the same definition. Content, not mtimes: rewriting a
        file with identical bytes keeps the fingerprint.
        """
        where = self.location
        if where.startswith("gs://"):
            from feature_pipelines.gcs_sources import fingerprint  # noqa: PLC0415

            return fingerprint(where)
        if "://" in where:
            return None
        root = Path(where)
        if self.format == "delta":
            logs = sorted((root / "_delta_log").glob("*.json"))
            return xxhash.xxh3_128_hexdigest(f"delta:{logs[-1].name}".encode()) if logs else None
        files = sorted(Path(p) for p in glob.glob(where, recursive=True)) if any(ch in where for ch in "*?[") else [root]
        digest = xxhash.xxh3_128()
        for file in files:
            if not file.is_file():
                return None
            digest.update(f"{file.name}:{file.stat().st_size}:{_file_digest(file)}".encode())
        return digest.hexdigest()

    def scan(self) -> pl.LazyFrame:
        """A lazy scan of the source; a missing path is a DataError naming it."""
        where = self.location
        if "://" not in where and not any(ch in where for ch in "*?[") and not Path(where).exists():
            raise DataError(
                f"source {where!r} does not exist (resolved to {Path(where).resolve()}); "
                "generate the example data with `feature-pipelines generate` or fix the path"
            )
        if where.startswith("gs://"):
            if self.format == "delta":
                raise DataError(f"source {where!r}: Delta tables on gs:// are not supported; use parquet or csv objects")
            from feature_pipelines.gcs_sources import local_copy  # noqa: PLC0415

            where = local_copy(where)
        if self.format == "parquet":
            return pl.scan_parquet(where)
        if self.format == "csv":
            return pl.scan_csv(where, try_parse_dates=True)
        return pl.scan_delta(where)


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(file: Path) -> str:
    """xxh3 of a file's bytes, remembered for this process while its size and mtime stay the same.

    `feature-pipelines build` checks a source before launching the run and the asset fingerprints it
    again inside that (in-process) run: the second call must not read a large file again.
    """
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = xxhash.xxh3_128()
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def _infer_format(path: str) -> str:
    lowered = path.lower().rstrip("/")
    if lowered.endswith((".csv", ".csv.gz")):
        return "csv"
    if lowered.endswith(".parquet") or lowered.endswith("*.parquet"):
        return "parquet"
    if "://" not in path and (Path(path) / "_delta_log").is_dir():
        return "delta"
    return "parquet"
