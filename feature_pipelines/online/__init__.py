"""Online stores: the newest feature values per entity, for serving.

`SQLiteOnlineStore` (embedded, the default), `RedisOnlineStore`, `PostgresOnlineStore` (also the
path to Databricks Lakebase) and `DynamoDBOnlineStore` implement the `OnlineStore` protocol:
newer-wins writes per (feature, major, entity) by (timestamp, version order), optional per-feature
TTL, and batch reads that return one row per requested entity in request order.
`DatabricksOnlineStore` configures Databricks online tables synced from the Unity Catalog feature
tables (reads go through a Databricks serving endpoint, not this process).

PostgreSQL (psycopg 3) and DynamoDB (boto3) are optional extras: their stores are imported on first
use, so this package imports without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from feature_pipelines.online.base import (
    FEATURE_TIMESTAMP,
    OnlineRead,
    OnlineStore,
    WriteResult,
)
from feature_pipelines.online.databricks import DatabricksOnlineStore
from feature_pipelines.online.redis import RedisOnlineStore
from feature_pipelines.online.sqlite import SQLiteOnlineStore

if TYPE_CHECKING:
    from feature_pipelines.online.dynamodb import DynamoDBOnlineStore
    from feature_pipelines.online.postgres import PostgresOnlineStore

_OPTIONAL = {  # class -> (module, the extra that installs its client library)
    "PostgresOnlineStore": ("feature_pipelines.online.postgres", "postgres"),
    "DynamoDBOnlineStore": ("feature_pipelines.online.dynamodb", "aws"),
}

__all__ = ["FEATURE_TIMESTAMP", "DatabricksOnlineStore", "DynamoDBOnlineStore", "OnlineRead", "OnlineStore",
           "PostgresOnlineStore", "RedisOnlineStore", "SQLiteOnlineStore", "WriteResult"]


def __getattr__(name: str):
    """Import an optional store on first use; without its client library, say which extra to install."""
    if name not in _OPTIONAL:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, extra = _OPTIONAL[name]
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ImportError(f"{name} needs {e.name or 'its client library'}, which is not installed: "
                          f"pip install 'feature_pipelines[{extra}]'") from e
