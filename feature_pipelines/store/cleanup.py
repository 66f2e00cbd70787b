"""Leftovers of writers that died or lost a race, and their safe removal (`feature-pipelines gc`).

A writer puts its data files, then commits `_latest.json`; until the commit nothing refers to them. So a
writer killed before its commit leaves data files no version references (and, on local disk, a hidden
temp file if it died inside a write), and a writer that loses the commit race and re-decides into
another version leaves the files of its first attempt. Readers never see them; they only take space.

What `collect_garbage` removes, under each feature folder (`<root>/<feature>/`):

* temp files — `.<name>.<24 hex>.tmp`, the names `LocalBlobs` writes through (object stores have none);
* unreferenced data files — `<MAJOR.MINOR.PATCH>/<partition>-<16 hex>.parquet` that no manifest names:
  not `_latest.json`, not the `.meta.json` of any version on its parent chain, not any other `.meta.json`
  found in the folder;

and only those last written more than `older_than` ago (default one hour: far longer than a write takes,
so a writer still running is never hit). Nothing else is ever removed: not metadata, not lock files, not
files of other names. A feature whose metadata cannot be read completely (a corrupt manifest, a
`.meta.json` missing from the chain, version manifests without `_latest.json`) is refused, with nothing
removed anywhere: gc cannot know which of its files are in use.

Races. Everything is listed first, then the manifests are read, then files are removed; a commit made in
between can only reference a file that is not listed as old: new data files are fresh, and a writer that
finds a file of its name already there (left by an earlier, killed attempt) writes it again, making it
fresh. The removal itself is conditional on the object still being the one listed (`Blobs.delete`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from feature_pipelines.errors import StoreError
from feature_pipelines.spec.names import check_identifier
from feature_pipelines.store.blobs import BlobInfo

TEMP_FILE = re.compile(r"^\..+\.[0-9a-f]{24}\.tmp$")
DATA_FILE = re.compile(r"^\d+\.\d+\.\d+/[^/]+-[0-9a-f]{16}\.parquet$")  # relative to the feature folder
_FEATURE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Leftover:
    """A file `collect_garbage` removed (or would remove)."""

    path: str  # relative to the store root
    uri: str
    reason: str  # "temporary file" | "unreferenced data file"
    modified: datetime
    size: int


def collect_garbage(store, features: list[str] | None = None, *, older_than: timedelta = timedelta(hours=1),
                    dry_run: bool = False, now: datetime | None = None) -> list[Leftover]:
    """Remove (unless `dry_run`) the leftovers of `features` (default: every feature folder) older than `older_than`.

    Every feature is planned before anything is removed: a feature that cannot be planned raises a StoreError
    and nothing is removed at all.
    """
    if older_than < timedelta(0):
        raise StoreError(f"gc: the grace period must not be negative, got {older_than}")
    blobs = store.blobs
    names = [check_identifier(f, "feature name") for f in features] if features else [
        n for n in blobs.list_dirs("") if _FEATURE.match(n)]
    cutoff = (now or datetime.now(timezone.utc)) - older_than
    plans = {name: _plan(store, name, cutoff) for name in names}
    removed = []
    for leftovers in plans.values():
        for leftover, info in leftovers:
            if dry_run or blobs.delete(info):
                removed.append(leftover)
    return removed


def _plan(store, feature: str, cutoff: datetime) -> list[tuple[Leftover, BlobInfo]]:
    """The leftovers of one feature, oldest listing first; a StoreError when its metadata cannot be read completely."""
    listing = store.blobs.list_files(feature)  # listed BEFORE the manifests are read (see the module docstring)
    referenced = _referenced(store, feature, listing)
    out = []
    for info in listing:
        inside = info.path[len(feature) + 1:]
        name = inside.rsplit("/", 1)[-1]
        if TEMP_FILE.match(name):
            reason = "temporary file"
        elif DATA_FILE.match(inside) and inside not in referenced:
            reason = "unreferenced data file"
        else:
            continue
        if info.modified <= cutoff:
            out.append((Leftover(info.path, store.blobs.uri(info.path), reason, info.modified, info.size), info))
    return out


def _referenced(store, feature: str, listing: list[BlobInfo]) -> set[str]:
    """Data files (relative to the feature folder) named by any manifest of `feature`: the chain from `_latest.json`
    and every `.meta.json` present. StoreError (saying nothing was removed) when one cannot be read."""
    def refuse(problem: str) -> StoreError:
        return StoreError(f"{problem}; nothing was removed (gc needs every manifest of {feature!r} to know which files "
                          f"are in use: repair the metadata, or leave this feature out with --features)")

    metas = sorted(i.path for i in listing if re.fullmatch(rf"{re.escape(feature)}/\d+\.\d+\.\d+/\.meta\.json", i.path))
    try:
        latest = store.latest(feature)
        manifests = [] if latest is None else store.chain(feature)
        for path in metas:
            found = store._read_manifest(feature, path.split("/")[1])
            if found is not None:
                manifests.append(found[0])
    except StoreError as err:
        raise refuse(str(err)) from None
    if latest is None and metas:
        raise refuse(f"feature {feature!r}: {store.blobs.uri(f'{feature}/_latest.json')} is missing but versions have "
                     f"manifests ({', '.join(m.split('/')[1] for m in metas[:3])}); restore it from git / version control")
    return {entry["file"] for manifest in manifests for entry in manifest["partitions"].values()}


__all__ = ["DATA_FILE", "TEMP_FILE", "Leftover", "collect_garbage"]
