"""Compiles feature specs into Dagster assets, blocking asset checks, jobs and schedules."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import dagster as dg
import numpy as np
import polars as pl

from feature_pipelines.engine import Engine, PolarsEngine
from feature_pipelines.engine.source_reader import TS, read_events
from feature_pipelines.orchestration.lineage import column_lineage, column_schema, freshness_policy, source_key
from feature_pipelines.orchestration.names import Names
from feature_pipelines.orchestration.statistics import BASELINE, DRIFT_WARN, MIN_VALUES, drift, partition_statistics
from feature_pipelines.spec.durations import duration_label, parse_duration
from feature_pipelines.spec.feature import FEATURE_TIMESTAMP, Feature
from feature_pipelines.spec.granularity import epoch_us
from feature_pipelines.spec.validators import Validator

SAMPLE_ROWS = 5


def partitions_def(feature: Feature) -> dg.TimeWindowPartitionsDefinition:
    """The Dagster partitions matching the spec's granularity (UTC; weekly intervals start on Sunday)."""
    grain = feature.grain
    start = grain.key(feature.start)
    end = grain.key(feature.end) if feature.end is not None else None
    cls = {
        "hourly": dg.HourlyPartitionsDefinition,
        "daily": dg.DailyPartitionsDefinition,
        "weekly": dg.WeeklyPartitionsDefinition,
        "monthly": dg.MonthlyPartitionsDefinition,
    }[feature.granularity]
    kwargs = {"day_offset": 0} if feature.granularity == "weekly" else {}
    if feature.granularity == "monthly":
        kwargs = {"day_offset": 1}
    return cls(start_date=start, end_date=end, timezone="UTC", **kwargs)


def check_name(column: str, validator: Validator, taken: set[str]) -> str:
    base = f"{column}__{validator.rule}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def checks_of(feature: Feature) -> list[tuple[str, str, Validator]]:
    """(check name, column, validator) for every validator of the feature, names unique."""
    taken: set[str] = set()
    return [(check_name(col, v, taken), col, v) for col, rules in feature.validators.items() for v in rules]


@dataclass(frozen=True)
class CheckOutcome:
    """One validator's result on one partition."""

    check_name: str
    partition: str
    passed: bool
    description: str
    metadata: dict


def run_checks(feature: Feature, frames: dict[str, pl.DataFrame]) -> list[CheckOutcome]:
    """Evaluate every validator on each partition's output rows (or, for source columns, its source rows).

    One vectorised pass per validator over the whole range, grouped by partition (`unique` means unique
    within a partition); failing partitions carry a sample of the offending rows.
    """
    checks = checks_of(feature)
    if not checks or not frames:
        return []
    keys = list(frames)
    output = pl.concat([f.with_columns(__part=pl.lit(i, pl.Int32)) for i, f in enumerate(frames.values())], how="vertical_relaxed")
    source_cols = sorted({col for _, col, _ in checks if col not in output.columns})
    source = None
    if source_cols:
        grain = feature.grain
        starts = [grain.parse_key(k) for k in keys]
        bounds = np.array([epoch_us(b) for b in grain.boundaries(min(starts), max(starts))], dtype=np.int64)
        source = read_events(feature, starts[0], grain.next(starts[-1]), source_cols)
        part = np.searchsorted(bounds, source[TS].dt.epoch("us").to_numpy(), side="right") - 1
        source = source.with_columns(__part=pl.Series(part.astype(np.int32)))
    outcomes = []
    for name, column, validator in checks:
        target, where = (output, "output") if column in output.columns else (source, "source")
        marked = target.with_columns(__failing=validator.failing(pl.col(column)).over("__part").fill_null(False))
        counts = marked.group_by("__part").agg(rows=pl.len(), failing=pl.col("__failing").sum())
        per_part = {p: (r, f) for p, r, f in counts.iter_rows()}
        shown = list(dict.fromkeys(c for c in [*feature.join_keys, column, FEATURE_TIMESTAMP if where == "output" else TS] if c in target.columns))
        for i, key in enumerate(keys):
            rows, failing = per_part.get(i, (0, 0))
            passed = failing == 0
            metadata = {"column": column, "rule": validator.rule, "checked_rows": rows, "failing_rows": failing}
            if not passed:
                sample = marked.filter((pl.col("__part") == i) & pl.col("__failing")).select(shown).head(SAMPLE_ROWS)
                metadata["sample"] = dg.MetadataValue.md(_markdown(sample))
            outcomes.append(CheckOutcome(name, key, passed, (
                f"{column} {validator.description}: all {rows} {where} rows of {key} pass" if passed
                else f"{failing} of {rows} {where} rows of {key} break '{column} {validator.description}' ({validator.rule})"), metadata))
    return outcomes


