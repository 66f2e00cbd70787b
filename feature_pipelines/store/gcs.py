"""The versioned offline store on Google Cloud Storage, through google-cloud-storage (the JSON API).

`GCSBlobs` gives `VersionedStore` its primitives; layout, versioning, manifests and the commit loop
are the one shared implementation in `versioned.py`:

* `read`   — one media download; the token is the generation of THAT content (the download's
  `x-goog-generation` header), never a second metadata lookup that could describe a newer object.
* `put`    — upload (data files: immutable and content-addressed, so a retried upload is harmless).
* `create` — upload with `ifGenerationMatch=0`: succeeds only if the object does not exist.
* `swap`   — upload with `ifGenerationMatch=<generation read>`: compare-and-swap.

For `feature-pipelines gc`: `list_files` lists objects with their `updated` time and generation; `delete`
is conditional on that generation (`ifGenerationMatch`), so an object written again since is kept.

`412 Precondition Failed` means "lost the race": `create`/`swap` return False and the store re-reads
and retries. An upload is atomic on GCS, so a failed or interrupted commit leaves the previous
`_latest.json` whole.

Reading partition files (`GCSStore._scan_files`, under `scan`): the files of a version are downloaded through the same
JSON API client, in parallel threads, and concatenated into one frame (returned lazily). Why not
`pl.scan_parquet("gs://...")`? polars reads gs:// through object_store, which speaks GCS's XML API
with credentials of its own: fake-gcs-server (the emulator the tests run against) does not implement
that API, and object_store's GCS client has no endpoint override to point it at one. Going through the
client that also does the writes means one credential chain, one endpoint setting, and a read path
that the tests exercise exactly as production runs it. The cost: whole partition files are fetched
(no ranged column reads) before column selection and filters apply; partition files are one
partition of one feature each, so this stays small — revisit if features grow very wide.

Credentials: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth
application-default login`, the metadata server on GCP), or the `client` you pass. An `endpoint`
over plain `http://` is an emulator: the client is anonymous there, so no bearer token is ever sent
in clear text. Credentials never appear in `description`, manifests, metadata or error messages.

google-cloud-storage is an optional dependency (`pip install 'feature_pipelines[gcp]'`); Dagster is
not needed, though `GCSStore.from_resource` accepts a `dagster_gcp.GCSResource`.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import polars as pl

from feature_pipelines.errors import StoreError
from feature_pipelines.store.blobs import BlobInfo
from feature_pipelines.store.versioned import VersionedStore

# Operation -> the IAM permission it needs (overwriting an object also needs storage.objects.delete).
_PERMISSION = {
    "read": "storage.objects.get",
    "exists": "storage.objects.get",
    "list": "storage.objects.list",
    "put": "storage.objects.create and storage.objects.delete",
    "create": "storage.objects.create",
    "swap": "storage.objects.create and storage.objects.delete",
    "delete": "storage.objects.delete",
}
_DOWNLOAD_THREADS = 8


def _gcs():
    try:
        from google.api_core import exceptions  # noqa: PLC0415 - optional dependency
        from google.cloud import storage  # noqa: PLC0415
    except ImportError:
        raise StoreError("the GCS offline store needs google-cloud-storage: pip install 'feature_pipelines[gcp]'") from None
    return storage, exceptions


def _clean_prefix(prefix: str | None) -> str:
    return "/".join(part for part in (prefix or "").split("/") if part)


def make_client(project: str | None = None, endpoint: str | None = None) -> Any:
    """A `google.cloud.storage.Client`: anonymous for a plain-http emulator endpoint, else ADC."""
    storage, _ = _gcs()
    options = {"api_endpoint": endpoint} if endpoint else None
    if endpoint and endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials  # noqa: PLC0415

        return storage.Client(project=project or "emulator", credentials=AnonymousCredentials(), client_options=options)
    try:
        return storage.Client(project=project, client_options=options)
    except Exception as err:  # noqa: BLE001 - DefaultCredentialsError and friends
        raise StoreError(
            f"no usable Google Cloud credentials ({type(err).__name__}) — set GOOGLE_APPLICATION_CREDENTIALS to a "
            "service-account key file, run `gcloud auth application-default login`, or run on GCP with a service account"
        ) from None


class GCSBlobs:
    """`Blobs` in a GCS bucket under `prefix` (see the module docstring).

    `client` (a `google.cloud.storage.Client`) wins over `project`/`endpoint`; without one a client is
    made from Application Default Credentials, or anonymously for an `http://` emulator endpoint.
    """

    def __init__(self, bucket: str, prefix: str = "", project: str | None = None, endpoint: str | None = None,
                 client: Any = None) -> None:
        _, self._exc = _gcs()
        if not bucket or "/" in bucket:
            raise StoreError(f"GCS bucket name {bucket!r} is not valid: give the bare bucket name, e.g. 'my-features' (put folders in `prefix`)")
        self.bucket_name = bucket
        self.prefix = _clean_prefix(prefix)
        self.endpoint = endpoint or None
        self.client = client if client is not None else make_client(project, self.endpoint)
        self.bucket = self.client.bucket(bucket)

    # ---- keys and names ------------------------------------------------------------------

    def _key(self, path: str) -> str:
        path = path.strip("/")
        if any(part in (".", "..") for part in path.split("/")):
            raise ValueError(f"path {path!r} escapes the store root {self.uri('')}")
        return f"{self.prefix}/{path}" if self.prefix and path else (self.prefix or path)

    def uri(self, path: str) -> str:
        return f"gs://{self.bucket_name}/{self._key(path)}"

    def key_of(self, uri: str) -> str:
        """The object name of one of this store's `gs://` URIs."""
        head = f"gs://{self.bucket_name}/"
        if not uri.startswith(head):
            raise ValueError(f"{uri!r} is not in bucket {self.bucket_name!r}")
        return uri[len(head):]

    @property
    def where(self) -> str:
        root = f"gs://{self.bucket_name}/{self.prefix}".rstrip("/")
        return f"{root} (endpoint {self.endpoint})" if self.endpoint else root

    # ---- the primitives ------------------------------------------------------------------

    def read(self, path: str) -> tuple[bytes, str] | None:
        key = self._key(path)
        found = self._download(key, "read", missing_ok=True)
        return None if found is None else (found[0], str(found[1]))

    def _download(self, key: str, operation: str, *, missing_ok: bool) -> tuple[bytes, int] | None:
        blob = self.bucket.blob(key)
        try:
            data = blob.download_as_bytes()
            generation = blob.generation  # set from this very response's x-goog-generation header
            if generation is None:  # a server that does not send it: pin the generation, then fetch it
                blob.reload()
                generation = blob.generation
                data = self.bucket.blob(key, generation=generation).download_as_bytes()
            return data, int(generation)
        except self._exc.NotFound:
            if missing_ok:
                return None
            raise StoreError(f"{self.where}: object {key} is missing") from None
        except Exception as err:  # noqa: BLE001
            raise self._error(err, operation, key) from None

    def _upload(self, key: str, data: bytes, operation: str, generation: int | None) -> bool:
        from google.cloud.storage.retry import DEFAULT_RETRY  # noqa: PLC0415

        content_type = "application/json" if key.endswith(".json") else "application/octet-stream"
        try:
            # Retrying is safe for all three: data files are content-addressed, and a conditional
            # upload that already succeeded fails its retry with 412 (handled below).
            self.bucket.blob(key).upload_from_string(data, content_type=content_type, if_generation_match=generation,
                                                     retry=DEFAULT_RETRY)
            return True
        except self._exc.PreconditionFailed:
            if generation is None:
                raise StoreError(f"{self.where}: unexpected precondition failure writing {key}") from None
        except Exception as err:  # noqa: BLE001
            raise self._error(err, operation, key) from None
        # Lost the race, or won it on an attempt whose answer was lost and whose retry then found
        # our own write in place: the object holding exactly our bytes means our write is there.
        current = self._download(key, "read", missing_ok=True)
        return current is not None and current[0] == data

    def put(self, path: str, data: bytes) -> None:
        self._upload(self._key(path), data, "put", None)

    def create(self, path: str, data: bytes) -> bool:
        return self._upload(self._key(path), data, "create", 0)

    def swap(self, path: str, data: bytes, token: str) -> bool:
        return self._upload(self._key(path), data, "swap", int(token))

    def exists(self, path: str) -> bool:
        key = self._key(path)
        try:
            return self.bucket.blob(key).exists()
        except Exception as err:  # noqa: BLE001
            raise self._error(err, "exists", key) from None

    def list_dirs(self, path: str) -> list[str]:
        base = self._key(path)
        base = f"{base}/" if base else ""
        try:
            pages = self.client.list_blobs(self.bucket_name, prefix=base, delimiter="/")
            for _ in pages:  # the prefixes fill in as the pages are read
                pass
            names = {p[len(base):].rstrip("/") for p in pages.prefixes}
        except Exception as err:  # noqa: BLE001
            raise self._error(err, "list", base) from None
        return sorted(n for n in names if n and not n.startswith("."))

    def list_files(self, path: str) -> list[BlobInfo]:
        base = self._key(path)
        base = f"{base}/" if base else ""
        root = f"{self.prefix}/" if self.prefix else ""
        try:
            return sorted(BlobInfo(b.name[len(root):], b.updated, b.size or 0, str(b.generation))
                          for b in self.client.list_blobs(self.bucket_name, prefix=base))
        except Exception as err:  # noqa: BLE001
            raise self._error(err, "list", base) from None

    def delete(self, info: BlobInfo) -> bool:
        key = self._key(info.path)
        try:
            self.bucket.blob(key).delete(if_generation_match=int(info.version))
            return True
        except (self._exc.NotFound, self._exc.PreconditionFailed):  # gone, or written again since it was listed
            return False
        except Exception as err:  # noqa: BLE001
            raise self._error(err, "delete", key) from None

    def download_many(self, uris: list[str]) -> list[bytes]:
        """The bytes of several of this store's objects, fetched in parallel threads, in order."""
        keys = [self.key_of(u) for u in uris]

        def fetch(key: str) -> bytes:
            found = self._download(key, "read", missing_ok=True)
            if found is None:
                raise StoreError(
                    f"{self.where}: data file {key} is named by a committed version but missing from the bucket; "
                    "run `feature-pipelines sync` to rebuild it"
                )
            return found[0]

        if len(keys) <= 1:
            return [fetch(k) for k in keys]
        with ThreadPoolExecutor(max_workers=min(_DOWNLOAD_THREADS, len(keys)), thread_name_prefix="gcs-read") as pool:
            return list(pool.map(fetch, keys))

    # ---- errors --------------------------------------------------------------------------

    def _error(self, err: Exception, operation: str, key: str) -> StoreError:
        """One StoreError that says which bucket, which operation, and what to do about it."""
        where = self.where
        name = type(err).__name__
        code = getattr(err, "code", None)
        permission = _PERMISSION.get(operation, "storage.objects.*")
        if name == "NotFound" or code == 404:
            return StoreError(
                f"{where}: bucket {self.bucket_name!r} does not exist; create it (gcloud storage buckets create "
                f"gs://{self.bucket_name}) or fix `bucket` in the profile's offline_store"
            )
        if name == "Forbidden" or code == 403:
            return StoreError(
                f"{where}: access denied for {operation} on {key or '/'} — the credentials need {permission} on this "
                "bucket (e.g. roles/storage.objectUser)"
            )
        if name in ("Unauthorized", "RefreshError", "DefaultCredentialsError") or code == 401:
            return StoreError(
                f"{where}: the credentials were refused for {operation} ({name}) — check GOOGLE_APPLICATION_CREDENTIALS "
                "or run `gcloud auth application-default login` (`gcloud auth list` shows who you are)"
            )
        if name in ("ConnectionError", "TransportError", "ConnectTimeout", "ReadTimeout", "Timeout"):
            return StoreError(f"{where}: cannot reach GCS{f' at {self.endpoint}' if self.endpoint else ''} for {operation} ({name}); check the network and `endpoint`")
        message = getattr(err, "message", None) or str(err).splitlines()[0][:300]
        return StoreError(f"{where}: {operation} of {key or '/'} failed: {name}: {message}")


