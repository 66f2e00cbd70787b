"""gs:// sources: objects fetched through the GCS JSON API into a local, content-addressed cache.

polars reads gs:// through object_store's XML API, which has no endpoint override and which GCS
emulators do not implement; the JSON API (google-cloud-storage) works everywhere, with Application
Default Credentials (or STORAGE_EMULATOR_HOST). Each object is cached as
`<cache>/gcs/<bucket>/<name>@<generation>`: a generation never changes content, so a cached copy
is never stale and a source is re-downloaded only when it changed. The cache lives in
$FEATURE_PIPELINES_CACHE_DIR (default ~/.cache/feature_pipelines).
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from pathlib import Path

import xxhash

from feature_pipelines.errors import DataError


def _client():
    try:
        from google.cloud import storage  # noqa: PLC0415 - the [gcp] extra
    except ImportError as err:
        raise DataError("gs:// sources need the [gcp] extra: pip install 'feature_pipelines[gcp]'") from err
    return storage.Client()


def _split(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.removeprefix("gs://").partition("/")
    if not bucket or not name:
        raise DataError(f"source {uri!r} is not gs://<bucket>/<object or pattern>")
    return bucket, name


def _objects(uri: str) -> list:
    """The blobs a gs:// URI names: one object, or every object matching a glob pattern."""
    bucket, name = _split(uri)
    client = _client()
    try:
        if any(ch in name for ch in "*?["):
            prefix = name[: min(name.find(ch) for ch in "*?[" if ch in name)]
            found = [b for b in client.list_blobs(bucket, prefix=prefix) if fnmatch.fnmatchcase(b.name, name)]
        else:
            blob = client.bucket(bucket).get_blob(name)
            found = [blob] if blob is not None else []
    except Exception as err:  # noqa: BLE001 - google.api_core errors: forbidden, not found, auth
        raise DataError(f"source {uri!r} could not be listed: {type(err).__name__}: {str(err)[:300]}") from None
    if not found:
        raise DataError(f"source {uri!r} matches no object in bucket {bucket!r}")
    return sorted(found, key=lambda b: b.name)


def fingerprint(uri: str) -> str:
    """A digest of the names and generations of the objects a gs:// source names."""
    return xxhash.xxh3_128_hexdigest("\n".join(f"{b.name}@{b.generation}" for b in _objects(uri)).encode())


def local_copy(uri: str) -> str:
    """A local path (file, or glob over cached files) holding the current content of a gs:// source."""
    cache = Path(os.environ.get("FEATURE_PIPELINES_CACHE_DIR") or Path.home() / ".cache" / "feature_pipelines") / "gcs"
    bucket, name = _split(uri)
    blobs = _objects(uri)
    folder = cache / bucket / xxhash.xxh64_hexdigest("\n".join(f"{b.name}@{b.generation}" for b in blobs).encode())
    paths = []
    for blob in blobs:
        target = folder / f"{len(paths):05d}-{Path(blob.name).name}"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
            os.close(fd)
            try:
                blob.download_to_filename(tmp, if_generation_match=blob.generation)
                os.replace(tmp, target)  # whole or not at all
            except Exception as err:  # noqa: BLE001
                Path(tmp).unlink(missing_ok=True)
                raise DataError(f"source {uri!r}: downloading gs://{bucket}/{blob.name} failed: {type(err).__name__}: {str(err)[:300]}") from None
        paths.append(target)
    return str(paths[0]) if len(paths) == 1 and not any(ch in name for ch in "*?[") else str(folder / "*")