def check_source_columns(feature: Feature) -> None:
    """Before any compute: every column the definition names (keys or their PII columns, metric inputs,
    validators on source columns, the timestamp) exists in the transformed source; one DataError otherwise."""
    from feature_pipelines.errors import DataError

    frame = feature.source.scan()
    if feature.transform is not None:
        frame = feature.transform(frame)
    try:
        schema = frame.collect_schema() if isinstance(frame, pl.LazyFrame) else None
    except (pl.exceptions.PolarsError, OSError):
        return  # unreadable or failing transform: the engine reports it with the source's own message
    if schema is None:
        return
    derived = feature.derived_keys
    output = set(feature.join_keys) | set(feature.metric_columns) | {FEATURE_TIMESTAMP}
    wanted = {feature.timestamp: "the timestamp"}
    for key in feature.join_keys:
        for column in derived.get(key, (key,)):
            wanted.setdefault(column, f"entity key {key!r}")
    for metric in feature.rolling:
        for column in metric.aggregations:
            wanted.setdefault(column, "a Rolling metric")
    for metric in feature.latest:
        for column in metric.columns:
            wanted.setdefault(column, "a Latest metric")
    for column in feature.validators:
        if column not in output:
            wanted.setdefault(column, "a validator")
    missing = {c: why for c, why in wanted.items() if c not in schema}
    if missing:
        named = ", ".join(f"{c!r} ({why})" for c, why in missing.items())
        raise DataError(f"feature {feature.name!r}: the source {feature.source.path!r} has no column {named}; "
                        f"its columns{' after the transform' if feature.transform else ''} are {list(schema)}. Nothing was computed.")


def _markdown(frame: pl.DataFrame) -> str:
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in frame.iter_rows())


def lineage_fingerprint(feature: Feature, engine: Engine) -> str | None:
    """What a partition was computed from: source content, engine and library version (None when unknown)."""
    source = feature.source.fingerprint()
    if source is None:
        return None
    try:
        version = importlib.metadata.version("feature_pipelines")
    except importlib.metadata.PackageNotFoundError:
        version = "dev"
    return f"{source}:{engine.name}:{version}"


