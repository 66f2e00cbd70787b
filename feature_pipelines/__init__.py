"""feature_pipelines: a feature store that lives inside Dagster.

The public API: define entities, sources, features and services here; everything else is internal.
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
from feature_pipelines.store import LocalStore
from feature_pipelines.retrieval import FeatureStore  # noqa: E402  (after the spec: it reads features)

__all__ = [
    "AGGREGATIONS",
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
