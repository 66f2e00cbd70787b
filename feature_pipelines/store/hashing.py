"""Content hashes of feature frames: a hash of the logical values, never of how the buffers happen to look.

Two frames that compare equal (same schema, same values, nulls in the same places) hash equal, however
they were built. Hashing Arrow buffers as they are is not enough: the bytes under a null slot are
whatever a kernel left there (0.0 in a slice of a backfill, NaN when the partition is computed alone),
string buffers depend on views and slicing, and a bitmap's trailing bits on offsets. Re-materializing
an identical partition would then report a spurious PATCH.

The canonical encoding, fed to one streaming xxh3-128 (fast, and the same on every machine and run):

* a header: format tag, row count (int64), and the schema as JSON ``[[name, str(dtype)], ...]``;
* per column, in order: ``V`` when it has no nulls, else ``N`` and one byte per row (1 = not null);
  then its values with every null slot set to a fixed filler (0, False, empty string):
  - booleans one byte per row; integers and temporal types as little-endian physical integers;
  - floats as little-endian IEEE bytes, every NaN replaced by the one canonical quiet NaN;
  - strings and binaries as their byte lengths (int64) followed by the concatenated bytes;
  - categoricals, enums and decimals as their text; lists (and arrays) as lengths followed by the
    concatenated inner values (recursively); structs field by field, masked by the struct's nulls.

Values are hashed bit for bit otherwise: -0.0 and 0.0 differ, as they do in the stored file.
This encoding (v2) replaced v1, an Arrow IPC stream of the buffers, so a hash stored before it differs
from today's for the same data: the first rewrite of such a partition reports one PATCH, after which
identical data is "unchanged" again.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

HASH_FORMAT = 2
"""The encoding `content_hash` implements; partition entries committed with it record `"hash_format": 2` (entries
without one were committed by an older library: v1, or v2 before the field existed)."""
_FORMAT = b"feature_pipelines content hash v2\0"
_NO_NULLS, _NULLS = b"V", b"N"


def content_hash(frame: pl.DataFrame) -> str:
    """Hex xxh3-128 of the frame's schema and logical values (see the module docstring for the encoding)."""
    h = xxhash.xxh3_128()
    h.update(_FORMAT)
    h.update(np.int64(frame.height).astype("<i8").tobytes())
    schema = frame.schema
    h.update(json.dumps([[name, str(dtype)] for name, dtype in schema.items()]).encode())
    # One export to Arrow, then numpy views of its buffers: per-column calls into polars would cost
    # more than hashing a whole partition.
    flat = {name: _flat(dtype) for name, dtype in schema.items()}
    names = [name for name, ok in flat.items() if ok]
    table = (frame if len(names) == frame.width else frame.select(names)).to_arrow(compat_level=pl.CompatLevel.oldest())
    for name, ok in flat.items():
        if ok:
            _feed_arrow(h, table.column(name))
        else:
            _feed(h, frame.get_column(name))
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _flat(dtype: pl.DataType) -> bool:
    """Columns whose Arrow form is a primitive (at most 64 bits), boolean, null or large string/binary array."""
    if isinstance(dtype, pl.Decimal) or dtype in (pl.Int128, pl.UInt128):
        return False
    return dtype.is_numeric() or dtype.is_temporal() or dtype in (pl.Boolean, pl.String, pl.Binary, pl.Null)


def _bits(buffer: pa.Buffer, offset: int, n: int) -> np.ndarray:
    """Bits offset .. offset + n of an Arrow bitmap (least significant bit first) as 0/1 bytes."""
    raw = np.frombuffer(buffer, dtype=np.uint8)[offset // 8 : (offset + n + 7) // 8]
    return np.unpackbits(raw, bitorder="little")[offset % 8 : offset % 8 + n]


def _feed_arrow(h, column: pa.ChunkedArray) -> None:
    """Validity then canonical values of a flat Arrow column, chunk by chunk (chunking does not change the bytes)."""
    chunks = [c for c in column.chunks if len(c)]
    kind = column.type
    if column.null_count:
        h.update(_NULLS)
        valid = [np.zeros(len(c), np.uint8) if pa.types.is_null(kind) else
                 _bits(c.buffers()[0], c.offset, len(c)) if c.null_count else np.ones(len(c), np.uint8) for c in chunks]
        for v in valid:
            h.update(v.tobytes())
    else:
        h.update(_NO_NULLS)
        valid = [None] * len(chunks)
    if pa.types.is_null(kind):
        return
    if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind):
        spans = []
        for chunk in chunks:
            if chunk.null_count:  # null slots may hold bytes: make them empty
                chunk = pc.fill_null(chunk, pa.scalar("" if pa.types.is_large_string(kind) else b"", kind))
            _, offsets, data = chunk.buffers()
            spans.append((np.frombuffer(offsets, dtype="<i8")[chunk.offset : chunk.offset + len(chunk) + 1], data))
        for offsets, _ in spans:
            h.update(np.diff(offsets).astype("<i8").tobytes())
        for offsets, data in spans:
            h.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])
        return
    for chunk, v in zip(chunks, valid):
        data = chunk.buffers()[1]
        if pa.types.is_boolean(kind):
            values = _bits(data, chunk.offset, len(chunk))
        else:
            width = kind.bit_width // 8
            code = f"<f{width}" if pa.types.is_floating(kind) else f"<u{width}"
            values = np.frombuffer(data, dtype=code, count=len(chunk), offset=chunk.offset * width)
            if code[1] == "f":
                nan = np.isnan(values)
                if nan.any():
                    values = np.where(nan, np.nan, values).astype(code)
        if v is not None:
            values = np.where(v.view(bool), values, np.zeros(1, values.dtype))
        h.update(np.ascontiguousarray(values))


def _feed(h, s: pl.Series) -> None:
    """Validity then values of any other column (nested, decimal, categorical...), recursively; the slower path."""
    dtype = s.dtype
    if isinstance(dtype, (pl.Categorical, pl.Enum, pl.Decimal)) or dtype in (pl.Int128, pl.UInt128):
        s = s.cast(pl.String)
    if _flat(s.dtype):
        _feed_arrow(h, pa.chunked_array([s.to_arrow(compat_level=pl.CompatLevel.oldest())]))
        return
    if s.null_count():
        h.update(_NULLS)
        h.update(s.is_not_null().cast(pl.UInt8).to_numpy().tobytes())
    else:
        h.update(_NO_NULLS)
    if isinstance(dtype, (pl.List, pl.Array)):
        lists = s if isinstance(dtype, pl.List) else s.cast(pl.List(dtype.inner))
        h.update(lists.list.len().fill_null(0).cast(pl.Int64).to_numpy().astype("<i8").tobytes())
        _feed(h, lists.explode(empty_as_null=False, keep_nulls=False))
    elif isinstance(dtype, pl.Struct):
        valid = s.is_not_null()
        for field in dtype.fields:
            values = s.struct.field(field.name)
            _feed(h, values.zip_with(valid, pl.Series(values.name, [None] * len(values), dtype=values.dtype)))
    else:  # objects, or a type polars adds later: its Python values, still logical and deterministic
        h.update(repr(s.to_list()).encode())