def build_feature_asset(feature: Feature, engine: Engine | None = None, names: Names = Names(), group: str | None = None,
                        automation_condition: dg.AutomationCondition | None = None) -> dg.AssetsDefinition:
    """One time-partitioned asset per feature: code_version = config hash, validators as partitioned blocking checks.

    Validators run before the output is handed to the IO manager, and each partition gets its own check
    evaluation (pass, or fail with a sample of the offending rows). If any partition fails, the run fails
    and nothing is written, so the offline store (and the online store fed from it) only holds checked
    data. Selecting only the checks (e.g. "Execute checks" in the UI) computes and checks without writing.
    """
    engine = engine or PolarsEngine()
    key = names.asset_key(feature.name)
    upstream = source_key(feature.source, names)
    pdef = partitions_def(feature)
    specs = [
        dg.AssetCheckSpec(name=name, asset=key, blocking=True, description=f"{column} {v.description}", partitions_def=pdef)
        for name, column, v in checks_of(feature)
    ]
    # One drift result per run (not per partition: a year backfill would write 365 "stable" events); each partition's
    # PSI is in its materialization metadata (`drift psi_max`), which Dagster plots over partitions.
    specs.append(dg.AssetCheckSpec(
        name=DRIFT_CHECK, asset=key, blocking=False,
        description=f"Warns when a partition's values drift from the {BASELINE} partitions before it (PSI >= {DRIFT_WARN} on a column)"))
    windows = sorted({duration_label(w) for m in feature.rolling for w in m.window_us}, key=lambda s: parse_duration(s))
    metadata = {
        "feature_pipelines/keys": feature.join_keys,
        "feature_pipelines/timestamp": FEATURE_TIMESTAMP,
        "feature_pipelines/config_hash": feature.config_hash,
        "feature_pipelines/granularity": feature.granularity,
        "feature_pipelines/kind": feature.kind,
        "feature_pipelines/ttl": duration_label(feature.ttl_us) if feature.ttl_us else None,
        "feature_pipelines/online": feature.online,
        "entities": ", ".join(e.name for e in feature.entities),
        "source": feature.source.path,
        "windows": ", ".join(windows) or "-",
        "dagster/column_schema": column_schema(feature),
        "dagster/column_lineage": column_lineage(feature, upstream),
    }
    spec = dg.AssetSpec(
        key=key,
        description=feature.description or None,
        metadata=metadata,
        group_name=group or feature.group,
        code_version=feature.config_hash,
        automation_condition=automation_condition,
        owners=[feature.owner] if feature.owner else None,
        tags=dict(feature.tags),
        kinds={"polars", "parquet"},
        partitions_def=pdef,
        deps=[upstream],
        freshness_policy=freshness_policy(feature),
    ).with_io_manager_key(names.io_manager)

    # A multi_asset only to make the checks subsettable (can_subset), which a plain @asset cannot.
    @dg.multi_asset(
        name=key.to_python_identifier(),
        specs=[spec],
        check_specs=specs or None,
        partitions_def=pdef,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
        required_resource_keys={names.offline_store},
    )
    def _asset(context):  # AssetExecutionContext (string annotations are not accepted here)
        partition_keys = list(context.partition_keys)
        context.log.info(f"computing {feature.name} for {len(partition_keys)} partition(s) with the {engine.name} engine")
        check_source_columns(feature)
        # Taken before reading: if the source changes mid-run, the next build sees a new fingerprint.
        fingerprint = lineage_fingerprint(feature, engine)
        frames = engine.compute(feature, partition_keys)
        selected = {c.name for c in context.selected_asset_check_keys}
        outcomes = [o for o in run_checks(feature, frames) if o.check_name in selected]  # the drift check is not a validator
        failed = [o for o in outcomes if not o.passed]
        if failed:
            # Nothing is written: each evaluation is about the partition's current materialization (if any).
            targets = _targets(context, key, partition_keys)
            for outcome in outcomes:
                context.log_event(_check_evaluation(key, outcome, targets.get(outcome.partition)))
            shown = failed[:5]
            raise dg.Failure(
                description=f"{feature.name}: blocking check(s) failed on {len({o.partition for o in failed})} partition(s), "
                "nothing was written: " + "; ".join(o.description for o in shown) + (" …" if len(failed) > len(shown) else ""),
                metadata={**{f"{o.check_name} {o.partition}": o.description for o in shown},
                          **{f"{o.check_name} {o.partition} sample": o.metadata["sample"] for o in shown}},
            )
        psi: dict[str, float] = {}
        if DRIFT_CHECK in selected:
            store = getattr(context.resources, names.offline_store).store()
            drifts = drift(frames, feature.join_keys, _history(store, feature, partition_keys[0]))
            psi = {d.partition: d.worst[1] for d in drifts if d.worst is not None}
            context.log_event(_drift_evaluation(key, drifts))
        if key in context.selected_asset_keys:
            for partition, stats in partition_statistics(frames, feature.join_keys).items():
                if partition in psi:
                    stats["drift psi_max"] = psi[partition]
                context.add_asset_metadata(stats, asset_key=key, partition_key=partition)
            yield dg.Output(frames, output_name=key.to_python_identifier(), metadata={"source_fingerprint": fingerprint or "unknown"})
        # After the output is stored, so each evaluation targets the materialization it vouches for: Dagster shows a
        # partition's check result only while it targets that partition's newest materialization (else: "missing").
        targets = _targets(context, key, partition_keys) if outcomes else {}
        for outcome in outcomes:
            context.log_event(_check_evaluation(key, outcome, targets.get(outcome.partition)))

    return _asset


