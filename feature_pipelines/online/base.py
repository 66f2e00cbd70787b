"""The online store interface, and the row codec that every online store shares.

Stores know nothing of features beyond a name, a MAJOR version, key columns, a timestamp column
and a frame. Each (feature, major, entity) holds one value: the newest row written for that entity.
A value is one compact binary record (layout below), the same bytes in Redis and in SQLite, so both
stores share one encoder and one vectorised decoder.

Record layout (all rows of one schema have the same fixed-size head)::

    offset 0   int64  big-endian   timestamp, microseconds since the Unix epoch (UTC). First and
                                   big-endian so the Redis Lua script compares it with `struct`
                                   without knowing the schema.
    offset 8   uint32 little-end.  schema id: xxh32 of the schema's canonical JSON. Rows written
                                   under different schemas of one MAJOR (a MINOR bump adds a
                                   column) stay readable side by side.
    offset 12  uint32 big-endian   MINOR  } the version order: the semantic version the row was
    offset 16  uint32 big-endian   PATCH  } published from, within its MAJOR (0.0 when unknown)
    offset 20  ceil(n/8) bytes     null bitmap, bit i (LSB first) set = value column i is null
    then       fixed-width values  numeric/boolean/temporal columns in schema order, little-endian,
                                   native width (Float32 = 4 bytes, Boolean = 1, Date = int32 days)
    then       uint32 per string   byte length of each String/Binary column, in schema order
    then       bytes               the UTF-8 (or binary) data of those columns, concatenated

Newer-wins compares (timestamp, MINOR, PATCH) lexicographically: a corrected partition (a PATCH
version: same timestamp, other values) replaces the stored row, an older timestamp never does,
whatever its version, and re-publishing the same version is a no-op. Every store keeps that order
where it can compare it cheaply (SQL columns, DynamoDB attributes, the record head for Redis).

Layouts: the schema JSON says `"layout": 2` for the layout above. Records of schemas without it
(layout 1, written before versions were recorded) have no version words: their null bitmap starts
at offset 12, they decode as before and compare as version 0.0. The schema id stays at offset 8 in
both, so a reader always knows which layout a record has.

Because the lengths sit in the fixed head, a batch of records decodes with numpy alone: one
structured `np.frombuffer` for the head, one gather per string column, no per-value Python work.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import polars as pl
import pyarrow as pa
import xxhash

from feature_pipelines.errors import StoreError

FEATURE_TIMESTAMP = "feature_timestamp"
"""Name of the timestamp column every read returns (the value's own timestamp, Datetime('us','UTC'))."""

_CHUNK = 65_536  # rows encoded at once: bounds the temporary numpy buffers of a large publish
_TS, _ENTITY, _ROW = "\x00fp_ts", "\x00fp_entity", "\x00fp_row"  # internal column names no user column can take
_PY_KEYS_MAX = 50_000  # up to this many entities, a read builds key texts in Python (cheaper than starting a polars query)
_TS_DTYPE = pl.Datetime("us", "UTC")
LAYOUT = 2
"""The record layout this version writes (module docstring)."""
_VERSION_MAX = 2**31 - 1  # MINOR and PATCH bound: (MINOR << 32 | PATCH) must fit a signed 64-bit SQL integer


@dataclass(frozen=True)
class WriteResult:
    """What one `write` did: `written + skipped` equals the number of rows in the frame."""

    written: int
    """Rows that replaced an older (or missing, or expired) value."""
    skipped: int
    """Rows not written because the stored value is as new or newer (or a newer row for the same entity was in the same frame)."""


@dataclass(frozen=True)
class OnlineRead:
    """One feature's values for a batch of entities, as asked of `OnlineStore.read`."""

    feature: str
    major: int
    """MAJOR semantic version: part of the key, so a MAJOR bump (dtype change, removed column) never mixes schemas."""
    keys: pl.DataFrame
    """The requested entities: the join-key columns (extra columns are ignored), one row per entity; duplicates and nulls allowed."""
    columns: list[str] = field(default_factory=list)
    """Value columns to return; `feature_timestamp` is always returned as well, as the last column."""
    prefix: str = ""
    """Prepended to the returned value columns' names (e.g. 'customer_spend__'), so callers need no rename."""


@runtime_checkable
class OnlineStore(Protocol):
    """Newest value per (feature, major, entity), written newer-wins, read in batches in request order.

    `write` replaces a stored value only with a strictly greater (timestamp, version order): a newer
    timestamp, or the same timestamp from a newer MINOR.PATCH of the same MAJOR (a corrected
    partition). Re-publishing a version is a no-op and an old backfill never overwrites fresher values,
    even from a newer version. `version` is the "MAJOR.MINOR.PATCH" the frame was published from (its
    MAJOR must be `major`); None orders as 0.0. With `ttl_seconds`, a written value
    expires that long after it was written (wall clock): a value not refreshed by a publish within ttl
    disappears. `read` returns, per `OnlineRead`, exactly one row per requested entity in the requested
    order; unknown entities, null keys and expired values give a row of nulls, with the dtypes written.
    A (feature, major) never written raises StoreError rather than guessing dtypes for all-null
    columns: "not published yet" and "wrong MAJOR / wrong store" should be loud, not silent nulls.
    """

    description: str
    """Where the store lives, for logs and errors, e.g. "sqlite:/path/online.db" or "redis://127.0.0.1:6379/0 (prefix fp)"; never a password."""

    def write(self, feature: str, major: int, keys: list[str], frame: pl.DataFrame, *,
              timestamp: str = FEATURE_TIMESTAMP, ttl_seconds: float | None = None,
              version: str | None = None) -> WriteResult: ...

    def read(self, reads: list[OnlineRead]) -> list[pl.DataFrame]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------------------------
# dtypes: polars dtype <-> stored name <-> numpy field


_FIXED: dict[type, tuple[str, str]] = {  # polars dtype class -> (stored name, numpy dtype of the stored bytes)
    pl.Float64: ("Float64", "<f8"), pl.Float32: ("Float32", "<f4"),
    pl.Int8: ("Int8", "<i1"), pl.Int16: ("Int16", "<i2"), pl.Int32: ("Int32", "<i4"), pl.Int64: ("Int64", "<i8"),
    pl.UInt8: ("UInt8", "<u1"), pl.UInt16: ("UInt16", "<u2"), pl.UInt32: ("UInt32", "<u4"), pl.UInt64: ("UInt64", "<u8"),
    pl.Boolean: ("Boolean", "u1"), pl.Date: ("Date", "<i4"), pl.Time: ("Time", "<i8"),
}
if hasattr(pl, "Float16"):
    _FIXED[pl.Float16] = ("Float16", "<f2")
_BY_NAME: dict[str, tuple[pl.DataType, str]] = {name: (cls(), np_dtype) for cls, (name, np_dtype) in _FIXED.items()}
_SUPPORTED = ("Float16/32/64, Int8-64, UInt8-64, Boolean, String (Categorical/Enum are stored as String), "
              "Binary, Date, Datetime, Duration, Time, Null")
_KEY_DTYPES = "String, Categorical, Enum, Int8-64, UInt8-64, Boolean, Date"


def _dtype_name(dtype: pl.DataType) -> str | None:
    """The stored name of a polars dtype, or None when the online store cannot hold it."""
    cls = type(dtype)
    if cls in _FIXED:
        return _FIXED[cls][0]
    if isinstance(dtype, pl.Datetime):
        return f"Datetime[{dtype.time_unit},{dtype.time_zone or ''}]"
    if isinstance(dtype, pl.Duration):
        return f"Duration[{dtype.time_unit}]"
    if isinstance(dtype, (pl.String, pl.Categorical, pl.Enum)):
        return "String"
    if isinstance(dtype, pl.Binary):
        return "Binary"
    if isinstance(dtype, pl.Null):
        return "Null"
    return None


def _dtype_of(name: str) -> tuple[pl.DataType, str, str]:
    """(polars dtype, kind, numpy dtype) of a stored dtype name; kind is 'fixed', 'var' or 'null'."""
    if name in _BY_NAME:
        dtype, np_dtype = _BY_NAME[name]
        return dtype, "fixed", np_dtype
    if name.startswith("Datetime["):
        unit, tz = name[len("Datetime["):-1].split(",", 1)
        return pl.Datetime(unit, tz or None), "fixed", "<i8"
    if name.startswith("Duration["):
        return pl.Duration(name[len("Duration["):-1]), "fixed", "<i8"
    if name == "String":
        return pl.String(), "var", ""
    if name == "Binary":
        return pl.Binary(), "var", ""
    if name == "Null":
        return pl.Null(), "null", ""
    raise StoreError(f"the online store holds a column of unknown stored dtype {name!r}; it was written by a newer "
                     f"feature_pipelines: upgrade this process")


# ----------------------------------------------------------------------------------------------
# schemas


class RowSchema:
    """The layout of one kind of record: key column names and (name, stored dtype) of each value column."""

    def __init__(self, keys: Sequence[str], columns: Sequence[tuple[str, str]], layout: int = LAYOUT):
        self.keys = tuple(keys)
        self.columns = tuple((str(n), str(d)) for n, d in columns)
        self.layout = layout
        if layout not in (1, LAYOUT):
            raise StoreError(f"the online store holds a record layout {layout!r}, written by a newer feature_pipelines: upgrade this process")
        data: dict = {"keys": list(self.keys), "columns": [list(c) for c in self.columns]}
        if layout != 1:
            data["layout"] = layout  # layout 1 JSON (and so its schema id) stays exactly what older writers produced
        self.json = json.dumps(data, separators=(",", ":"))
        self.id = xxhash.xxh32_intdigest(self.json.encode())
        self.dtypes = {n: _dtype_of(d)[0] for n, d in self.columns}
        self.kinds = {n: _dtype_of(d)[1] for n, d in self.columns}
        self.index = {n: i for i, (n, _) in enumerate(self.columns)}
        self.fixed = [n for n, _ in self.columns if self.kinds[n] == "fixed"]
        self.var = [n for n, _ in self.columns if self.kinds[n] == "var"]
        self.null_bytes = math.ceil(len(self.columns) / 8)
        fields: list[tuple] = [("ts", ">i8"), ("sid", "<u4")]
        if layout != 1:
            fields += [("minor", ">u4"), ("patch", ">u4")]
        if self.null_bytes:
            fields.append(("nulls", "u1", (self.null_bytes,)))
        fields += [(f"f{self.index[n]}", _dtype_of(d)[2]) for n, d in self.columns if self.kinds[n] == "fixed"]
        fields += [(f"l{self.index[n]}", "<u4") for n in self.var]
        self.record = np.dtype(fields)  # packed: no alignment padding
        self.width = self.record.itemsize

    @classmethod
    def from_json(cls, text: str | bytes) -> RowSchema:
        data = json.loads(text)
        return cls(data["keys"], [tuple(c) for c in data["columns"]], data.get("layout", 1))

    def __repr__(self) -> str:
        return f"RowSchema(keys={list(self.keys)}, columns={dict(self.columns)})"


class SchemaSet:
    """Every schema written under one (feature, major): the union of their columns is what a read may ask for."""

    def __init__(self, feature: str, major: int, schemas: Sequence[RowSchema]):
        self.feature, self.major = feature, major
        self.by_id = {s.id: s for s in schemas}
        self.keys = schemas[0].keys if schemas else ()
        self.dtypes: dict[str, pl.DataType] = {}
        self.conflicts: dict[str, list[pl.DataType]] = {}
        self._plans: dict[tuple, list[tuple]] = {}
        for schema in schemas:
            for name, dtype in schema.dtypes.items():
                known = self.dtypes.get(name)
                if known is None or isinstance(known, pl.Null):
                    self.dtypes[name] = dtype
                elif not isinstance(dtype, pl.Null) and dtype != known:
                    self.conflicts.setdefault(name, [known]).append(dtype)

    def plan(self, schema: RowSchema, columns: Sequence[str]) -> list[tuple]:
        """How to decode `columns` from records of `schema`: (kind, name, output dtype, index, numpy field) each; cached."""
        key = (schema.id, tuple(columns))
        plan = self._plans.get(key)
        if plan is None:
            plan = []
            for name in columns:
                dtype, i = self.dtypes[name], schema.index.get(name)
                kind = schema.kinds.get(name, "null")
                if kind == "fixed":
                    kind = "bool" if isinstance(dtype, pl.Boolean) else "temporal" if dtype.is_temporal() else "fixed"
                plan.append((kind, name, dtype, i, f"f{i}"))
            self._plans[key] = plan
        return plan

    def check_compatible(self, new: RowSchema, where: str) -> None:
        """Refuse a write whose keys or dtypes differ from what this MAJOR already holds: that is a MAJOR bump."""
        if self.keys and new.keys != self.keys:
            raise StoreError(f"cannot write {label(self.feature, self.major)} to {where}: it is keyed by {list(self.keys)}, "
                             f"this frame by {list(new.keys)}; changing the entity keys needs a MAJOR version bump")
        changed = {n: (self.dtypes[n], d) for n, d in new.dtypes.items()
                   if n in self.dtypes and not isinstance(d, pl.Null) and not isinstance(self.dtypes[n], pl.Null) and d != self.dtypes[n]}
        if changed:
            desc = ", ".join(f"{n!r} is stored as {old}, the frame has {dt}" for n, (old, dt) in changed.items())
            raise StoreError(f"cannot write {label(self.feature, self.major)} to {where}: {desc}; "
                             f"a dtype change needs a MAJOR version bump")

    def check_columns(self, columns: Sequence[str], where: str) -> None:
        """Raise a StoreError naming requested columns this (feature, major) never stored, or stored with two dtypes."""
        unknown = [c for c in columns if c not in self.dtypes and c != FEATURE_TIMESTAMP]
        if unknown:
            raise StoreError(f"{label(self.feature, self.major)} in {where} has no column(s) {unknown}; "
                             f"stored columns: {sorted(self.dtypes)}")
        clash = {c: self.conflicts[c] for c in columns if c in self.conflicts}
        if clash:
            raise StoreError(f"{label(self.feature, self.major)} in {where} holds column(s) with several dtypes "
                             f"{ {c: [str(d) for d in v] for c, v in clash.items()} } (two writers raced with different "
                             f"schemas); publish under a new MAJOR version")


def label(feature: str, major: int) -> str:
    """How errors name a feature version: 'customer_spend v1'."""
    return f"{feature} v{major}"


def never_written(feature: str, major: int, where: str, stored: Sequence[str] = ()) -> StoreError:
    """The error for a read of a (feature, major) that no write ever reached (its dtypes are unknown)."""
    hint = f"; versions of {feature!r} in this store: {', '.join(stored)}" if stored else ""
    return StoreError(f"{label(feature, major)} was never written to online store {where} (publish it first, or check "
                      f"the MAJOR version and the store the reader points at){hint}")


# ----------------------------------------------------------------------------------------------
# validation and entity keys


def check_name(feature: str, major: int) -> None:
    """Feature names become part of keys: they must be non-empty and without ':'; majors are non-negative ints."""
    if not isinstance(feature, str) or not feature or ":" in feature:
        raise StoreError(f"invalid feature name {feature!r} for the online store: expected a non-empty name without ':' "
                         f"(it is part of every key)")
    if isinstance(major, bool) or not isinstance(major, (int, np.integer)) or major < 0:
        raise StoreError(f"invalid MAJOR version {major!r} for {feature}: expected an integer >= 0")


def ttl_milliseconds(ttl_seconds: float | None, feature: str, major: int) -> int | None:
    """A TTL in whole milliseconds (Redis' PX granularity, at least 1), or None for values that never expire."""
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, (int, float)) or not 0 < ttl_seconds < float("inf"):
        raise StoreError(f"cannot write {label(feature, major)}: ttl_seconds must be a positive number of seconds or None, "
                         f"got {ttl_seconds!r}")
    return max(1, round(ttl_seconds * 1000))


