"""The PostgreSQL online store: psycopg 3 over a bounded connection pool, plain SQL (so also Databricks Lakebase).

Two tables per store, created by the first write (`table` names them, default `fp_online`)::

    {table}           feature text, major int, entity text    PRIMARY KEY (feature, major, entity)
                      ts bigint      µs since epoch, UTC        } newer-wins compares (ts, ver)
                      ver bigint     MINOR << 32 | PATCH        }
                      expires_at bigint  µs, wall clock; NULL = never (reads filter it; TTL writes purge it)
                      value bytea    the binary record of feature_pipelines.online.base
    {table}_schemas   feature, major, schema_id, definition (JSON), seq   every schema written per (feature, major)

One table per store rather than per feature: no DDL when a feature or MAJOR appears, one primary-key
index serves every batch read (`entity = ANY(...)`), and the entity text and record bytes are the
same as the SQLite and Redis stores', decoded by the same `decode`. A write is one transaction
(all rows or none): an advisory lock per (feature, major) serialises writers of one feature, and
each batch of rows is one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE ... WHERE
(excluded.ts, excluded.ver) > (stored.ts, stored.ver)` statement.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time

import polars as pl
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

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
from feature_pipelines.online.settings import as_int, as_seconds, redact_url, scrub

_DDL = """
CREATE TABLE IF NOT EXISTS {values} (
    feature    text    NOT NULL,
    major      integer NOT NULL,
    entity     text    NOT NULL,
    ts         bigint  NOT NULL,
    ver        bigint  NOT NULL,
    expires_at bigint,
    value      bytea   NOT NULL,
    PRIMARY KEY (feature, major, entity)
);
CREATE TABLE IF NOT EXISTS {schemas} (
    feature    text    NOT NULL,
    major      integer NOT NULL,
    schema_id  bigint  NOT NULL,
    definition text    NOT NULL,
    seq        bigint  GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (feature, major, schema_id)
);
"""
_UPSERT = """
INSERT INTO {values} AS cur (feature, major, entity, ts, ver, expires_at, value)
SELECT %(feature)s::text, %(major)s::integer, u.entity, u.ts, %(ver)s::bigint, %(expires)s::bigint, u.value
FROM unnest(%(entities)b::text[], %(ts)b::bigint[], %(records)b::bytea[]) AS u(entity, ts, value)
ON CONFLICT (feature, major, entity) DO UPDATE
SET ts = excluded.ts, ver = excluded.ver, expires_at = excluded.expires_at, value = excluded.value
WHERE (excluded.ts, excluded.ver) > (cur.ts, cur.ver) OR cur.expires_at <= %(now)s::bigint
"""
_READ = ("SELECT entity, value FROM {values} WHERE feature = %s AND major = %s AND entity = ANY(%b::text[]) "
         "AND (expires_at IS NULL OR expires_at > %s)")
_SCHEMAS = ("SELECT s.feature, s.major, s.definition FROM {schemas} s JOIN unnest(%s::text[], %s::integer[]) AS q(feature, major) "
            "USING (feature, major) ORDER BY s.seq")
_INSERT_SCHEMA = "INSERT INTO {schemas} (feature, major, schema_id, definition) VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
_PURGE = "DELETE FROM {values} WHERE feature = %s AND major = %s AND expires_at <= %s"
_VERSIONS = "SELECT DISTINCT major FROM {schemas} WHERE feature = %s ORDER BY major"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,54}$")  # leaves room for the _schemas suffix within 63 bytes
_WRITE_CHUNK = 20_000  # rows per INSERT statement: bounds the statement's memory on both sides


class PostgresOnlineStore:
    """Online store in PostgreSQL tables, through a pool of at most `max_connections` connections.

    `conninfo` is a libpq URL (`postgresql://user@host:5432/db?sslmode=require`; a SQLAlchemy-style
    `postgresql+psycopg://` works too) or a `key=value` string; libpq's PG* variables fill what it
    omits. `password` may be given apart from it. The password never appears in repr(),
    `description` or errors. The pool opens connections on demand (none at construction) and a new
    one in a forked child; `pool_timeout` bounds the wait for a free connection, after which an
    unreachable server is a StoreError saying why. `statement_timeout` (seconds, None = the server's)
    bounds each statement. Tables live in `schema` (None = the search_path's first).
    """

    def __init__(self, conninfo: str = "", *, password: str | None = None, table: str = "fp_online",
                 schema: str | None = None, max_connections: int = 10, pool_timeout: float = 5.0,
                 connect_timeout: float = 5.0, statement_timeout: float | None = 30.0):
        for name, value in (("table", table), ("schema", schema)):
            if value is not None and (not isinstance(value, str) or not _IDENT.match(value)):
                raise StoreError(f"PostgreSQL online store setting {name} must be a plain identifier (letters, digits, _; "
                                 f"at most 55 characters, not starting with a digit), got {value!r}")
        self._max = as_int(max_connections, "max_connections", "PostgreSQL")
        if self._max < 1:
            raise StoreError(f"PostgreSQL online store setting max_connections must be at least 1, got {max_connections!r}")
        self._pool_timeout = as_seconds(pool_timeout, "pool_timeout", "PostgreSQL")
        connect = as_seconds(connect_timeout, "connect_timeout", "PostgreSQL")
        self._statement_ms = None if statement_timeout is None else round(as_seconds(statement_timeout, "statement_timeout", "PostgreSQL") * 1000)
        params = _parse(conninfo, password)
        self._secret = params.get("password") or os.environ.get("PGPASSWORD") or None  # only to scrub it from messages
        params.setdefault("connect_timeout", str(max(2, math.ceil(connect))))  # libpq: whole seconds, at least 2
        self._params = {**params, "autocommit": True}
        user = params.get("user") or os.environ.get("PGUSER")
        host = params.get("host") or os.environ.get("PGHOST") or "localhost"
        port = params.get("port") or os.environ.get("PGPORT") or "5432"
        dbname = params.get("dbname") or os.environ.get("PGDATABASE") or user or ""
        self.table = f"{schema}.{table}" if schema else table
        self._where = f"postgresql://{user + '@' if user else ''}{host}:{port}/{dbname}"
        self.description = f"{self._where} (table {self.table})"
        prefix = (schema,) if schema else ()
        quoted = f'"{schema}".' if schema else ""  # identifiers are [A-Za-z0-9_]: safe to quote by hand
        self._regclass = (f'{quoted}"{table}"', f'{quoted}"{table}_schemas"')
        self._sql = {name: sql.SQL(text).format(values=sql.Identifier(*prefix, table), schemas=sql.Identifier(*prefix, f"{table}_schemas"))
                     for name, text in (("ddl", _DDL), ("upsert", _UPSERT), ("read", _READ), ("schemas", _SCHEMAS),
                                        ("insert_schema", _INSERT_SCHEMA), ("purge", _PURGE), ("versions", _VERSIONS))}
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pid = os.getpid()
        self._forked: list[ConnectionPool] = []  # a parent's pools seen after a fork: kept, never closed (their sockets are the parent's)
        self._closed = False
        self._busy = 0  # connections this process has out of the pool right now
        self._ready = False  # tables known to exist (this process created or saw them)
        self._schemas: dict[tuple[str, int], SchemaSet] = {}

    def __repr__(self) -> str:
        return f"PostgresOnlineStore({self.description!r})"

    __str__ = __repr__

    def __enter__(self) -> PostgresOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool and its connections; further calls raise StoreError."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close(timeout=5)

    # -- connections and errors ------------------------------------------------------------

    def _get_pool(self) -> ConnectionPool:
        with self._lock:
            if self._closed:
                raise StoreError(f"online store {self.description} is closed")
            if self._pool is not None and self._pid != os.getpid():  # forked: the parent's connections must not be used here
                self._forked.append(self._pool)
                self._pool, self._ready = None, False
            if self._pool is None:
                self._pool = ConnectionPool("", kwargs=self._params, min_size=0, max_size=self._max, open=False,
                                            timeout=self._pool_timeout, configure=self._configure, name=f"fp-online {self._where}")
                self._pool.open(wait=False)
                self._pid = os.getpid()
            return self._pool

    def _configure(self, conn: psycopg.Connection) -> None:
        if self._statement_ms is not None:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (str(self._statement_ms),))

    def _run(self, what: str, work):
        """`work(conn)` on a pooled connection; once more if the first turned out broken (server restarted) or the pool was stale."""
        for attempt in (1, 2):
            pool = self._get_pool()
            used = None
            try:
                with pool.connection() as conn:
                    used = conn
                    with self._lock:
                        self._busy += 1
                    try:
                        return work(conn)
                    finally:
                        with self._lock:
                            self._busy -= 1
            except PoolTimeout:
                error = self._no_connection(pool, what)
                if error is not None or attempt == 2:
                    raise (error or self._all_busy(what)) from None
            except psycopg.Error as e:
                if attempt == 2 or used is None or not used.broken:
                    raise self._error(e, what) from None
        raise AssertionError("not reached")

    def _no_connection(self, pool: ConnectionPool, what: str) -> StoreError | None:
        """After a pool timeout: the error to raise, or None when the pool was replaced and the call may be retried.

        Connects once directly to learn why. If the server is down (or refuses the credentials), that
        is the error, and the pool is replaced: psycopg_pool retries failed connections with a
        growing backoff (up to minutes), which must not outlive the outage. If the server answers
        while fewer than max_connections are in use, the pool was stuck in that backoff: replaced, retry.
        """
        busy = self._busy >= self._max
        try:
            psycopg.connect(**self._params).close()
        except psycopg.Error as e:
            self._replace(pool)
            return self._error(e, what)
        if busy:
            return self._all_busy(what)
        self._replace(pool)
        return None

    def _all_busy(self, what: str) -> StoreError:
        return StoreError(f"online store {self.description} had no free connection within {self._pool_timeout:g} s while {what} "
                          f"(all {self._max} of max_connections busy)")

    def _replace(self, pool: ConnectionPool) -> None:
        with self._lock:
            if self._pool is not pool:
                return
            self._pool = None
        pool.close(timeout=1)  # connections still out (other threads) are closed when they come back

    def _reason(self, e: BaseException) -> str:
        return scrub(" ".join(str(e).split()) or type(e).__name__, self._secret)

    def _error(self, e: psycopg.Error, what: str) -> StoreError:
        """A StoreError a person can act on: which server, what failed, while doing what; never the password."""
        reason, state = self._reason(e), getattr(e, "sqlstate", None) or ""
        if state.startswith("28") or "password authentication failed" in reason or "no password supplied" in reason:
            return StoreError(f"online store {self._where} rejected the credentials while {what}: {reason} "
                              f"(check the user and password the profile passes to the store)")
        if state == "57014":
            return StoreError(f"online store {self.description} timed out while {what}: {reason} "
                              f"(statement_timeout {self._statement_ms} ms)")
        if isinstance(e, psycopg.OperationalError) and (not state or state.startswith(("08", "57P"))):
            return StoreError(f"online store {self._where} is unreachable: {reason} while {what}")
        return StoreError(f"online store {self.description} failed while {what}: {reason}")

    # -- schemas ---------------------------------------------------------------------------

    def _load_schemas(self, conn: psycopg.Connection, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], SchemaSet]:
        """The stored schemas of each (feature, major) in `wanted` (empty sets for those never written), also cached."""
        rows = conn.execute(self._sql["schemas"], ([f for f, _ in wanted], [m for _, m in wanted])).fetchall()
        out = {}
        for feature, major in wanted:
            out[(feature, major)] = SchemaSet(feature, major, [RowSchema.from_json(d) for f, m, d in rows if (f, m) == (feature, major)])
            if out[(feature, major)].by_id:
                self._schemas[(feature, major)] = out[(feature, major)]
        return out

    def _stored_versions(self, conn: psycopg.Connection, feature: str) -> list[str]:
        return [f"v{m}" for (m,) in conn.execute(self._sql["versions"], (feature,)).fetchall()]

    # -- write -----------------------------------------------------------------------------

    def write(self, feature: str, major: int, keys: list[str], frame: pl.DataFrame, *,
              timestamp: str = FEATURE_TIMESTAMP, ttl_seconds: float | None = None,
              version: str | None = None) -> WriteResult:
        """Newer-wins upsert of one row per entity, in one transaction: all rows or (on any error) none.

        A row replaces the stored value only if its (timestamp, version order) is strictly greater
        (or the stored value expired): a newer timestamp, or the same one from a newer MINOR.PATCH of
        `version`; the rest is skipped, so re-publishing a version writes nothing. With `ttl_seconds`,
        each written value expires ttl_seconds after this call, and the feature's expired rows are
        deleted. Creates the tables if they do not exist.
        """
        ttl_ms = ttl_milliseconds(ttl_seconds, feature, major)
        batch = encode_frame(feature, major, keys, frame, timestamp, version)
        now = time.time_ns() // 1000
        expires = now + ttl_ms * 1000 if ttl_ms is not None else None
        entities, stamps = batch.entities(), batch.timestamps.tolist()

        def work(conn: psycopg.Connection) -> int:
            with conn.transaction():
                if not self._ready and None in conn.execute("SELECT to_regclass(%s), to_regclass(%s)", self._regclass).fetchone():
                    # only when missing: a role that may write rows need not be allowed to create tables
                    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"fp-online-ddl:{self.table}",))
                    conn.execute(self._sql["ddl"])
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"fp-online:{self.table}:{feature}:v{major}",))
                existing = self._load_schemas(conn, [(feature, major)])[(feature, major)]
                existing.check_compatible(batch.schema, self.description)
                if batch.schema.id not in existing.by_id:
                    conn.execute(self._sql["insert_schema"], (feature, major, batch.schema.id, batch.schema.json))
                if ttl_ms is not None:
                    conn.execute(self._sql["purge"], (feature, major, now))
                written = 0
                for start in range(0, len(entities), _WRITE_CHUNK):
                    cur = conn.execute(self._sql["upsert"], {
                        "feature": feature, "major": major, "ver": batch.order, "expires": expires, "now": now,
                        "entities": entities[start:start + _WRITE_CHUNK], "ts": stamps[start:start + _WRITE_CHUNK],
                        "records": batch.values[start:start + _WRITE_CHUNK]})
                    written += cur.rowcount
            self._ready = True
            return written

        written = self._run(f"writing {label(feature, major)}", work)
        self._schemas.pop((feature, major), None)
        return WriteResult(written=written, skipped=frame.height - written)

    # -- read ------------------------------------------------------------------------------

    def read(self, reads: list[OnlineRead]) -> list[pl.DataFrame]:
        """Per OnlineRead, one row per requested entity in request order (nulls where unknown, null key or expired).

        One `entity = ANY(...)` query per OnlineRead, several sent in one pipeline on one connection;
        schemas are cached per process. Raises StoreError for a feature/major never written (its
        dtypes are unknown) and for columns it never stored, naming the stored ones.
        """
        for r in reads:
            check_read(r)
        if not reads:
            return []
        return self._run("reading " + ", ".join(label(r.feature, r.major) for r in reads), lambda conn: self._read(conn, reads))

    def _read(self, conn: psycopg.Connection, reads: list[OnlineRead]) -> list[pl.DataFrame]:
        known = {(r.feature, r.major): self._schemas.get((r.feature, r.major)) for r in reads}  # local: a write may reset the cache
        stale = [key for key, schemas in known.items() if schemas is None or any(
            c not in schemas.dtypes and c != FEATURE_TIMESTAMP for r in reads if (r.feature, r.major) == key for c in r.columns)]
        if stale:
            try:
                known.update(self._load_schemas(conn, stale))
            except psycopg.errors.UndefinedTable:  # nothing was ever written to this store
                feature, major = stale[0]
                raise never_written(feature, major, self.description) from None
        plans = []
        for r in reads:
            schemas = known[(r.feature, r.major)]
            if schemas is None or not schemas.by_id:
                raise never_written(r.feature, r.major, self.description, self._stored_versions(conn, r.feature))
            schemas.check_columns(r.columns, self.description)
            texts = keys_of(r, schemas, self.description)
            plans.append((r, schemas, texts, list({t for t in texts if t is not None})))
        now = time.time_ns() // 1000
        cursors = []
        if len(plans) == 1:  # the serving hot path: one plain query (a pipeline's extra sync costs more than it saves)
            cursors.append(conn.cursor(binary=True).execute(self._sql["read"], (plans[0][0].feature, plans[0][0].major, plans[0][3], now)))
        else:
            with conn.pipeline():
                for r, _, _, wanted in plans:
                    cursors.append(conn.cursor(binary=True).execute(self._sql["read"], (r.feature, r.major, wanted, now)))
        out = []
        for (r, schemas, texts, _), cur in zip(plans, cursors):
            found = dict(cur.fetchall())
            values = [found.get(t) if t is not None else None for t in texts]
            out.append(self._decode(conn, r, schemas, values))
        return out

    def _decode(self, conn: psycopg.Connection, r: OnlineRead, schemas: SchemaSet, values: list) -> pl.DataFrame:
        try:
            return decode(values, schemas, r.columns, r.prefix)
        except UnknownSchema:  # written under a schema registered after we cached: reload once
            try:
                return decode(values, self._load_schemas(conn, [(r.feature, r.major)])[(r.feature, r.major)], r.columns, r.prefix)
            except UnknownSchema as e:
                raise StoreError(f"{label(r.feature, r.major)} in {self.description} holds records of schema id {e.args[0]} "
                                 f"that {self.table}_schemas does not list; the rows were written by something else") from None


def _parse(conninfo: object, password: str | None) -> dict[str, str]:
    """libpq parameters of a URL or key=value conninfo (a SQLAlchemy '+driver' suffix dropped); errors never echo the text."""
    if not isinstance(conninfo, str):
        raise StoreError(f"PostgreSQL online store conninfo must be a string, got {type(conninfo).__name__}")
    text = conninfo.strip()
    scheme, sep, rest = text.partition("://")
    if sep and "+" in scheme:  # postgresql+psycopg2://... (Dagster's and SQLAlchemy's form)
        text = f"{scheme.split('+', 1)[0]}://{rest}"
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(text).items()}
    except psycopg.Error as e:
        shown = redact_url(text) if sep else "a key=value string (not shown: it may hold a password)"
        reason = scrub(scrub(str(e), password), _secret_in(text))
        raise StoreError(f"invalid PostgreSQL conninfo {shown}: {reason}; expected 'postgresql://user@host:5432/dbname' "
                         f"or 'host=... port=... dbname=... user=...'") from None
    if password is not None:
        params["password"] = password
    return params


def _secret_in(text: str) -> str | None:
    """The password in a conninfo text, found without libpq (for scrubbing an error about that very text)."""
    match = re.search(r"://[^/@]*:([^@]*)@", text) or re.search(r"password\s*=\s*'?([^'\s]+)", text)
    return match.group(1) if match else None
