"""The IO manager that keeps feature partitions in the versioned offline store.

Dagster's UPathIOManager refuses ranged outputs, so this one handles `asset_partition_keys` itself:
a single-run backfill hands it {partition_key: frame}; every partition gets its own immutable file
and its own materialization event with version metadata, and the run's partitions are committed
together (one version change per run, not one per partition).
"""

from __future__ import annotations

import functools

import dagster as dg
import polars as pl

from feature_pipelines.errors import StoreError
from feature_pipelines.orchestration.resources import OfflineStoreResource
from feature_pipelines.store.versioned import CommitResult, VersionedStore


@functools.lru_cache(maxsize=64)
def _schema_of(columns: tuple[tuple[str, str], ...], described: tuple[tuple[str, str], ...]) -> dg.TableSchema:
    descriptions = dict(described)
    return dg.TableSchema(columns=[dg.TableColumn(name, dtype, description=descriptions.get(name)) for name, dtype in columns])


def _table_schema(frame: pl.DataFrame, declared: dg.TableSchema | None = None) -> dg.TableSchema:
    """The frame's schema as Dagster metadata, with the column descriptions the asset declares (built once per
    distinct schema: every partition of a run shares it)."""
    described = tuple((c.name, c.description) for c in declared.columns if c.description) if declared else ()
    return _schema_of(tuple((name, str(dtype)) for name, dtype in frame.schema.items()), described)


def version_history(store: VersionedStore, feature: str, limit: int = 10) -> dg.TableMetadataValue:
    """The feature's newest versions: version, bump, reason, partitions, rows, created and updated (UTC)."""
    schema = dg.TableSchema(columns=[dg.TableColumn(c, t) for c, t in (
        ("version", "string"), ("bump", "string"), ("reason", "string"), ("partitions", "int"), ("rows", "int"),
        ("created_at", "string"), ("updated_at", "string"))])
    records = []
    for version in sorted(store.versions(feature), key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)[:limit]:
        m = store.manifest(feature, version)
        change = m.get("change") or {}
        records.append(dg.TableRecord({"version": version, "bump": str(change.get("bump", "")), "reason": str(change.get("reason", "")),
                                       "partitions": len(m["partitions"]), "rows": int(m["row_count"]),
                                       "created_at": str(m.get("created_at", "")), "updated_at": str(m.get("updated_at", ""))}))
    return dg.MetadataValue.table(records, schema)


def commit_metadata(result: CommitResult, frame: pl.DataFrame, store: VersionedStore, declared: dg.TableSchema | None = None) -> dict:
    """What the UI shows on a feature partition's materialization (no secrets: URIs carry no credentials)."""
    return {
        "version": result.version,
        "bump": result.bump,
        "bump_reason": result.reason,
        "content_hash": result.content_hash,
        "schema_hash": result.schema_hash,
        "config_hash": result.config_hash,
        "partition": result.partition,
        "store": store.description,
        "dagster/row_count": result.rows,
        "dagster/column_schema": _table_schema(frame, declared),
        "dagster/uri": dg.MetadataValue.path(result.uri),
    }


class FeatureStoreIOManager(dg.ConfigurableIOManager):
    """Reads and writes feature partitions in the offline store of its `offline_store` resource (built once)."""

    offline_store: OfflineStoreResource

    def store(self) -> VersionedStore:
        return self.offline_store.store()

    @staticmethod
    def _feature(context: dg.InputContext | dg.OutputContext) -> str:
        """The feature's name in the store: the asset key's last part (a prefix is the key's first parts)."""
        return context.asset_key.path[-1]

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        feature = self._feature(context)
        meta = context.definition_metadata or {}
        keys = list(meta.get("feature_pipelines/keys") or [])
        timestamp = meta.get("feature_pipelines/timestamp", "feature_timestamp")
        config_hash = meta.get("feature_pipelines/config_hash", "")
        partition_keys = list(context.asset_partition_keys) if context.has_asset_partitions else ["__all__"]
        frames = obj if isinstance(obj, dict) else {partition_keys[0]: obj} if len(partition_keys) == 1 else None
        if frames is None or set(frames) != set(partition_keys):
            raise StoreError(
                f"asset {feature!r}: expected one frame per partition {partition_keys[:3]}…, got "
                f"{type(obj).__name__}{' with keys ' + str(list(obj)[:3]) if isinstance(obj, dict) else ''}"
            )
        store = self.store()
        fingerprint = (context.output_metadata or {}).get("source_fingerprint")
        fingerprint = getattr(fingerprint, "value", fingerprint)
        lineage = {"source_fingerprint": fingerprint} if fingerprint and fingerprint != "unknown" else None
        info = {"granularity": meta.get("feature_pipelines/granularity"), "ttl": meta.get("feature_pipelines/ttl")}
        results = store.write_partitions(feature, {k: frames[k] for k in partition_keys}, keys=keys, timestamp=timestamp,
                                         config_hash=config_hash, info=info, lineage=lineage)
        declared = meta.get("dagster/column_schema")
        history = version_history(store, feature) if results else None
        for i, result in enumerate(results):
            key, frame = result.partition, frames[result.partition]
            metadata = commit_metadata(result, frame, store, declared if isinstance(declared, dg.TableSchema) else None)
            if i == len(results) - 1:
                metadata["version_history"] = history  # on the run's newest materialization: what the asset page shows
            if len(partition_keys) == 1:
                context.add_output_metadata(metadata)
            else:
                # OutputContext has no public per-partition metadata call; the step context does.
                context.step_context.add_asset_metadata(metadata, asset_key=context.asset_key, partition_key=key)

    def load_input(self, context: dg.InputContext) -> pl.DataFrame:
        """One polars DataFrame of the requested partitions (all materialized ones for an unpartitioned reader).

        Input metadata may pin `version` ('1.2.0') and select `columns`.
        """
        feature = self._feature(context)
        meta = context.definition_metadata or {}
        store = self.store()
        manifest = store.manifest(feature, meta.get("version"))
        available = manifest["partitions"]
        if context.has_asset_partitions:
            wanted = list(context.asset_partition_keys)
            partitions = [k for k in wanted if k in available]
            if len(wanted) == 1 and not partitions:
                store.partition_files(feature, manifest["version"], wanted)  # raises, listing what exists
        else:
            partitions = sorted(available)
        context.log.info(f"loading {feature} version {manifest['version']}: {len(partitions)} partition(s)")
        return store.read(feature, manifest["version"], partitions, meta.get("columns"))