def version_order(version: str | None, feature: str, major: int) -> tuple[int, int]:
    """(MINOR, PATCH) of a "MAJOR.MINOR.PATCH" version whose MAJOR is `major`; (0, 0) for None (callers that know no version)."""
    if version is None:
        return (0, 0)
    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise StoreError(f"cannot write {label(feature, major)}: version must be a semantic version 'MAJOR.MINOR.PATCH' "
                         f"(e.g. '{major}.2.0') or None, got {version!r}")
    v_major, minor, patch = map(int, parts)
    if v_major != major:
        raise StoreError(f"cannot write {label(feature, major)}: version {version!r} belongs to MAJOR {v_major}, "
                         f"not {major}; pass the MAJOR of the version being published")
    if minor > _VERSION_MAX or patch > _VERSION_MAX:
        raise StoreError(f"cannot write {label(feature, major)}: version {version!r} has a MINOR or PATCH above {_VERSION_MAX}")
    return (minor, patch)


def order_number(minor: int, patch: int) -> int:
    """MINOR and PATCH as one non-negative int64 (MINOR << 32 | PATCH), ordered like the pair: what SQL stores compare."""
    return (minor << 32) | patch


def _check_key_dtypes(frame: pl.DataFrame, keys: Sequence[str], what: str) -> None:
    for k in keys:
        dtype = frame.get_column(k).dtype
        if not (dtype.is_integer() or isinstance(dtype, (pl.String, pl.Categorical, pl.Enum, pl.Boolean, pl.Date))):
            raise StoreError(f"{what}: key column {k!r} has dtype {dtype}; online keys must be one of {_KEY_DTYPES}")


