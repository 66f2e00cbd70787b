"""Offline stores: versioned partition files behind one implementation, over pluggable blob backends."""

from feature_pipelines.store.blobs import Blobs, LocalBlobs
from feature_pipelines.store.versioned import CommitResult, VersionedStore


class LocalStore(VersionedStore):
    """The versioned offline store on local disk, rooted at `path` (default ./feature_store)."""

    def __init__(self, path: str = "./feature_store") -> None:
        super().__init__(LocalBlobs(path))
        self.path = str(self.blobs.root)


__all__ = ["Blobs", "CommitResult", "LocalBlobs", "LocalStore", "VersionedStore"]
