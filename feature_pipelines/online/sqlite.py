"""The embedded online store: one SQLite file (stdlib sqlite3, WAL), the default so nothing runs as a server.

WAL mode lets a Dagster publish run write while a serving process reads: readers never block and
never see half a write (each `write` is one transaction). Rows hold the same binary record as the
Redis store (see `feature_pipelines.online.base`), plus the timestamp, version order and expiry as
real columns so newer-wins and TTL are plain SQL. A file written before the version order existed
gets its `ver` column added on open (old rows order as version 0.0).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from itertools import repeat
from pathlib import Path

import polars as pl

from feature_pipelines.errors import StoreError
from feature_pipelines.online.base import (
    FEATURE_TIMESTAMP,
    OnlineRead,
    RowSchema,
    SchemaSet,
    UnknownSchema,
    WriteResult,
    check_read,
    decode,
    encode_frame,
    keys_of,
    label,
    never_written,
    ttl_milliseconds,
)

_DDL = """
CREATE TABLE IF NOT EXISTS online_values (
    feature    TEXT    NOT NULL,
    major      INTEGER NOT NULL,
    entity     TEXT    NOT NULL,   -- canonical text of the key tuple (base.entity_texts)
    ts         INTEGER NOT NULL,   -- µs since epoch, UTC: newer-wins compares (ts, ver)
    ver        INTEGER NOT NULL DEFAULT 0,  -- version order within the MAJOR: MINOR << 32 | PATCH
    expires_at INTEGER,            -- µs since epoch (wall clock), NULL = never; filtered at read
    value      BLOB    NOT NULL,   -- the binary record (base module docstring)
    PRIMARY KEY (feature, major, entity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS online_schemas (
    feature    TEXT    NOT NULL,
    major      INTEGER NOT NULL,
    schema_id  INTEGER NOT NULL,   -- xxh32 of definition, also stored in every record
    definition TEXT    NOT NULL,   -- JSON: key columns and (column, dtype) pairs
    PRIMARY KEY (feature, major, schema_id)
);
"""

# A value replaces the stored one only if (timestamp, version order) is strictly greater, or if the
# stored one has expired (it is gone for readers).
_UPSERT = """
INSERT INTO online_values (feature, major, entity, ts, ver, expires_at, value) VALUES (?, ?, ?, ?, {ver}, ?, ?)
ON CONFLICT (feature, major, entity) DO UPDATE
SET ts = excluded.ts, ver = excluded.ver, expires_at = excluded.expires_at, value = excluded.value
WHERE (excluded.ts, excluded.ver) > (online_values.ts, online_values.ver)
   OR (online_values.expires_at IS NOT NULL AND online_values.expires_at <= {now})
"""
_CHUNK = 2_000  # entities per `IN (...)` query: below SQLite's variable limit (32766), few statements per batch


class SQLiteOnlineStore:
    """Online store in one SQLite file: embedded, safe for several processes and threads at once.

    `write` is newer-wins per (feature, major, entity) in one transaction; with `ttl_seconds`, a value
    not refreshed by a publish within ttl disappears (an `expires_at` column filtered at read; expired
    rows of a feature are purged by its next write with a TTL). Each thread gets its own connection
    (sqlite3 connections must not be shared across threads); a forked child opens fresh ones.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout_seconds: float = 30.0):
        self.path = Path(path)
        self.description = f"sqlite:{self.path}"
        self._timeout = timeout_seconds
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._schemas: dict[tuple[str, int], SchemaSet] = {}
        self._closed = False
        self._pid = os.getpid()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot open online store {self.description}: cannot create its folder: {e}") from None
        try:
            conn = self._conn()
            conn.executescript(_DDL)
            if "ver" not in {row[1] for row in conn.execute("PRAGMA table_info(online_values)")}:  # a file from before versions
                try:
                    conn.execute("ALTER TABLE online_values ADD COLUMN ver INTEGER NOT NULL DEFAULT 0")
                except sqlite3.OperationalError as e:  # another process added it first
                    if "duplicate column" not in str(e):
                        raise
        except sqlite3.Error as e:
            raise StoreError(f"cannot open online store {self.description}: {e}") from None

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r})"

    def __enter__(self) -> SQLiteOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections -----------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError(f"online store {self.description} is closed")
        if os.getpid() != self._pid:  # forked: the parent's connections must not be used here
            self._pid, self._local, self._connections = os.getpid(), threading.local(), []
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")  # first: the WAL switch may wait for a lock
                conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor see half a write
                # WAL + NORMAL survives application crashes; an OS crash may lose the last commit, which the next publish redoes.
                conn.execute("PRAGMA synchronous=NORMAL")
                # Reads are random point lookups: map the file (no read() syscall per page) and keep more pages cached.
                conn.execute("PRAGMA mmap_size=1073741824")
                conn.execute("PRAGMA cache_size=-65536")
            except sqlite3.Error as e:
                raise StoreError(f"cannot open online store {self.description}: {e}") from None
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this store opened (in any thread); further calls raise StoreError."""
        self._closed = True
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # -- schemas ---------------------------------------------------------------------------

    def _load_schemas(self, feature: str, major: int) -> SchemaSet:
        rows = self._conn().execute("SELECT definition FROM online_schemas WHERE feature = ? AND major = ? ORDER BY rowid",
                                    (feature, major)).fetchall()
        schemas = SchemaSet(feature, major, [RowSchema.from_json(r[0]) for r in rows])
        if rows:
            self._schemas[(feature, major)] = schemas
        return schemas

    def _stored_versions(self, feature: str) -> list[str]:
        rows = self._conn().execute("SELECT DISTINCT major FROM online_schemas WHERE feature = ? ORDER BY major", (feature,)).fetchall()
        return [f"v{r[0]}" for r in rows]

    # -- write -----------------------------------------------------------------------------

    def write(self, feature: str, major: int, keys: list[str], frame: pl.DataFrame, *,
              timestamp: str = FEATURE_TIMESTAMP, ttl_seconds: float | None = None,
              version: str | None = None) -> WriteResult:
        """Newer-wins upsert of one row per entity, in one transaction: all rows or (on any error) none.

        A row replaces the stored value only if its (timestamp, version order) is strictly greater (or
        the stored value expired): a newer timestamp, or the same one from a newer MINOR.PATCH of
        `version`; equal or older rows are skipped, so re-publishing a version writes nothing. With
        `ttl_seconds`, each written value expires ttl_seconds after this call: a value not refreshed
        by a publish within ttl disappears.
        """
        ttl_ms = ttl_milliseconds(ttl_seconds, feature, major)
        batch = encode_frame(feature, major, keys, frame, timestamp, version)
        now = time.time_ns() // 1000
        expires = now + ttl_ms * 1000 if ttl_ms is not None else None
        what = f"writing {label(feature, major)}"
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                existing = self._load_schemas(feature, major)
                existing.check_compatible(batch.schema, self.description)
                if batch.schema.id not in existing.by_id:
                    conn.execute("INSERT OR IGNORE INTO online_schemas (feature, major, schema_id, definition) VALUES (?, ?, ?, ?)",
                                 (feature, major, batch.schema.id, batch.schema.json))
                if ttl_ms is not None:
                    conn.execute("DELETE FROM online_values WHERE feature = ? AND major = ? AND expires_at <= ?", (feature, major, now))
                before = conn.total_changes
                conn.executemany(_UPSERT.format(now=int(now), ver=int(batch.order)),
                                 zip(repeat(feature), repeat(major), batch.entities(), batch.timestamps.tolist(), repeat(expires), batch.values))
                written = conn.total_changes - before
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise StoreError(f"online store {self.description} failed while {what}: {e}; nothing was written") from e
        self._schemas.pop((feature, major), None)
        return WriteResult(written=written, skipped=frame.height - written)

    # -- read ------------------------------------------------------------------------------

    def read(self, reads: list[OnlineRead]) -> list[pl.DataFrame]:
        """Per OnlineRead, one row per requested entity in request order (nulls where unknown, null key or expired).

        Each read is one consistent snapshot (a read transaction), so a concurrent publish is seen
        entirely or not at all. Raises StoreError for a feature/major never written (its dtypes are
        unknown) and for columns it never stored, naming the stored ones.
        """
        for r in reads:
            check_read(r)
        conn = self._conn()
        out = []
        try:
            conn.execute("BEGIN")
            try:
                for r in reads:
                    out.append(self._read_one(conn, r))
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise StoreError(f"online store {self.description} failed while reading: {e}") from e
        return out

    def _read_one(self, conn: sqlite3.Connection, r: OnlineRead) -> pl.DataFrame:
        schemas = self._schemas.get((r.feature, r.major))
        if schemas is None or any(c not in schemas.dtypes and c != FEATURE_TIMESTAMP for c in r.columns):
            schemas = self._load_schemas(r.feature, r.major)
        if not schemas.by_id:
            raise never_written(r.feature, r.major, self.description, self._stored_versions(r.feature))
        schemas.check_columns(r.columns, self.description)
        texts = keys_of(r, schemas, self.description)
        wanted = sorted({t for t in texts if t is not None})  # sorted: index pages are visited in order
        now = time.time_ns() // 1000
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), _CHUNK):
            part = wanted[start:start + _CHUNK]
            sql = (f"SELECT entity, value FROM online_values WHERE feature = ? AND major = ? AND entity IN "
                   f"({','.join('?' * len(part))}) AND (expires_at IS NULL OR expires_at > ?)")
            found.update(conn.execute(sql, (r.feature, r.major, *part, now)).fetchall())
        values = [found.get(t) if t is not None else None for t in texts]
        try:
            return decode(values, schemas, r.columns, r.prefix)
        except UnknownSchema:  # written by a newer schema since we cached: reload once
            schemas = self._load_schemas(r.feature, r.major)
            try:
                return decode(values, schemas, r.columns, r.prefix)
            except UnknownSchema as e:
                raise StoreError(f"{label(r.feature, r.major)} in {self.description} holds records of schema id {e.args[0]} "
                                 f"that online_schemas does not list; the store file is damaged") from None

