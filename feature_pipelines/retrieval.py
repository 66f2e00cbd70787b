"""FeatureStore: what training code uses to read features (point-in-time correct)."""

from __future__ import annotations

import polars as pl

from feature_pipelines.errors import DataError, DefinitionError
from feature_pipelines.keys import with_surrogate_key
from feature_pipelines.profiles import load_profile
from feature_pipelines.registry import Registry, load_registry
from feature_pipelines.spec.feature import FEATURE_TIMESTAMP, Feature, FeatureService


class FeatureStore:
    """Reads features from the offline store of a profile (default: $FEATURE_PIPELINES_PROFILE or 'dev')."""

    def __init__(self, profile: str | None = None, registry: Registry | None = None) -> None:
        self.profile = load_profile(profile)
        self.offline = self.profile.offline_store()
        self.registry = registry or load_registry()

    def _resolve(self, features: list) -> list[tuple[Feature, str | None, list[str] | None]]:
        """(feature, pinned version, columns) for names, 'name@1.2.0', 'name:column' and FeatureServices."""
        out: dict[tuple[str, str | None], list[str] | None] = {}
        items: list = []
        for item in features:
            items += item.references if isinstance(item, FeatureService) else [item.name if isinstance(item, Feature) else item]
        for ref in items:
            name, _, column = ref.partition(":")
            name, _, version = name.partition("@")
            key = (name, version or None)
            if column:
                if out.get(key, []) is not None:
                    out[key] = [*(out.get(key) or []), column]
            else:
                out[key] = None
        resolved = []
        for (name, version), columns in out.items():
            feature = self.registry.feature(name)
            for c in columns or []:
                if c not in feature.metric_columns:
                    raise DefinitionError(f"feature {name!r} has no column {c!r}; columns: {feature.metric_columns}")
            resolved.append((feature, version, columns))
        return resolved

    def get_training_data(self, features: list, entity_df, timestamp: str = "label_time") -> pl.DataFrame:
        """Each input row gets the newest feature row with feature_timestamp <= its timestamp (and within ttl).

        Input rows and order are kept; feature columns are named `<feature>__<column>`. Naive label
        timestamps are read as UTC, aware ones converted to UTC.
        """
        labels = entity_df if isinstance(entity_df, pl.DataFrame) else pl.from_pandas(entity_df)
        if timestamp not in labels.columns:
            raise DataError(f"entity_df has no timestamp column {timestamp!r}; columns: {labels.columns}")
        dtype = labels.schema[timestamp]
        if not isinstance(dtype, pl.Datetime):
            raise DataError(f"entity_df column {timestamp!r} has dtype {dtype}, expected Datetime")
        ts = pl.col(timestamp).cast(pl.Datetime("us", dtype.time_zone))
        ts = ts.dt.replace_time_zone("UTC") if dtype.time_zone is None else ts.dt.convert_time_zone("UTC")
        work = labels.with_row_index("__row").with_columns(ts.alias("__label_ts"))
        out = work
        for feature, version, columns in self._resolve(features):
            for key, cols in feature.derived_keys.items():
                if key not in work.columns:
                    work = with_surrogate_key(work, key, list(cols))
            missing = [k for k in feature.join_keys if k not in work.columns]
            if missing:
                raise DataError(f"entity_df lacks join key(s) {missing} of feature {feature.name!r}; columns: {labels.columns}")
            wanted = columns or feature.metric_columns or None
            rows = self.offline.scan(feature.name, version)
            names = rows.collect_schema().names()
            wanted = wanted or [c for c in names if c not in (*feature.join_keys, FEATURE_TIMESTAMP)]
            rows = rows.select(*feature.join_keys, FEATURE_TIMESTAMP, *wanted).sort(FEATURE_TIMESTAMP).collect()
            left = work.select("__row", "__label_ts", *feature.join_keys).sort("__label_ts")
            rows = rows.with_columns(pl.col(FEATURE_TIMESTAMP).alias("__ft"))
            joined = left.join_asof(rows, left_on="__label_ts", right_on=FEATURE_TIMESTAMP, by=feature.join_keys, strategy="backward", check_sortedness=False)
            if feature.ttl_us:
                stale = pl.col("__label_ts") - pl.col("__ft") > pl.duration(microseconds=feature.ttl_us)
                joined = joined.with_columns([pl.when(stale).then(None).otherwise(pl.col(c)).alias(c) for c in wanted])
            joined = joined.select("__row", *[pl.col(c).alias(f"{feature.name}__{c}") for c in wanted])
            out = out.join(joined, on="__row", how="left")
        return out.sort("__row").drop("__row", "__label_ts")


__all__ = ["FeatureStore"]
