"""Offline stores: versioned partition files behind one implementation, over pluggable blob backends.

`LocalStore` (a folder), `S3Store` (boto3; `[aws]` extra) and `GCSStore` (google-cloud-storage; `[gcp]`
extra) are all `VersionedStore` over a different `Blobs`; the cloud SDKs are imported only when a cloud
store is built, so the core installs and imports without them. `UnityCatalogStore` (`[databricks]`
extra) keeps the same interface and versioning rules on Delta tables registered in Unity Catalog.
"""

from feature_pipelines.store.blobs import BlobInfo, Blobs, LocalBlobs
from feature_pipelines.store.cleanup import Leftover
from feature_pipelines.store.gcs import GCSBlobs, GCSStore
from feature_pipelines.store.s3 import S3Blobs, S3Store
from feature_pipelines.store.unity import UnityCatalogStore
from feature_pipelines.store.versioned import CommitResult, FileCheck, VersionedStore


class LocalStore(VersionedStore):
    """The versioned offline store on local disk, rooted at `path` (default ./feature_store)."""

    def __init__(self, path: str = "./feature_store") -> None:
        super().__init__(LocalBlobs(path))
        self.path = str(self.blobs.root)


__all__ = ["BlobInfo", "Blobs", "CommitResult", "FileCheck", "GCSBlobs", "GCSStore", "Leftover", "LocalBlobs", "LocalStore",
           "S3Blobs", "S3Store", "UnityCatalogStore", "VersionedStore"]
