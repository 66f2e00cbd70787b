"""Online stores: the newest feature values per entity, for serving.

`SQLiteOnlineStore` (embedded, the default) and `RedisOnlineStore` (production) implement the
`OnlineStore` protocol: newer-wins writes per (feature, major, entity), optional per-feature TTL,
and batch reads that return one row per requested entity in request order. `DatabricksOnlineStore`
configures Databricks online tables synced from the Unity Catalog feature tables (reads go through a
Databricks serving endpoint, not this process).
"""

from feature_pipelines.online.base import FEATURE_TIMESTAMP, OnlineRead, OnlineStore, WriteResult
from feature_pipelines.online.databricks import DatabricksOnlineStore
from feature_pipelines.online.redis import RedisOnlineStore
from feature_pipelines.online.sqlite import SQLiteOnlineStore

__all__ = ["FEATURE_TIMESTAMP", "DatabricksOnlineStore", "OnlineRead", "OnlineStore", "RedisOnlineStore", "SQLiteOnlineStore", "WriteResult"]