def _py_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def entity_texts(frame: pl.DataFrame, keys: Sequence[str]) -> list[str | None]:
    """Canonical text of each row's key tuple (None where a key is null), identical to `entity_series`.

    Single key: the value as text (strings as-is, integers in decimal, booleans true/false, dates ISO),
    with one extra '_' in front of texts starting with '__' so no entity can collide with the
    store's own '__schema__' key. Composite keys: '<byte length>:<text>' per part, concatenated, so
    ("a|b", "c") and ("a", "b|c") differ. Built in Python up to a read-sized batch (a polars query
    costs ~0.2 ms to start), vectorised beyond.
    """
    if frame.height > _PY_KEYS_MAX:
        return entity_series(frame, keys).to_list()
    if len(keys) == 1:
        column = frame.get_column(keys[0])
        values = column.to_list()
        dtype = column.dtype
        if isinstance(dtype, (pl.String, pl.Categorical, pl.Enum)):
            if not column.null_count() and "\x00__" not in "\x00" + "\x00".join(values):  # the usual case, checked in C
                return values
            return [v if v is None or not v.startswith("__") else "_" + v for v in values]
        if dtype.is_integer() and not column.null_count():
            return list(map(str, values))
        return [None if v is None else _py_text(v) for v in values]  # numbers, booleans, dates never start with '__'
    parts = [frame.get_column(k).to_list() for k in keys]
    out: list[str | None] = []
    for row in zip(*parts):
        if None in row:
            out.append(None)
        else:
            texts = [_py_text(v) for v in row]
            out.append("".join(f"{len(t.encode())}:{t}" for t in texts))
    return out


