"""What the Dagster UI shows of where a feature comes from: its source as an observable asset, column
descriptions and lineage, and a freshness policy."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from feature_pipelines.orchestration.names import Names
from feature_pipelines.spec.durations import duration_label
from feature_pipelines.spec.feature import FEATURE_TIMESTAMP, Feature
from feature_pipelines.spec.source import Source

_AGG = {"count": "count of non-missing {} values", "sum": "sum of {}", "mean": "mean of {}", "std": "sample standard deviation of {}",
        "var": "sample variance of {}", "min": "minimum of {}", "max": "maximum of {}", "median": "median of {}"}


def source_key(source: Source, names: Names) -> dg.AssetKey:
    """`sources/<name>` (under the prefix, if any)."""
    return dg.AssetKey([*([names.prefix] if names.prefix else []), "sources", source.asset_name])


def build_source_asset(source: Source, names: Names) -> dg.AssetsDefinition:
    """An observable source asset whose data version is the source's content fingerprint, so the UI shows when the
    raw data changed and automation can react to it. Observing reads file metadata and hashes contents (cached per
    size and mtime), never the rows."""
    key = source_key(source, names)

    @dg.observable_source_asset(
        key=key,
        description=f"Raw events at {source.path} ({source.format}); event time in `{source.timestamp}`. Observing it records "
                    "a data version: a digest of the files' content (or the Delta log version).",
        group_name="sources",
        metadata={"path": source.path, "format": source.format, "timestamp": source.timestamp},
        kinds={source.format},
    )
    def _observe(context) -> dg.DataVersion:
        fingerprint = source.fingerprint()
        if fingerprint is None:
            # Remote sources without a content digest (s3://): no version means "unknown", not "unchanged".
            context.log.info(f"{source.path}: no content fingerprint for this kind of location")
            return dg.DataVersion("unknown")
        return dg.DataVersion(fingerprint)

    return _observe


def column_descriptions(feature: Feature) -> dict[str, str]:
    """A sentence per output column, as a reader of the asset page needs it."""
    out = {key: f"entity key ({', '.join(e.name for e in feature.entities if key in e.join_keys)})" for key in feature.join_keys}
    for key, columns in feature.derived_keys.items():
        out[key] += f": xxHash64 surrogate of {', '.join(columns)}"
    out[FEATURE_TIMESTAMP] = ("end of the partition interval (UTC); the row summarises events before it, so it is knowable at it"
                              if feature.kind != "rows" else "the event's own time (UTC)")
    for metric in feature.rolling:
        for column, agg, window, name in metric.outputs():
            out[name] = f"{_AGG[agg].format(column)} over [t - {duration_label(window)}, t), t = feature_timestamp"
    for metric in feature.latest:
        for column, name in metric.outputs():
            out[name] = f"{column} of the newest event before t"
    if feature.latest:
        out["latest_event_timestamp"] = "time of the newest event before t"
    return out


def column_schema(feature: Feature, dtypes: dict[str, str] | None = None) -> dg.TableSchema:
    """The output columns with their descriptions (and dtypes once known)."""
    described = column_descriptions(feature)
    names = dtypes.keys() if dtypes else described.keys()
    return dg.TableSchema(columns=[dg.TableColumn(n, (dtypes or {}).get(n, "?"), description=described.get(n)) for n in names])


def column_lineage(feature: Feature, upstream: dg.AssetKey) -> dg.TableColumnLineage:
    """Each output column from the source column(s) it is computed from."""
    deps: dict[str, list[str]] = {}
    for key in feature.join_keys:
        deps[key] = list(feature.derived_keys.get(key, (key,)))
    deps[FEATURE_TIMESTAMP] = [feature.timestamp]
    for metric in feature.rolling:
        for column, _, _, name in metric.outputs():
            deps[name] = [column, feature.timestamp]
    for metric in feature.latest:
        for column, name in metric.outputs():
            deps[name] = [column, feature.timestamp]
    if feature.latest:
        deps["latest_event_timestamp"] = [feature.timestamp]
    return dg.TableColumnLineage(deps_by_column={
        name: [dg.TableColumnDep(asset_key=upstream, column_name=c) for c in columns] for name, columns in deps.items()})


def freshness_policy(feature: Feature) -> dg.FreshnessPolicy:
    """Fail when the newest materialization is older than the feature's freshness (default two intervals), warn at 3/4 of it."""
    fail = timedelta(microseconds=feature.freshness_us)
    return dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=fail * 3 / 4)
