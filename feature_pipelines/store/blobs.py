"""The three storage primitives the versioned store needs, and their local-disk implementation.

* `put`    — write an immutable object (data files); readers see all of it or nothing.
* `create` — write an object only if it does not exist yet.
* `swap`   — replace an object only if it still has the content the caller read (compare-and-swap).

And two for cleaning up after killed writers (`feature-pipelines gc`, store/cleanup.py):

* `list_files` — every object under a folder, hidden ones included, with its modification time.
* `delete`     — remove an object only if it is still the one listed (not written again since).

Object stores give these natively (S3 `If-None-Match`/`If-Match`, GCS `ifGenerationMatch`); on local
disk they are a temp file plus `os.replace`/`os.link`, with `flock` serialising the compare step.
Local files get the permissions of any new file, 0o666 minus the process umask (0o644 under the usual
0o022), so a store shared by a team is readable by it.
"""

from __future__ import annotations

import fcntl
import functools
import os
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Protocol

import xxhash

from feature_pipelines.errors import StoreError


class BlobInfo(NamedTuple):
    """One listed object: its path relative to the store root, when it was last written (UTC), its size, and
    `version`, what tells this very object from one written at the same path later (inode and mtime, generation...)."""

    path: str
    modified: datetime
    size: int
    version: str


class Blobs(Protocol):
    def read(self, path: str) -> tuple[bytes, str] | None: ...
    def put(self, path: str, data: bytes) -> None: ...
    def create(self, path: str, data: bytes) -> bool: ...
    def swap(self, path: str, data: bytes, token: str) -> bool: ...
    def exists(self, path: str) -> bool: ...
    def list_dirs(self, path: str) -> list[str]: ...
    def list_files(self, path: str) -> list[BlobInfo]: ...
    def delete(self, info: BlobInfo) -> bool: ...
    def uri(self, path: str) -> str: ...


def _token(data: bytes) -> str:
    return xxhash.xxh64_hexdigest(data)


def _os_errors(operation: str):
    """Turn an OSError of a LocalBlobs primitive (permissions, a full disk, a folder where a file should be) into one
    StoreError naming the file."""
    def wrap(method):
        @functools.wraps(method)
        def inner(self, path, *args):
            try:
                return method(self, path, *args)
            except OSError as err:
                hint = "check its permissions" if operation == "read" else "check the store folder's permissions and free space"
                raise StoreError(f"cannot {operation} {self.root / path}: {err.strerror or err}; {hint}") from None
        return inner
    return wrap


class LocalBlobs:
    """Blobs under a directory on local disk (or any POSIX filesystem with atomic rename)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()

    def _path(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if self.root not in full.parents and full != self.root:
            raise ValueError(f"path {path!r} escapes the store root {self.root}")
        return full

    @_os_errors("read")
    def read(self, path: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(path).read_bytes()
        except FileNotFoundError:
            return None
        return data, _token(data)

    def _temp(self, target: Path, data: bytes) -> str:
        """A new hidden file next to `target` holding `data`, created 0o666 & ~umask (mkstemp would make it 0o600)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):  # 96 random bits: a clash means something else writes these names
            tmp = str(target.parent / f".{target.name}.{secrets.token_hex(12)}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(f"no free temporary name next to {target} after 100 attempts")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
        return tmp

    @_os_errors("write")
    def put(self, path: str, data: bytes) -> None:
        target = self._path(path)
        os.replace(self._temp(target, data), target)

    @_os_errors("write")
    def create(self, path: str, data: bytes) -> bool:
        target = self._path(path)
        tmp = self._temp(target, data)
        try:
            os.link(tmp, target)  # atomic, and fails if the target exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    @_os_errors("write")
    def swap(self, path: str, data: bytes, token: str) -> bool:
        target = self._path(path)
        tmp = self._temp(target, data)
        try:
            with open(target.parent / f".{target.name}.lock", "a+b") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                current = self.read(path)
                if current is None or current[1] != token:
                    return False
                os.replace(tmp, target)
                tmp = None
                return True
        finally:
            if tmp is not None:
                os.unlink(tmp)

    def exists(self, path: str) -> bool:
        return self._path(path).exists()

    def list_dirs(self, path: str) -> list[str]:
        base = self._path(path) if path else self.root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list_files(self, path: str) -> list[BlobInfo]:
        base = self._path(path) if path else self.root
        out = []
        for folder, _, names in os.walk(base):
            for name in names:
                full = Path(folder) / name
                try:
                    st = full.lstat()
                except FileNotFoundError:  # removed while listing
                    continue
                out.append(BlobInfo(full.relative_to(self.root).as_posix(), datetime.fromtimestamp(st.st_mtime, timezone.utc),
                                    st.st_size, _identity(st)))
        return sorted(out)

    def delete(self, info: BlobInfo) -> bool:
        """Remove the file if it is still the one listed (same inode, same mtime); False if it is gone or was rewritten.

        The file is first renamed aside, then checked: a writer that replaced it between the listing and now
        (`put` is a rename of a new file) has made a new inode, which is then put back in place.
        """
        target = self._path(info.path)
        aside = target.parent / f".{target.name}.{secrets.token_hex(12)}.tmp"  # a temp name: a later gc takes it if we die here
        try:
            os.rename(target, aside)
        except FileNotFoundError:
            return False
        if _identity(aside.lstat()) == info.version:
            os.unlink(aside)
            return True
        try:
            os.link(aside, target)  # rewritten since listed: put it back (unless an even newer one is there)
        except FileExistsError:
            pass
        os.unlink(aside)
        return False

    def uri(self, path: str) -> str:
        return str(self._path(path))


def _identity(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}"
