"""Publishing fresh partitions online: a sensor on materializations launches one publish run per feature per tick.

The sensor is a plain `@sensor` with a cursor per feature on materialization storage ids (an
`@asset_sensor` would drop all but the newest partition when several land between ticks). Each tick,
for each online feature, it gathers every materialization since the cursor into ONE `RunRequest`
(run_key = feature + first and last storage id, so a re-evaluated tick never publishes twice and each
materialization is published exactly once): a 90-partition backfill is one publish run, not 90. The
run does the work: read the partitions at the versions recorded on their materializations, keep the
newest row per entity, write it newer-wins — which is what makes a batch safe in any order: an older
partition never overwrites a newer value. Blocking checks run before a partition is written, so a
partition whose check failed has no materialization and is never published.

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
PAGE = 1000  # materializations gathered per feature per tick (one run); the rest wait for the next tick


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
        # The version orders rows with equal timestamps: a corrected partition (a newer PATCH) replaces what it corrects.
        result = online.write(feature.name, major, keys, frame, timestamp=FEATURE_TIMESTAMP, ttl_seconds=ttl,
                              version=manifest["version"])
    finally:
        online.close()
    return PublishResult(feature.name, partitions, manifest["version"], frame.height, result.written, result.skipped,
                         online.description, time.perf_counter() - t0)


class PublishConfig(dg.Config):
    feature: str
    partitions: list[str]  # the partitions to publish
    versions: list[str] = []  # the version each was materialized at, in the same order ('' or absent = the newest)
    first_storage_id: int = 0  # the materializations that triggered this run (0 = by hand)
    last_storage_id: int = 0


def _by_version(config: PublishConfig) -> dict[str, list[str]]:
    """Partitions grouped by the version they were materialized at ('' = the newest), in order."""
    groups: dict[str, list[str]] = {}
    for i, partition in enumerate(config.partitions):
        version = config.versions[i] if i < len(config.versions) else ""
        groups.setdefault(version, []).append(partition)
    return groups


def _span(partitions: list[str]) -> str:
    return partitions[0] if len(partitions) == 1 else f"{partitions[0]} … {partitions[-1]} ({len(partitions)})"


def build_publish_job(registry: Registry, names: Names) -> dg.JobDefinition:
    """A job with one op that publishes a batch of partitions of one feature (config: feature, partitions, versions)."""

    @dg.op(name="publish_partitions", tags={"kind": "online"}, required_resource_keys={names.offline_store, names.online_store})
    def _publish(context: dg.OpExecutionContext, config: PublishConfig) -> dg.Output[None]:
        feature = registry.feature(config.feature)
        offline = getattr(context.resources, names.offline_store).store()
        online = getattr(context.resources, names.online_store)
        results = []
        for version, partitions in _by_version(config).items():
            try:
                results.append(publish_partitions(feature, partitions, version or None, offline, online))
            except FeaturePipelinesError as err:
                raise dg.Failure(description=f"publishing {config.feature} {_span(partitions)} failed: {err}") from err
        metadata = {
            "feature": config.feature,
            "partitions": _span(sorted(config.partitions)),
            "partition_count": len(config.partitions),
            "version": ", ".join(dict.fromkeys(r.version for r in results)),
            "rows": sum(r.rows for r in results),
            "rows_written": sum(r.written for r in results),
            "rows_skipped_older": sum(r.skipped for r in results),
            "online_store": results[-1].store if results else "",
            "seconds": round(sum(r.seconds for r in results), 4),
            "materialization_storage_ids": f"{config.first_storage_id}…{config.last_storage_id}",
        }
        context.log.info(f"{config.feature} {metadata['partitions']} v{metadata['version']}: {metadata['rows_written']} written, "
                         f"{metadata['rows_skipped_older']} skipped as not newer")
        # Shown on the feature's own page in the UI, next to its materializations.
        context.log_event(dg.AssetObservation(asset_key=names.asset_key(config.feature), metadata=metadata))
        return dg.Output(None, metadata=metadata)

    @dg.job(name=names.publish_job, description="Publish materialized partitions of one feature to the online store (newer-wins).",
            tags={"feature_pipelines/kind": "publish"})
    def _job():
        _publish()

    return _job


def build_publish_sensor(registry: Registry, job: dg.JobDefinition, names: Names) -> dg.SensorDefinition:
    """On by default: each tick, the new materializations of each online feature become one publish run."""
    online = sorted(name for name, f in registry.features.items() if f.online)

    @dg.sensor(name=names.sensor, job=job, default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=15,
               description=f"Publishes new partitions of {', '.join(online) or 'no feature'} to the online store, one run per feature per tick.")
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        cursor = json.loads(context.cursor) if context.cursor else {}
        requests = []
        for name in online:
            records = [r for r in context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=names.asset_key(name), after_storage_id=cursor.get(name)), limit=PAGE, ascending=True
            ).records]
            if not records:
                continue
            cursor[name] = records[-1].storage_id
            newest: dict[str, str] = {}  # partition -> version of its newest materialization in this batch
            for record in records:
                if record.partition_key is not None:
                    version = record.asset_materialization.metadata.get("version")
                    newest.pop(record.partition_key, None)
                    newest[record.partition_key] = version.value if version else ""
            if not newest:
                continue
            first, last = records[0].storage_id, records[-1].storage_id
            keys = sorted(newest)
            requests.append(dg.RunRequest(
                run_key=f"{name}:{first}-{last}",
                run_config=dg.RunConfig(ops={"publish_partitions": PublishConfig(
                    feature=name, partitions=keys, versions=[newest[k] for k in keys], first_storage_id=first, last_storage_id=last)}),
                tags={"feature_pipelines/feature": name, "feature_pipelines/partitions": _tag(f"{keys[0]}...{keys[-1]}"),
                      "feature_pipelines/partition_count": str(len(keys))},
            ))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))

    return _sensor


def _tag(value: str) -> str:
    """Dagster tag values allow [A-Za-z0-9_.-]: hourly keys carry ':'."""
    return value.replace(":", ".")


__all__ = ["PUBLISH_JOB", "SENSOR", "PublishConfig", "PublishResult", "build_publish_job", "build_publish_sensor", "publish_partitions"]
