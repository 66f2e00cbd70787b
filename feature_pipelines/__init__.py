"""feature_pipelines: a feature store that lives inside Dagster.

The public API: define entities, sources, features and services; read them with `FeatureStore`; add
them to a Dagster code location with `FeatureStoreComponent` (`dg`, `defs.yaml`) or `build_defs(...)`,
the stores being Dagster resources. Everything else is internal.

The Dagster-facing names are imported on first use, so training and serving code that only reads
features does not pay for importing Dagster.
"""

from feature_pipelines.errors import DataError, DefinitionError, FeaturePipelinesError, ProfileError, StoreError
from feature_pipelines.keys import surrogate_key
from feature_pipelines.spec.entity import Entity
from feature_pipelines.spec.feature import FEATURE_TIMESTAMP, Feature, FeatureService, feature
from feature_pipelines.spec.metrics import AGGREGATIONS, Latest, Rolling
from feature_pipelines.spec.source import Source
from feature_pipelines.spec.validators import (
    greater_than,
    greater_than_or_equal,
    in_range,
    is_in,
    less_than,
    less_than_or_equal,
    matches_regex,
    not_null,
    unique,
)
from feature_pipelines.registry import Registry, load_registry
from feature_pipelines.store import LocalStore
from feature_pipelines.retrieval import CoverageWarning, FeatureStore  # noqa: E402  (after the spec: it reads features)

_DAGSTER = {
    "FeatureStoreComponent": "feature_pipelines.orchestration.component",
    "build_defs": "feature_pipelines.orchestration",
    "FeatureStoreIOManager": "feature_pipelines.orchestration.io_manager",
    **{name: "feature_pipelines.orchestration.resources" for name in (
        "OfflineStoreResource", "OnlineStoreResource", "LocalStoreResource", "S3StoreResource", "GCSStoreResource",
        "UnityCatalogStoreResource", "SQLiteOnlineStoreResource", "RedisOnlineStoreResource", "PostgresOnlineStoreResource",
        "DynamoDBOnlineStoreResource", "DatabricksOnlineStoreResource")},
}


def __getattr__(name: str):
    if name in _DAGSTER:
        import importlib

        value = getattr(importlib.import_module(_DAGSTER[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'feature_pipelines' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_DAGSTER))


__all__ = [
    *_DAGSTER,
    "AGGREGATIONS",
    "CoverageWarning",
    "FEATURE_TIMESTAMP",
    "DataError",
    "DefinitionError",
    "Entity",
    "Feature",
    "FeaturePipelinesError",
    "FeatureService",
    "FeatureStore",
    "Latest",
    "LocalStore",
    "ProfileError",
    "Registry",
    "load_registry",
    "Rolling",
    "Source",
    "StoreError",
    "feature",
    "greater_than",
    "greater_than_or_equal",
    "in_range",
    "is_in",
    "less_than",
    "less_than_or_equal",
    "matches_regex",
    "not_null",
    "surrogate_key",
    "unique",
]
