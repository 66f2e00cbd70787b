"""Surrogate entity keys computed from identifying (PII) columns.

The key must be identical on every machine and every library version, so it is NOT polars'
`Expr.hash` (whose output may change between releases). Definition, version 1:

* each value becomes canonical text: strings as-is, integers in decimal, floats by Python `repr`,
  booleans as 'true'/'false' (-0.0 is written as 0.0, the same number), dates as ISO 'YYYY-MM-DD', datetimes as ISO-8601 in UTC;
* each field is encoded as one tag byte (0x00 null, 0x01 value) followed, for values, by the
  8-byte big-endian length of the UTF-8 text and the text itself, so neither nulls nor any
  separator character can make two different tuples encode alike;
* the key is xxHash64 (seed 0) of b'fp-key-v1' followed by the fields in declared order,
  written as 16 lowercase hex digits.
"""

from __future__ import annotations

import struct
from datetime import date, datetime, timezone

import polars as pl
import xxhash

from feature_pipelines.errors import DataError

_PREFIX = b"fp-key-v1"


def _canonical(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value + 0.0)  # -0.0 + 0.0 == 0.0: polars groups them as one value, so must the key
    return str(value)


def surrogate_key(values: tuple | list) -> str:
    """The surrogate key of one tuple of identifying values (None for null)."""
    h = xxhash.xxh64(_PREFIX)
    for value in values:
        if value is None:
            h.update(b"\x00")
        else:
            text = _canonical(value).encode("utf-8")
            h.update(b"\x01" + struct.pack(">Q", len(text)) + text)
    return h.hexdigest()


def with_surrogate_key(frame: pl.DataFrame, key: str, columns: list[str]) -> pl.DataFrame:
    """Add column `key` computed from `columns`; hashes each distinct tuple once, so cost scales with entities, not rows."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"cannot compute key {key!r}: column(s) {missing} are missing; "
            f"expected {columns}, found {frame.columns}"
        )
    distinct = frame.select(columns).unique(maintain_order=True)
    all_null = distinct.filter(pl.all_horizontal(pl.col(c).is_null() for c in columns))
    if all_null.height and frame.height:
        raise DataError(f"cannot compute key {key!r}: some rows have every identifying column {columns} null")
    keys = [surrogate_key(row) for row in distinct.iter_rows()]
    mapping = distinct.with_columns(pl.Series(key, keys, dtype=pl.String))
    return frame.join(mapping, on=columns, how="left", nulls_equal=True, maintain_order="left")