def entity_series(frame: pl.DataFrame, keys: Sequence[str]) -> pl.Series:
    """The vectorised twin of `entity_texts` (a String Series, null where any key is null), used for writes and large reads."""
    return frame.select(_entity_expr(keys)).to_series()


def _entity_expr(keys: Sequence[str]) -> pl.Expr:
    texts = [pl.col(k).cast(pl.String) for k in keys]
    if len(keys) == 1:
        t = texts[0]
        return pl.when(t.str.starts_with("__")).then(pl.lit("_") + t).otherwise(t).alias(_ENTITY)
    return pl.concat_str([part for t in texts for part in (t.str.len_bytes().cast(pl.String), pl.lit(":"), t)]).alias(_ENTITY)


# ----------------------------------------------------------------------------------------------
# encoding (write side)


@dataclass
class EncodedBatch:
    """A validated frame reduced to one row per entity: canonical entity texts, timestamps (µs) and records."""

    schema: RowSchema
    entity: pl.Series  # canonical entity texts (String), aligned with timestamps and values
    timestamps: np.ndarray  # int64 µs UTC
    values: list[bytes]
    duplicates: int  # rows dropped because a newer row for the same entity was in the frame
    version: tuple[int, int] = (0, 0)  # (MINOR, PATCH) written into every record

    @property
    def order(self) -> int:
        """The version order as one int64 (`order_number`): the same for every row of the batch."""
        return order_number(*self.version)

    def entities(self, prefix: str = "") -> list[str]:
        """The entity texts as Python strings, each behind `prefix` (built in polars: a publish has millions)."""
        if not prefix:
            return self.entity.to_list()
        return self.entity.to_frame("e").select(pl.lit(prefix) + pl.col("e")).to_series().to_list()


