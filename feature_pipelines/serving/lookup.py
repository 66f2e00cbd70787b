"""The blocking half of serving: parse and check a lookup request, read the online store, probe it for /ready.

Everything here runs on a worker's fixed thread pool (never on the event loop), so parsing a large
body, a store read and the JSON answer never stall other connections, and the store sees at most
`threads` callers per worker: one SQLite connection (or Redis read connection) per pool thread.

A request is checked completely before the store is touched: every bad input is a 400 (413 for too
many entities) naming what was wrong, never a 503 from the store tripping over a null or a float key.
"""

from __future__ import annotations

import json
import logging
import math

import polars as pl

from feature_pipelines.errors import (
    DataError,
    DefinitionError,
    FeaturePipelinesError,
    StoreError,
)

log = logging.getLogger("feature_pipelines.serving")

MAX_FEATURES = 256
"""Most feature references (names, 'name:column', services) in one request."""

MAX_PLANS = 1024
"""FeatureStore caches one read plan per distinct `features` list; past this many the cache is dropped (see `trim_plans`)."""

_INT64 = (-(2**63), 2**63 - 1)
_KINDS = {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}
_DTYPES = {str: pl.String, int: pl.Int64, bool: pl.Boolean, float: pl.Float64}


class Reject(Exception):
    """A request answered with `status` and {"error": message}."""

    def __init__(self, status: int, message: str, *, store_error: bool = False, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.store_error = store_error
        self.close = close


class _NotJSON(ValueError):
    pass


def _no_constant(name: str):
    raise _NotJSON(f"{name} is not JSON (send null for a missing value)")


def parse_lookup(body: bytes, max_batch: int, key_names: frozenset[str]) -> tuple[list[str], pl.DataFrame]:
    """The features and the entity frame of a POST /online-features body, or Reject(400/413) saying what is wrong.

    Entities are objects of scalar values with the same keys in every object; a key's values share one
    type (integers and numbers may mix); join keys (`key_names`) must be strings, integers or booleans.
    null, lists, objects, NaN/Infinity and integers beyond 64 bits are refused.
    """
    if not body:
        raise Reject(400, 'empty body; send JSON {"features": [...], "entities": [{...}, ...]}')
    try:
        doc = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise Reject(400, "body is not valid JSON: nested too deeply") from None
    except _NotJSON as err:
        raise Reject(400, f"body is not valid JSON: {err}") from None
    except (ValueError, UnicodeDecodeError) as err:  # json.JSONDecodeError is a ValueError
        raise Reject(400, f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise Reject(400, "body must be a JSON object with 'features' and 'entities'")
    features, entities = doc.get("features"), doc.get("entities")
    if not isinstance(features, list) or not features or not all(isinstance(f, str) and f for f in features):
        raise Reject(400, "'features' must be a non-empty list of feature names (or 'name:column', or service names)")
    if len(features) > MAX_FEATURES:
        raise Reject(400, f"{len(features)} feature references in one request; the limit is {MAX_FEATURES}")
    if not isinstance(entities, list) or not entities or not all(type(e) is dict for e in entities):
        raise Reject(400, "'entities' must be a non-empty list of objects holding join keys, e.g. [{\"customer_id\": \"c1\"}]")
    if len(entities) > max_batch:
        raise Reject(413, f"{len(entities)} entities in one request; the limit is {max_batch}")
    return features, _entity_frame(entities, key_names)


def _entity_frame(entities: list[dict], key_names: frozenset[str]) -> pl.DataFrame:
    first = entities[0]
    if not first:
        raise Reject(400, "entity 0 is an empty object; each entity holds its join keys, e.g. {\"customer_id\": \"c1\"}")
    width = len(first)
    if any(len(e) != width for e in entities):
        i = next(i for i, e in enumerate(entities) if len(e) != width)
        raise Reject(400, f"entity {i} has keys {sorted(entities[i])} but entity 0 has {sorted(first)}; every entity needs the same keys")
    columns: dict[str, pl.Series] = {}
    for name in first:
        try:
            values = [e[name] for e in entities]
        except KeyError:
            i = next(i for i, e in enumerate(entities) if name not in e)
            raise Reject(400, f"entity {i} has keys {sorted(entities[i])} but entity 0 has {sorted(first)}; every entity needs the same keys") from None
        types = set(map(type, values))
        if len(types) == 1:
            kind = next(iter(types))
        elif types == {int, float}:
            kind = float
        else:
            kind = None
        if kind not in _DTYPES or (kind is float and name in key_names):
            raise Reject(400, _bad_value(name, values, key_names))
        if kind is int and (min(values) < _INT64[0] or max(values) > _INT64[1]):
            raise Reject(400, f"{name!r}: integers must fit in 64 bits")
        if kind is float and not all(map(math.isfinite, values)):  # only reachable through huge literals like 1e999
            raise Reject(400, f"{name!r}: numbers must be finite")
        columns[name] = pl.Series(name, values, dtype=_DTYPES[kind])
    return pl.DataFrame(columns)


def _bad_value(name: str, values: list, key_names: frozenset[str]) -> str:
    """What is wrong with a column of entity values: a null, a list/object, a float join key, or mixed types."""
    wanted = "a string, integer or boolean" if name in key_names else "a string, number or boolean"
    for i, v in enumerate(values):
        if v is None:
            return f"entity {i}: {name!r} is null; each value must be {wanted}"
        if type(v) not in _DTYPES:
            return f"entity {i}: {name!r} is a JSON {'list' if isinstance(v, list) else 'object'}; each value must be {wanted}"
        if type(v) is float and name in key_names:
            return f"entity {i}: join key {name!r} is the number {v!r}; join keys must be {wanted}"
    kinds = {}
    for i, v in enumerate(values):
        kinds.setdefault(type(v), i)
    (a, i), (b, j) = sorted(kinds.items(), key=lambda kv: kv[1])[:2]
    return f"entity {j}: {name!r} is {_KINDS[b]} but entity {i} has {_KINDS[a]}; one key's values must share one type"


def lookup(store, features: list[str], frame: pl.DataFrame) -> bytes:
    """The JSON answer {"rows": [...]} for one checked request; Reject for what the store or the definitions refuse."""
    try:
        answer = store.get_online_features(features, frame)
    except DefinitionError as err:
        raise Reject(404 if "unknown feature" in str(err) else 400, str(err)) from None
    except DataError as err:
        raise Reject(400, str(err)) from None
    except StoreError as err:
        raise Reject(503, str(err), store_error=True) from None
    except FeaturePipelinesError as err:
        raise Reject(400, str(err)) from None
    trim_plans(store)
    return b'{"rows":' + answer.write_json().encode() + b"}"


def trim_plans(store) -> None:
    """Keep FeatureStore's per-request-shape plan cache bounded: clients choose the shapes, so it must not grow forever.

    (FeatureStore._plans is private; an LRU bound inside retrieval.py would be the proper home for this.)
    """
    plans = getattr(store, "_plans", None)
    if isinstance(plans, dict) and len(plans) > MAX_PLANS:
        plans.clear()


READY_FEATURE = "__ready__"


def probe(online) -> None:
    """Touch the online store for /ready; raises StoreError (or anything else) when it cannot be used.

    A store with a `ping()` uses it. Otherwise one real read of a feature nobody publishes: every store
    must ask its server (or file) for the feature's schema, then answer "never written" — which proves
    the store answered. Any other error means the store cannot serve.
    """
    ping = getattr(online, "ping", None)
    if callable(ping):
        ping()
        return
    from feature_pipelines.online.base import OnlineRead

    try:
        online.read([OnlineRead(READY_FEATURE, 0, pl.DataFrame({READY_FEATURE: ["probe"]}), [])])
    except StoreError as err:
        if "never written" not in str(err):
            raise


def features_listing(registry) -> dict:
    """GET /features: the online features with their entities, join keys, columns and TTL, and the services."""
    listing = [
        {"name": f.name, "entities": [e.name for e in f.entities], "join_keys": f.join_keys,
         "columns": f.metric_columns, "ttl_seconds": f.ttl_us / 1e6 if f.ttl_us else None}
        for f in sorted(registry.features.values(), key=lambda f: f.name) if f.online
    ]
    return {"features": listing, "services": sorted(registry.services)}


def join_key_names(registry) -> frozenset[str]:
    """Every join key of an online feature: values under these names must be strings, integers or booleans."""
    return frozenset(k for f in registry.features.values() if f.online for k in f.join_keys)


__all__ = ["MAX_FEATURES", "Reject", "features_listing", "join_key_names", "lookup", "parse_lookup", "probe"]
