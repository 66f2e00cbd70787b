"""Publishing fresh partitions online: a sensor on materializations launches one publish run per partition.

The sensor is a plain `@sensor` with a cursor per feature on materialization storage ids (an
`@asset_sensor` would drop all but the newest partition when several land between ticks). It only
lists new materializations and emits `RunRequest`s (run_key = feature + storage id, so a
re-evaluated tick never publishes twice); the publish run does the work: read exactly that
partition at the version recorded in the materialization's metadata, keep the newest row per
entity, write it newer-wins. Blocking checks run before a partition is written, so a partition
whose check failed has no materialization and is never published.

(No `from __future__ import annotations` here: Dagster reads the op's config annotation at runtime.)
"""


import json
import time
from dataclasses import dataclass

import dagster as dg

from feature_pipelines.errors import FeaturePipelinesError
from feature_pipelines.orchestration.names import Names
from feature_pipelines.registry import Registry
from feature_pipelines.spec.feature import FEATURE_TIMESTAMP, Feature

PUBLISH_JOB = Names().publish_job
SENSOR = Names().sensor
PAGE = 200  # materializations listed per feature per tick; the rest wait for the next tick


@dataclass(frozen=True)
class PublishResult:
    feature: str
    partitions: list[str]
    version: str
    rows: int
    written: int
    skipped: int
    store: str
    seconds: float


def publish_partitions(feature: Feature, partitions: list[str] | None, version: str | None, offline, online_resource) -> PublishResult:
    """Write the newest row per entity of stored partitions (None = all) of `offline` (a VersionedStore) to the
    online store of `online_resource` (an OnlineStoreResource), newer-wins."""
    t0 = time.perf_counter()
    manifest = offline.manifest(feature.name, version)
    keys, ts = list(manifest["keys"]), manifest["timestamp_column"]
    partitions = sorted(manifest["partitions"]) if partitions is None else partitions
    frame = offline.read(feature.name, manifest["version"], partitions)
    # Over a range (or for row-level features) an entity has several rows: serving wants the newest.
    frame = frame.sort(ts, maintain_order=True).unique(subset=keys, keep="last", maintain_order=True)
    if ts != FEATURE_TIMESTAMP:
        frame = frame.rename({ts: FEATURE_TIMESTAMP})
    major = int(manifest["version"].split(".")[0])
    ttl = feature.ttl_us / 1e6 if feature.ttl_us else None
    online = online_resource.open()
    try:
        result = online.write(feature.name, major, keys, frame, timestamp=FEATURE_TIMESTAMP, ttl_seconds=ttl)
    finally:
        online.close()
    return PublishResult(feature.name, partitions, manifest["version"], frame.height, result.written, result.skipped,
                         online.description, time.perf_counter() - t0)


class PublishConfig(dg.Config):
    feature: str
    partition: str
    version: str = ""  # '' = the newest version
    storage_id: int = 0  # the materialization that triggered this run (0 = by hand)


def build_publish_job(registry: Registry, names: Names) -> dg.JobDefinition:
    """A job with one op that publishes one partition of one feature (config: feature, partition, version)."""

    @dg.op(name="publish_partition", tags={"kind": "online"}, required_resource_keys={names.offline_store, names.online_store})
    def _publish(context: dg.OpExecutionContext, config: PublishConfig) -> dg.Output[None]:
        feature = registry.feature(config.feature)
        offline = getattr(context.resources, names.offline_store).store()
        online = getattr(context.resources, names.online_store)
        try:
            result = publish_partitions(feature, [config.partition], config.version or None, offline, online)
        except FeaturePipelinesError as err:
            raise dg.Failure(description=f"publishing {config.feature} {config.partition} failed: {err}") from err
        metadata = {
            "feature": result.feature,
            "partition": config.partition,
            "version": result.version,
            "rows": result.rows,
            "rows_written": result.written,
            "rows_skipped_older": result.skipped,
            "online_store": result.store,
            "seconds": round(result.seconds, 4),
            "materialization_storage_id": config.storage_id,
        }
        context.log.info(f"{result.feature} {config.partition} v{result.version}: {result.written} written, {result.skipped} skipped as not newer")
        # Shown on the feature's own page in the UI, next to its materializations.
        context.log_event(dg.AssetObservation(asset_key=names.asset_key(result.feature), partition=config.partition, metadata=metadata))
        return dg.Output(None, metadata=metadata)

    @dg.job(name=names.publish_job, description="Publish one materialized feature partition to the online store (newer-wins).",
            tags={"feature_pipelines/kind": "publish"})
    def _job():
        _publish()

    return _job


def build_publish_sensor(registry: Registry, job: dg.JobDefinition, names: Names) -> dg.SensorDefinition:
    """On by default: every new materialization of an online feature becomes one publish run."""
    online = sorted(name for name, f in registry.features.items() if f.online)

    @dg.sensor(name=names.sensor, job=job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=15,
               description=f"Publishes each new partition of {', '.join(online) or 'no feature'} to the online store.")
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        requests = []
        for name in online:
            after = cursor.get(name)
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=names.asset_key(name), after_storage_id=after), limit=PAGE, ascending=True
            ).records
            for record in records:
                if record.partition_key is None:
                    continue
                version = record.asset_materialization.metadata.get("version")
                requests.append(
                    dg.RunRequest(
                        run_key=f"{name}:{record.storage_id}",
                        run_config=dg.RunConfig(ops={"publish_partition": PublishConfig(
                            feature=name, partition=record.partition_key, version=version.value if version else "",
                            storage_id=record.storage_id)}),
                        tags={"feature_pipelines/feature": name, "feature_pipelines/partition": _tag(record.partition_key)},
                    )
                )
                cursor[name] = record.storage_id
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))

    return _sensor


def _tag(value: str) -> str:
    """Dagster tag values allow [A-Za-z0-9_.-]: hourly keys carry ':'."""
    return value.replace(":", ".")


__all__ = ["PUBLISH_JOB", "SENSOR", "PublishResult", "build_publish_job", "build_publish_sensor", "publish_partitions"]