def encode_frame(feature: str, major: int, keys: Sequence[str], frame: pl.DataFrame, timestamp: str,
                 version: str | None = None) -> EncodedBatch:
    """Validate a frame and encode one record per entity (the newest row wins within the frame).

    Raises StoreError before anything is written when the frame is not a DataFrame, lacks a key or
    the timestamp column, has a non-Datetime timestamp, a null key or timestamp, or a value dtype the
    store cannot hold, or when `version` is not a "MAJOR.MINOR.PATCH" of this MAJOR.
    """
    check_name(feature, major)
    order = version_order(version, feature, major)
    what = f"cannot write {label(feature, major)}"
    if not isinstance(frame, pl.DataFrame):
        raise StoreError(f"{what}: expected a polars DataFrame, got {type(frame).__name__}")
    if isinstance(keys, str) or not keys or not all(isinstance(k, str) for k in keys):
        raise StoreError(f"{what}: keys must be a non-empty list of column names, got {keys!r}")
    keys = list(keys)
    missing = [c for c in [*keys, timestamp] if c not in frame.columns]
    if missing:
        raise StoreError(f"{what}: the frame lacks column(s) {missing} (keys {keys}, timestamp {timestamp!r}); "
                         f"it has {frame.columns}")
    if len(set(keys)) != len(keys) or timestamp in keys:
        raise StoreError(f"{what}: keys {keys} and timestamp {timestamp!r} must be distinct columns")
    ts_dtype = frame.schema[timestamp]
    if not isinstance(ts_dtype, pl.Datetime):
        raise StoreError(f"{what}: timestamp column {timestamp!r} has dtype {ts_dtype}; expected Datetime('us', 'UTC')")
    _check_key_dtypes(frame, keys, what)
    values = [c for c in frame.columns if c not in keys and c != timestamp]
    if FEATURE_TIMESTAMP in values:
        raise StoreError(f"{what}: value column {FEATURE_TIMESTAMP!r} would clash with the timestamp every read returns; "
                         f"rename it or pass timestamp={FEATURE_TIMESTAMP!r}")
    names = {}
    for c in values:
        name = _dtype_name(frame.schema[c])
        if name is None:
            raise StoreError(f"{what}: column {c!r} has dtype {frame.schema[c]}, which the online store cannot hold; "
                             f"supported: {_SUPPORTED}")
        names[c] = name
    nulls = frame.select([pl.col(c).null_count() for c in [*keys, timestamp]]).row(0)
    bad = {c: n for c, n in zip([*keys, timestamp], nulls) if n}
    if bad:
        raise StoreError(f"{what}: null values in key/timestamp column(s) {bad} (column: null count); "
                         f"every row needs a full key and a timestamp")
    schema = RowSchema(keys, [(c, names[c]) for c in values])

    ts = pl.col(timestamp).dt.cast_time_unit("us").to_physical().alias(_TS)  # physical values are UTC already
    work = frame.select(*[pl.col(c) for c in values], ts, _entity_expr(keys))
    duplicates = 0
    if work.height and work.get_column(_ENTITY).n_unique() != work.height:
        # Robustness: the caller should pass one row per entity; if not, the newest row wins (ties: the later row).
        deduped = (work.with_row_index(_ROW).sort(_TS, _ROW)
                   .unique(subset=_ENTITY, keep="last", maintain_order=True))
        duplicates = work.height - deduped.height
        work = deduped.drop(_ROW)
    ts_np = work.get_column(_TS).to_numpy()
    out: list[bytes] = []
    for start in range(0, work.height, _CHUNK):
        out += _encode_chunk(schema, work.slice(start, _CHUNK), ts_np[start:start + _CHUNK], order)
    return EncodedBatch(schema, work.get_column(_ENTITY), ts_np, out, duplicates, order)


