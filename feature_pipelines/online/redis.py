"""The production online store: Redis, one key per (feature, major, entity), written newer-wins by a Lua script.

Key layout::

    {prefix}:{feature}:v{major}:{entity}       one binary record (feature_pipelines.online.base)
    {prefix}:{feature}:v{major}:__schema__     hash: schema id -> schema JSON (keys, column dtypes)
    {prefix}:__features__                      set of "feature:v{major}" ever written (for error messages)

One key per entity *and feature* (not Feast's one hash per entity) is what gives per-feature TTL
(PX on the key) and lets a batch read be a single MGET. `entity` is the canonical text of the key
tuple (base.entity_texts); an entity text starting with '__' gets one more '_', so it can never be
`__schema__`.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from itertools import islice

import polars as pl
import redis as redis_py
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

try:
    import hiredis
except ImportError:  # pragma: no cover - redis[hiredis] is a dependency
    hiredis = None

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
from feature_pipelines.online.settings import as_bool, as_int, redact_url, scrub

# KEYS: one per entity (at most _SCRIPT_BATCH). ARGV[1]: TTL in ms ('0' = none); ARGV[2], ARGV[3]: the batch's
# MINOR and PATCH; ARGV[4]: the 4-byte schema ids of layout-1 records (no version words: they order as 0.0);
# ARGV[i + 4]: the record for KEYS[i]. A record replaces the stored one only if (timestamp, MINOR, PATCH)
# is strictly greater; a missing or expired key counts as older. The timestamp (first 8 bytes, big-endian
# int64 µs) is compared as (signed high, unsigned low) 32-bit halves: exact for every int64, where one Lua
# number (a double) rounds beyond 2^53. The stored version words are read only on a timestamp tie.
# One MGET reads the batch and MSETs write it (without TTL): two server calls per batch instead of two
# per key, which halves the server's time. `unpack` is kept under Lua's 8000-value stack limit.
WRITE_SCRIPT = b"""
local ttl = ARGV[1]
local nmin, npat = tonumber(ARGV[2]), tonumber(ARGV[3])
local legacy = {}
for i = 1, #ARGV[4], 4 do
  legacy[string.sub(ARGV[4], i, i + 3)] = true
end
local current = redis.call('MGET', unpack(KEYS))
local pending, np = {}, 0
local written = 0
for i = 1, #KEYS do
  local new = ARGV[i + 4]
  local cur = current[i]
  local newer = not cur
  if not newer then
    local ch, cl = struct.unpack('>i4I4', cur)
    local nh, nl = struct.unpack('>i4I4', new)
    if nh ~= ch then
      newer = nh > ch
    elseif nl ~= cl then
      newer = nl > cl
    else
      local cmin, cpat = 0, 0
      if #cur >= 20 and not legacy[string.sub(cur, 9, 12)] then
        cmin, cpat = struct.unpack('>I4I4', cur, 13)
      end
      newer = nmin > cmin or (nmin == cmin and npat > cpat)
    end
  end
  if newer then
    written = written + 1
    if ttl == '0' then
      pending[np + 1] = KEYS[i]
      pending[np + 2] = new
      np = np + 2
      if np >= 4000 then
        redis.call('MSET', unpack(pending, 1, np))
        pending, np = {}, 0
      end
    else
      redis.call('SET', KEYS[i], new, 'PX', ttl)
    end
  end
end
if np > 0 then
  redis.call('MSET', unpack(pending, 1, np))