class GCSStore(VersionedStore):
    """The versioned offline store in `gs://<bucket>/<prefix>`.

    >>> store = GCSStore("my-features", prefix="feature_store", project="my-project")  # doctest: +SKIP

    Same layout, versioning and commit protocol as `LocalStore`; commits are generation-conditional
    uploads of `_latest.json`. Partition files are read through the JSON API (see the module docstring).
    """

    blobs: GCSBlobs

    def __init__(self, bucket: str, prefix: str = "", project: str | None = None, endpoint: str | None = None,
                 client: Any = None) -> None:
        blobs = GCSBlobs(bucket, prefix, project, endpoint, client)
        super().__init__(blobs, description=blobs.where)
        self.bucket, self.prefix, self.endpoint = blobs.bucket_name, blobs.prefix, blobs.endpoint

    @classmethod
    def from_resource(cls, resource: Any, bucket: str, prefix: str = "") -> GCSStore:
        """Build from a `dagster_gcp.GCSResource` (anything with `get_client()`), sharing its client."""
        return cls(bucket, prefix, client=resource.get_client())

    def _scan_files(self, files: list[str]) -> pl.LazyFrame:
        """The partition files, downloaded in parallel through the JSON API, as a LazyFrame."""
        frames = [pl.read_parquet(io.BytesIO(data)) for data in self.blobs.download_many(files)]
        return pl.concat(frames, how="vertical").lazy()

    def __repr__(self) -> str:
        return f"GCSStore({self.description!r})"