def _encode_chunk(schema: RowSchema, chunk: pl.DataFrame, ts: np.ndarray, order: tuple[int, int]) -> list[bytes]:
    n = chunk.height
    rec = np.zeros(n, dtype=schema.record)
    rec["ts"] = ts
    rec["sid"] = schema.id
    rec["minor"], rec["patch"] = order
    if schema.null_bytes:
        mask = np.zeros((n, len(schema.columns)), dtype=bool)
        for i, (name, _) in enumerate(schema.columns):
            s = chunk.get_column(name)
            if s.null_count():
                mask[:, i] = s.is_null().to_numpy()
        rec["nulls"] = np.packbits(mask, axis=1, bitorder="little")
    for name in schema.fixed:
        s = chunk.get_column(name)
        s = s.cast(pl.UInt8) if s.dtype == pl.Boolean else s.to_physical()
        rec[f"f{schema.index[name]}"] = s.fill_null(0).to_numpy()
    if not schema.var:
        return np.frombuffer(rec.tobytes(), dtype=f"V{schema.width}").tolist()

    # Variable-length part: copy each string column's bytes behind its row's head, all rows at once.
    datas, lens = [], []
    for name in schema.var:
        s = chunk.get_column(name)
        if s.dtype == pl.Binary:
            data = b"".join(v or b"" for v in s.to_list())
            length = s.bin.size().fill_null(0).to_numpy().astype(np.int64)
        else:
            s = s.cast(pl.String).fill_null("")
            data = s.str.join("").item().encode("utf-8") if n else b""
            length = s.str.len_bytes().to_numpy().astype(np.int64)
        rec[f"l{schema.index[name]}"] = length
        datas.append(np.frombuffer(data, dtype=np.uint8))
        lens.append(length)
    sizes = schema.width + np.sum(lens, axis=0)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint8)
    out[(offsets[:-1, None] + np.arange(schema.width)).ravel()] = rec.view(np.uint8)
    dest = offsets[:-1] + schema.width
    for data, length in zip(datas, lens):
        src = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(length, out=src[1:])
        if src[-1]:
            out[np.repeat(dest - src[:-1], length) + np.arange(src[-1])] = data
        dest = dest + length
    buf = out.tobytes()
    bounds = offsets.tolist()
    return [buf[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# ----------------------------------------------------------------------------------------------
# decoding (read side)


def _public_series(name: str, arr: np.ndarray) -> pl.Series:
    return pl.Series(name, arr)


def _public_frame(series: list[pl.Series]) -> pl.DataFrame:
    return pl.DataFrame(series)


def _builders():
    """Series/DataFrame constructors for the read hot path.

    polars' public constructors cost ~5 µs per numpy column and ~8 µs per frame in argument
    handling, more than the rest of a one-entity read. Its own internal constructors (the ones the
    public ones end in) take ~1 µs. They are private API, so they are used only if they exist and
    reproduce the public constructors exactly on a probe; otherwise the public ones are used.
    """
    try:
        from polars._plr import PyDataFrame, PySeries  # noqa: PLC0415 - optional private fast path

        ctors = {np.dtype(code): getattr(PySeries, f"new_{name}") for code, name in [
            ("f8", "f64"), ("f4", "f32"), ("i1", "i8"), ("i2", "i16"), ("i4", "i32"), ("i8", "i64"),
            ("u1", "u8"), ("u2", "u16"), ("u4", "u32"), ("u8", "u64"), ("?", "bool")]}
        wrap_series, wrap_frame = pl.Series._from_pyseries, pl.DataFrame._from_pydf

        def series(name: str, arr: np.ndarray) -> pl.Series:
            ctor = ctors.get(arr.dtype)
            if ctor is None or arr.ndim != 1 or not (arr.flags.c_contiguous and arr.flags.aligned):
                return pl.Series(name, arr)
            return wrap_series(ctor(name, arr, False))  # third argument: nan_to_null / strict, both off

        def frame(cols: list[pl.Series]) -> pl.DataFrame:
            return wrap_frame(PyDataFrame([c._s for c in cols]))

        probe = [np.array([1.5, np.nan]), np.array([1, -2], np.int32), np.array([True, False]), np.array([7, 8], np.uint64)]
        fast = frame([series(f"c{i}", a) for i, a in enumerate(probe)])
        slow = _public_frame([_public_series(f"c{i}", a) for i, a in enumerate(probe)])
        if fast.schema == slow.schema and fast.equals(slow) and fast.get_column("c0").is_nan().to_list() == [False, True]:
            return series, frame
    except Exception:  # noqa: BLE001 - any surprise means: use the public constructors
        pass
    return _public_series, _public_frame


_series, _frame_of = _builders()


class UnknownSchema(Exception):
    """A record names a schema id this process has not loaded: the store reloads its schemas and retries."""


def decode(values: Sequence[bytes | None], schemas: SchemaSet, columns: Sequence[str], prefix: str = "") -> pl.DataFrame:
    """One row per entry of `values` (None = no value: a row of nulls), columns `columns` (named with
    `prefix` in front) + feature_timestamp.

    Records of one schema and no string columns (the common case) decode with one np.frombuffer;
    otherwise rows are grouped by schema and string data gathered with numpy, never value by value.
    """
    n = len(values)
    columns = [c for c in columns if c != FEATURE_TIMESTAMP]
    if None not in values:
        found, positions = values, None
    else:
        positions = [i for i, v in enumerate(values) if v is not None]
        found = [values[i] for i in positions]
    m = len(found)
    if m == 0:
        return _empty(schemas, columns, n, prefix)
    frame = None
    first = found[0]
    sid = int.from_bytes(first[8:12], "little")
    schema = schemas.by_id.get(sid)
    if schema is None:
        raise UnknownSchema(sid)
    if not schema.var and len(first) == schema.width:
        buf = b"".join(found)
        if len(buf) == m * schema.width:
            rec = np.frombuffer(buf, dtype=schema.record)
            if m == 1 or (rec["sid"] == sid).all():
                frame = _frame(schema, schemas, columns, rec, None, None, prefix)
    if frame is None:
        frame = _decode_general(found, schemas, columns, prefix)
    if positions is None:
        return frame
    take = np.zeros(n, dtype=np.uint32)
    take[positions] = np.arange(m, dtype=np.uint32)
    absent = np.ones(n, dtype=bool)
    absent[positions] = False
    return frame[pl.Series(np.ma.masked_array(take, absent))]  # a null index gathers a row of nulls


def _decode_general(found: Sequence[bytes], schemas: SchemaSet, columns: Sequence[str], prefix: str) -> pl.DataFrame:
    m = len(found)
    lens = np.fromiter(map(len, found), dtype=np.int64, count=m)
    starts = np.zeros(m, dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    buf = np.frombuffer(b"".join(found), dtype=np.uint8)
    sids = buf[(starts[:, None] + np.arange(8, 12)).ravel()].view("<u4")
    groups = np.unique(sids)
    frames, order = [], []
    for sid in groups.tolist():
        schema = schemas.by_id.get(sid)
        if schema is None:
            raise UnknownSchema(sid)
        rows = np.flatnonzero(sids == sid) if len(groups) > 1 else np.arange(m)
        head = buf[(starts[rows, None] + np.arange(schema.width)).ravel()]
        rec = head.view(schema.record)
        frames.append(_frame(schema, schemas, columns, rec, buf, starts[rows], prefix))
        order.append(rows)
    if len(frames) == 1:
        return frames[0]
    frame = pl.concat(frames, how="vertical")
    inverse = np.empty(m, dtype=np.int64)
    inverse[np.concatenate(order)] = np.arange(m)
    return frame[pl.Series(inverse, dtype=pl.UInt32)]


def _frame(schema: RowSchema, schemas: SchemaSet, columns: Sequence[str], rec: np.ndarray,
           buf: np.ndarray | None, starts: np.ndarray | None, prefix: str = "") -> pl.DataFrame:
    """Build the output frame of records that all share `schema` (buf/starts locate string data, if any)."""
    m = len(rec)
    nulls = None
    if schema.null_bytes and rec["nulls"].any():
        nulls = np.unpackbits(rec["nulls"], axis=1, count=len(schema.columns), bitorder="little").view(bool)
    series = []
    for kind, name, dtype, i, field_name in schemas.plan(schema, columns):
        out = prefix + name
        if kind == "null":  # column added after this record was written, or a column only ever null
            series.append(pl.Series(out, [None] * m, dtype=dtype))
            continue
        mask = nulls[:, i] if nulls is not None and nulls[:, i].any() else None
        if kind == "var":
            series.append(_var_series(name, schema, i, rec, buf, starts, mask, out))
            continue
        arr = rec[field_name].copy()  # a copy is aligned and contiguous, as polars needs
        if kind == "bool":
            arr = arr.view(np.bool_)
        s = _series(out, arr) if mask is None else pl.Series(out, np.ma.masked_array(arr, mask))
        series.append(s.cast(dtype) if kind == "temporal" else s)
    series.append(_series(FEATURE_TIMESTAMP, rec["ts"].astype(np.int64)).cast(_TS_DTYPE))
    return _frame_of(series)


def _var_series(name: str, schema: RowSchema, i: int, rec: np.ndarray, buf: np.ndarray | None,
                starts: np.ndarray | None, mask: np.ndarray | None, out: str) -> pl.Series:
    m = len(rec)
    assert buf is not None and starts is not None, "records with string columns always take the general decode path"
    length = rec[f"l{i}"].astype(np.int64)
    before = np.zeros(m, dtype=np.int64)  # bytes of earlier string columns of the same record
    for other in schema.var:
        j = schema.index[other]
        if j == i:
            break
        before += rec[f"l{j}"]
    src = starts + schema.width + before
    offsets = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(length, out=offsets[1:])
    data = buf[np.repeat(src - offsets[:-1], length) + np.arange(offsets[-1])] if offsets[-1] else np.zeros(0, np.uint8)
    validity = None
    null_count = 0
    if mask is not None:
        validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
        null_count = int(mask.sum())
    arrow_type = pa.large_utf8() if isinstance(schema.dtypes[name], pl.String) else pa.large_binary()
    arr = pa.Array.from_buffers(arrow_type, m, [validity, pa.py_buffer(offsets), pa.py_buffer(data)], null_count=null_count)
    return pl.Series(out, arr)


def _empty(schemas: SchemaSet, columns: Sequence[str], n: int, prefix: str = "") -> pl.DataFrame:
    """n rows of nulls with the stored dtypes."""
    series = [pl.Series(prefix + c, [None] * n, dtype=schemas.dtypes[c]) for c in columns]
    series.append(pl.Series(FEATURE_TIMESTAMP, [None] * n, dtype=_TS_DTYPE))
    return pl.DataFrame(series)


def keys_of(read: OnlineRead, schemas: SchemaSet, where: str) -> list[str | None]:
    """Validate one OnlineRead against the stored key columns; its entities' canonical texts (None = null key)."""
    if not isinstance(read.keys, pl.DataFrame):
        raise StoreError(f"reading {label(read.feature, read.major)} from {where}: OnlineRead.keys must be a polars "
                         f"DataFrame, got {type(read.keys).__name__}")
    missing = [k for k in schemas.keys if k not in read.keys.columns]
    if missing:
        raise StoreError(f"reading {label(read.feature, read.major)} from {where}: the keys frame lacks key column(s) "
                         f"{missing}; this feature is keyed by {list(schemas.keys)}, the frame has {read.keys.columns}")
    _check_key_dtypes(read.keys, schemas.keys, f"reading {label(read.feature, read.major)} from {where}")
    return entity_texts(read.keys, schemas.keys)


def check_read(read: OnlineRead) -> None:
    """Reject malformed OnlineReads (wrong types) before touching the store."""
    if not isinstance(read, OnlineRead):
        raise StoreError(f"read() expects a list of OnlineRead, got an item of type {type(read).__name__}")
    check_name(read.feature, read.major)
    if isinstance(read.columns, str) or not all(isinstance(c, str) for c in read.columns):
        raise StoreError(f"reading {label(read.feature, read.major)}: columns must be a list of column names, got {read.columns!r}")
    if len(set(read.columns)) != len(read.columns):
        twice = sorted({c for c in read.columns if read.columns.count(c) > 1})
        raise StoreError(f"reading {label(read.feature, read.major)}: column(s) {twice} requested more than once")