DRIFT_CHECK = "drift"


def _targets(context, key: dg.AssetKey, partitions: list[str]) -> dict:
    """The newest materialization of each partition (what a check evaluated now is about)."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import AssetCheckEvaluationTargetMaterializationData

    ids = context.instance.event_log_storage.get_latest_storage_id_by_partition(
        key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(partitions))
    if not ids:
        return {}
    records = context.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key, storage_ids=list(ids.values())),
                                                      limit=len(ids)).records
    return {r.partition_key: AssetCheckEvaluationTargetMaterializationData(storage_id=r.storage_id, run_id=r.run_id, timestamp=r.timestamp)
            for r in records}


def _check_evaluation(key: dg.AssetKey, outcome: CheckOutcome, target) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=key, check_name=outcome.check_name, passed=outcome.passed, metadata=outcome.metadata,
        target_materialization_data=target, severity=dg.AssetCheckSeverity.ERROR, description=outcome.description,
        blocking=True, partition=outcome.partition)


def _history(store, feature: Feature, first: str) -> list[pl.DataFrame]:
    """The newest version's BASELINE stored partitions just before `first`, oldest first (for the drift baseline)."""
    manifest = store.latest(feature.name)
    if manifest is None:
        return []
    before = sorted(k for k in manifest["partitions"] if k < first)[-BASELINE:]
    if not before:
        return []
    columns = [c["name"] for c in manifest["columns"]]
    frame = store.read(feature.name, manifest["version"], before, columns)
    ts = manifest["timestamp_column"]
    return list(frame.partition_by(ts, maintain_order=True)) if feature.kind != "rows" else [frame]


def _drift_evaluation(key: dg.AssetKey, outcomes: list) -> dg.AssetCheckEvaluation:
    """The run's drift result: WARN listing the drifted partitions, else the largest PSI seen."""
    judged = [o for o in outcomes if o.worst is not None]
    drifted = [o for o in judged if not o.passed]
    worst = max(judged, key=lambda o: o.worst[1]) if judged else None
    if drifted:
        shown = "; ".join(f"{o.partition} (PSI {o.worst[1]:.3f} on {o.worst[0]})" for o in drifted[:5])
        description = f"{len(drifted)} of {len(outcomes)} partition(s) drifted from the partitions before them: {shown}"
    elif worst is not None:
        description = (f"stable over {len(judged)} partition(s): largest PSI {worst.worst[1]:.3f} "
                       f"({worst.partition}, {worst.worst[0]})")
    elif any(o.baseline for o in outcomes):
        description = f"not judged: fewer than {MIN_VALUES} values per column in the partitions or their baseline"
    else:
        description = "no baseline yet: no earlier partition to compare with"
    return dg.AssetCheckEvaluation(
        asset_key=key, check_name=DRIFT_CHECK, passed=not drifted, severity=dg.AssetCheckSeverity.WARN, blocking=False,
        target_materialization_data=None, description=description,
        metadata={"psi_max": worst.worst[1] if worst else 0.0, "worst_partition": worst.partition if worst else "",
                  "column": worst.worst[0] if worst else "", "partitions_checked": len(outcomes), "partitions_judged": len(judged),
                  "drifted_partitions": ", ".join(o.partition for o in drifted[:50])})


def build_job_and_schedule(feature: Feature, names: Names = Names()) -> tuple[dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition]:
    """A partitioned job per feature and a schedule that materializes each new partition after it closes."""
    job = dg.define_asset_job(names.job(feature.name), selection=dg.AssetSelection.assets(names.asset_key(feature.name)))
    minute = 5 if feature.granularity == "hourly" else 0
    hour = None if feature.granularity == "hourly" else 1
    kwargs = {"minute_of_hour": minute} if hour is None else {"minute_of_hour": minute, "hour_of_day": hour}
    schedule = dg.build_schedule_from_partitioned_job(job, description=f"Materializes each closed {feature.granularity} partition of {feature.name}", **kwargs)
    return job, schedule


__all__ = ["build_feature_asset", "build_job_and_schedule", "lineage_fingerprint", "partitions_def", "run_checks"]