end
return written
"""
WRITE_SHA = hashlib.sha1(WRITE_SCRIPT).hexdigest()

_SCRIPT_BATCH = 4_000  # keys per EVALSHA (<= 7000 for MGET's unpack): a few ms of server time, so other clients are not starved
_GROUP = 5  # EVALSHAs per send during a publish; two groups in flight, so packing overlaps server work
_MGET_CHUNK = 10_000  # keys per MGET inside a read's single pipeline


def _packer(conn: redis_py.connection.AbstractConnection):
    """Pack one command: hiredis' C packer when present (redis[hiredis] is a dependency), else redis-py's."""
    if hiredis is not None:
        return hiredis.pack_command
    return lambda args: b"".join(conn.pack_command(*args))


class RedisOnlineStore:
    """Online store on a Redis server: newer-wins writes in one round trip per batch, batch reads in one round trip.

    Connect with a URL (`redis://[:password@]host:port/db`, `rediss://` for TLS) or host/port/db/password/ssl.
    The password never appears in repr(), `description` or error messages. With `ttl_seconds`, a
    written key expires ttl after the write (PX): a value not refreshed by a publish within ttl
    disappears. A large write is several batches, each atomic on its own; retrying a failed write is
    safe because writes are newer-wins.
    """

    def __init__(self, url: str | None = None, *, host: str = "127.0.0.1", port: int = 6379, db: int = 0,
                 password: str | None = None, ssl: bool = False, key_prefix: str = "fp",
                 socket_timeout: float = 30.0, connect_timeout: float = 5.0):
        if not isinstance(key_prefix, str) or not key_prefix or ":" in key_prefix:
            raise StoreError(f"key_prefix must be a non-empty string without ':', got {key_prefix!r}")
        port, db, ssl = as_int(port, "port", "Redis"), as_int(db, "db", "Redis"), as_bool(ssl, "ssl", "Redis")  # profiles may pass "6379", "true"
        options = dict(socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout,
                       # one quick retry for a dropped connection, not redis-py's default of 10 (seconds of waiting when Redis is down)
                       retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1))
        try:
            if url is not None:
                if password is not None:
                    options["password"] = password
                client = redis_py.Redis.from_url(url, **options)
            else:
                client = redis_py.Redis(host=host, port=port, db=db, password=password, ssl=ssl, **options)
        except (ValueError, TypeError, redis_py.RedisError) as e:
            shown = redact_url(url) if url is not None else f"{host}:{port}"
            raise StoreError(f"invalid Redis online store settings for {shown}: {scrub(str(e), password)}") from None
        kwargs = client.connection_pool.connection_kwargs
        self._secret = kwargs.get("password")  # only to scrub it from error messages
        if "path" in kwargs:
            where = f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        else:
            scheme = "rediss" if client.connection_pool.connection_class is redis_py.SSLConnection else "redis"
            where = f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
        self.key_prefix = key_prefix
        self.description = f"{where} (prefix {key_prefix})"
        self._where = where
        self._client = client
        self._schemas: dict[tuple[str, int], SchemaSet] = {}
        self._script_loaded = False
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.description!r})"

    __str__ = __repr__

    def __enter__(self) -> RedisOnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect every connection of the store, the threads' read connections included (they reconnect if used again)."""
        self._client.connection_pool.disconnect(inuse_connections=True)
        self._client.close()

    # -- helpers ---------------------------------------------------------------------------

    def _prefix(self, feature: str, major: int) -> str:
        return f"{self.key_prefix}:{feature}:v{major}:"

    def _schema_key(self, feature: str, major: int) -> str:
        return f"{self.key_prefix}:{feature}:v{major}:__schema__"

    def _registry_key(self) -> str:
        return f"{self.key_prefix}:__features__"

    def _error(self, e: Exception, what: str) -> StoreError:
        """A StoreError a person can act on: which server, what failed, while doing what; never the password."""
        reason = scrub(str(e) or type(e).__name__, self._secret)
        if isinstance(e, redis_py.AuthenticationError) or "WRONGPASS" in reason or "NOAUTH" in reason:
            msg = (f"online store {self._where} rejected the credentials while {what}: {reason} "
                   f"(check the password the profile passes to the store)")
        elif isinstance(e, (redis_py.ConnectionError, redis_py.TimeoutError)):
            msg = f"online store {self._where} is unreachable: {reason} while {what}"
        else:
            msg = f"online store {self._where} failed while {what}: {reason}"
        return StoreError(msg)

    def _parse_schemas(self, feature: str, major: int, raw: dict) -> SchemaSet:
        schemas = SchemaSet(feature, major, [RowSchema.from_json(v) for _, v in sorted(raw.items())])
        if schemas.by_id:
            self._schemas[(feature, major)] = schemas
        return schemas

    # -- write -----------------------------------------------------------------------------

    def write(self, feature: str, major: int, keys: list[str], frame: pl.DataFrame, *,
              timestamp: str = FEATURE_TIMESTAMP, ttl_seconds: float | None = None,
              version: str | None = None) -> WriteResult:
        """Newer-wins write of one key per entity; the compare runs server-side, one EVALSHA per batch of keys.

        A row replaces the stored value only if its (timestamp, version order) is strictly greater (a
        missing or expired key counts as older): a newer timestamp, or the same one from a newer
        MINOR.PATCH of `version`; the rest is skipped, so re-publishing a version is a no-op.
        With `ttl_seconds`, every written key expires ttl_seconds after this write: a value not
        refreshed by a publish within ttl disappears. Invalid input raises StoreError before anything
        is sent.
        """
        ttl_ms = ttl_milliseconds(ttl_seconds, feature, major)
        batch = encode_frame(feature, major, keys, frame, timestamp, version)
        what = f"writing {label(feature, major)}"
        ttl_arg = str(ttl_ms or 0)
        try:
            existing = self._parse_schemas(feature, major, self._client.hgetall(self._schema_key(feature, major)))
            existing.check_compatible(batch.schema, self.description)
            first: list[tuple] = []
            if batch.schema.id not in existing.by_id:  # registered before any record that uses it
                first = [("HSET", self._schema_key(feature, major), str(batch.schema.id), batch.schema.json),
                         ("SADD", self._registry_key(), f"{feature}:v{major}")]
            if not self._script_loaded:
                self._client.script_load(WRITE_SCRIPT)
                self._script_loaded = True
            keys = batch.entities(self._prefix(feature, major))
            values = batch.values
            n = len(keys)
            legacy = b"".join(sid.to_bytes(4, "little") for sid, s in existing.by_id.items() if s.layout == 1)
            args = (ttl_arg, str(batch.version[0]), str(batch.version[1]), legacy)
            scripts = (("EVALSHA", WRITE_SHA, min(_SCRIPT_BATCH, n - i), *keys[i:i + _SCRIPT_BATCH], *args,
                        *values[i:i + _SCRIPT_BATCH]) for i in range(0, n, _SCRIPT_BATCH))
            commands = [*first, *scripts] if first else scripts
            written = sum(result for command, result in self._stream(commands) if command[0] == "EVALSHA")
        except redis_py.RedisError as e:
            raise self._error(e, what) from None
        self._schemas.pop((feature, major), None)
        return WriteResult(written=written, skipped=frame.height - written)

    def _stream(self, commands) -> list[tuple[tuple, object]]:
        """Send commands on one connection in groups, two groups in flight; (command, result) pairs in order.

        Packing the next group overlaps the server running the previous one, which a plain pipeline
        (send all, then wait) does not. Commands the server answers NOSCRIPT (it restarted or ran
        SCRIPT FLUSH) are re-sent once after reloading the script; any other error is raised (and the
        connection dropped, since replies may still be pending on it).
        """
        pool = self._client.connection_pool
        conn = pool.get_connection()
        pack = _packer(conn)
        out: list[tuple[tuple, object]] = []
        lost: list[tuple] = []
        try:
            in_flight: deque[list[tuple]] = deque()
            iterator = iter(commands)
            while True:
                group = list(islice(iterator, _GROUP))
                if group:
                    conn.send_packed_command([pack(c) for c in group], check_health=not in_flight)
                    in_flight.append(group)
                if len(in_flight) > 1 or (in_flight and not group):
                    for command in in_flight.popleft():
                        try:
                            out.append((command, conn.read_response()))
                        except redis_py.exceptions.NoScriptError:
                            lost.append(command)
                if not group and not in_flight:
                    break
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if lost:
            self._client.script_load(WRITE_SCRIPT)
            for command in lost:  # entities of different batches are distinct: their order does not matter
                out.append((command, self._client.execute_command(*command)))
        return out

    # -- read ------------------------------------------------------------------------------

    def read(self, reads: list[OnlineRead]) -> list[pl.DataFrame]:
        """Per OnlineRead, one row per requested entity in request order (nulls where unknown, null key or expired).

        All reads of one call go to Redis in one round trip (one MGET each, sent together); schemas
        are cached per process, so only the first read of a feature costs a second round trip.
        Raises StoreError for a feature/major never written (its dtypes are unknown) and for columns it
        never stored, naming the stored ones.
        """
        for r in reads:
            check_read(r)
        try:
            self._ensure_schemas(reads)
            plans = []
            for r in reads:
                schemas = self._schemas.get((r.feature, r.major))
                if schemas is None:
                    raise never_written(r.feature, r.major, self.description, self._stored_versions(r.feature))
                schemas.check_columns(r.columns, self.description)
                texts = keys_of(r, schemas, self.description)
                prefix = self._prefix(r.feature, r.major)
                keys = [prefix + t for t in texts if t is not None] if None in texts else list(map(prefix.__add__, texts))
                plans.append((r, texts, keys))
            fetched = self._mget([keys for _, _, keys in plans])
            out = []
            for (r, texts, _), values in zip(plans, fetched):
                if len(values) != len(texts):  # put the null-key rows back, as no-value rows
                    it = iter(values)
                    values = [next(it) if t is not None else None for t in texts]
                out.append(self._decode(r, values))
            return out
        except redis_py.RedisError as e:
            raise self._error(e, "reading " + ", ".join(label(r.feature, r.major) for r in reads)) from None

    def _ensure_schemas(self, reads: list[OnlineRead]) -> None:
        """Load (in one round trip) the schemas of features not cached, or asked for a column the cache lacks."""
        stale = []
        for r in reads:
            cached = self._schemas.get((r.feature, r.major))
            if cached is None or any(c not in cached.dtypes and c != FEATURE_TIMESTAMP for c in r.columns):
                if (r.feature, r.major) not in stale:
                    stale.append((r.feature, r.major))
        if stale:
            pipe = self._client.pipeline(transaction=False)
            for feature, major in stale:
                pipe.hgetall(self._schema_key(feature, major))
            for (feature, major), raw in zip(stale, pipe.execute()):
                self._parse_schemas(feature, major, raw)

    def _reader(self) -> redis_py.connection.AbstractConnection:
        """This thread's read connection: taken from the pool once and kept (returned to it by close()).

        A read is the serving hot path: sending packed MGETs on a held connection skips redis-py's
        per-command pooling, retry and instrumentation layers, about a third of a one-entity read.
        """
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child: never reuse the parent's socket
            local.conn, local.pid = self._client.connection_pool.get_connection(), os.getpid()
        return local.conn

    def _mget(self, key_lists: list[list[str]]) -> list[list]:
        """One MGET per key list (chunked), all sent in one write and answered in one round trip."""
        commands, spans = [], []
        for keys in key_lists:
            chunks = [keys[i:i + _MGET_CHUNK] for i in range(0, len(keys), _MGET_CHUNK)]
            commands += [("MGET", *chunk) for chunk in chunks]
            spans.append(len(chunks))
        if not commands:
            return [[] for _ in key_lists]
        for attempt in (1, 2):
            conn = self._reader()
            pack = _packer(conn)
            try:
                conn.send_packed_command([pack(c) for c in commands], check_health=False)
                results = [conn.read_response() for _ in commands]
                break
            except redis_py.ConnectionError as e:
                conn.disconnect()  # reconnects on next use
                # A kept connection may have gone stale (server restarted): one retry, reads are idempotent.
                if attempt == 2 or isinstance(e, redis_py.AuthenticationError):
                    raise
            except BaseException:
                conn.disconnect()
                raise
        if len(commands) == len(key_lists):
            return results
        out, pos = [], 0
        for count in spans:
            values: list = []
            for part in results[pos:pos + count]:
                values.extend(part)
            pos += count
            out.append(values)
        return out

    def _decode(self, r: OnlineRead, values: list) -> pl.DataFrame:
        schemas = self._schemas[(r.feature, r.major)]
        try:
            return decode(values, schemas, r.columns, r.prefix)
        except UnknownSchema:  # written under a schema registered after we cached: reload once
            schemas = self._parse_schemas(r.feature, r.major, self._client.hgetall(self._schema_key(r.feature, r.major)))
            try:
                return decode(values, schemas, r.columns, r.prefix)
            except UnknownSchema as e:
                raise StoreError(f"{label(r.feature, r.major)} in {self.description} holds records of schema id "
                                 f"{e.args[0]} that {self._schema_key(r.feature, r.major)} does not list; "
                                 f"the keys were written by something else or the schema key was deleted") from None

    def _stored_versions(self, feature: str) -> list[str]:
        members = sorted(m.decode() for m in self._client.smembers(self._registry_key()))
        return [m.split(":", 1)[1] for m in members if m.split(":", 1)[0] == feature]

