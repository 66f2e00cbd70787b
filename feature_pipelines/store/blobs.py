"""The three storage primitives the versioned store needs, and their local-disk implementation.

* `put`    — write an immutable object (data files); readers see all of it or nothing.
* `create` — write an object only if it does not exist yet.
* `swap`   — replace an object only if it still has the content the caller read (compare-and-swap).

Object stores give these natively (S3 `If-None-Match`/`If-Match`, GCS `ifGenerationMatch`); on local
disk they are a temp file plus `os.replace`/`os.link`, with `flock` serialising the compare step.
Local files get the permissions of any new file, 0o666 minus the process umask (0o644 under the usual
0o022), so a store shared by a team is readable by it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from typing import Protocol

import xxhash


class Blobs(Protocol):
    def read(self, path: str) -> tuple[bytes, str] | None: ...
    def put(self, path: str, data: bytes) -> None: ...
    def create(self, path: str, data: bytes) -> bool: ...
    def swap(self, path: str, data: bytes, token: str) -> bool: ...
    def exists(self, path: str) -> bool: ...
    def list_dirs(self, path: str) -> list[str]: ...
    def uri(self, path: str) -> str: ...


def _token(data: bytes) -> str:
    return xxhash.xxh64_hexdigest(data)


class LocalBlobs:
    """Blobs under a directory on local disk (or any POSIX filesystem with atomic rename)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).resolve()

    def _path(self, path: str) -> Path:
        full = (self.root / path).resolve()
        if self.root not in full.parents and full != self.root:
            raise ValueError(f"path {path!r} escapes the store root {self.root}")
        return full

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

    def put(self, path: str, data: bytes) -> None:
        target = self._path(path)
        os.replace(self._temp(target, data), target)

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

    def uri(self, path: str) -> str:
        return str(self._path(path))
