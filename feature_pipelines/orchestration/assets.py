"""Compiles feature specs into Dagster assets, blocking asset checks, jobs and schedules."""

from __future__ import annotations

import importlib.metadata

import dagster as dg
import polars as pl

from feature_pipelines.engine import Engine, PolarsEngine
from feature_pipelines.engine.source_reader import TS, read_events
from feature_pipelines.orchestration.names import Names
from feature_pipelines.spec.durations import duration_label, parse_duration
from feature_pipelines.spec.feature import FEATURE_TIMESTAMP, Feature
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


def run_checks(feature: Feature, frames: dict[str, pl.DataFrame], key: dg.AssetKey) -> list[dg.AssetCheckResult]:
    """Evaluate every validator on the run's output rows (or, for source columns, its source rows)."""
    checks = checks_of(feature)
    if not checks:
        return []
    output = pl.concat(list(frames.values()), how="vertical_relaxed") if frames else pl.DataFrame()
    source_cols = sorted({col for _, col, _ in checks if col not in output.columns})
    source = None
    if source_cols:
        grain = feature.grain
        starts = sorted(grain.parse_key(k) for k in frames)
        source = read_events(feature, starts[0], grain.next(starts[-1]), source_cols)
    results = []
    for name, column, validator in checks:
        target, where = (output, "output") if column in output.columns else (source, "source")
        failing = target.filter(validator.failing(pl.col(column)))
        shown = [c for c in ([*feature.join_keys, column] + ([FEATURE_TIMESTAMP] if where == "output" else [TS])) if c in target.columns]
        sample = failing.select(list(dict.fromkeys(shown))).head(SAMPLE_ROWS)
        passed = failing.height == 0
        results.append(
            dg.AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(
                    f"{column} {validator.description}: all {target.height} {where} rows pass"
                    if passed
                    else f"{failing.height} of {target.height} {where} rows break '{column} {validator.description}' ({validator.rule})"
                ),
                metadata={
                    "column": column,
                    "rule": validator.rule,
                    "checked_rows": target.height,
                    "failing_rows": failing.height,
                    "partitions": ", ".join(frames) if len(frames) <= 5 else f"{next(iter(frames))} … {list(frames)[-1]} ({len(frames)})",
                    **({"sample": dg.MetadataValue.md(_markdown(sample))} if not passed else {}),
                },
            )
        )
    return results


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
    """One time-partitioned asset per feature: code_version = config hash, validators as blocking checks.

    Validators run before the output is handed to the IO manager: a failing partition raises and is
    never written, so the offline store (and the online store fed from it) only holds checked data.
    """
    engine = engine or PolarsEngine()
    key = names.asset_key(feature.name)
    specs = [
        dg.AssetCheckSpec(name=name, asset=key, blocking=True, description=f"{column} {v.description}")
        for name, column, v in checks_of(feature)
    ]
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
    }

    @dg.asset(
        key=key,
        partitions_def=partitions_def(feature),
        backfill_policy=dg.BackfillPolicy.single_run(),
        code_version=feature.config_hash,
        description=feature.description or None,
        group_name=group or feature.group,
        kinds={"polars", "parquet"},
        tags=dict(feature.tags),
        owners=[feature.owner] if feature.owner else None,
        metadata=metadata,
        check_specs=specs or None,
        io_manager_key=names.io_manager,
        automation_condition=automation_condition,
    )
    def _asset(context):  # AssetExecutionContext (string annotations are not accepted here)
        partition_keys = list(context.partition_keys)
        context.log.info(f"computing {feature.name} for {len(partition_keys)} partition(s) with the {engine.name} engine")
        check_source_columns(feature)
        # Taken before reading: if the source changes mid-run, the next build sees a new fingerprint.
        fingerprint = lineage_fingerprint(feature, engine)
        frames = engine.compute(feature, partition_keys)
        results = run_checks(feature, frames, key)
        failed = [r for r in results if not r.passed]
        if failed:
            yield from results
            raise dg.Failure(
                description=f"{feature.name}: {len(failed)} blocking check(s) failed, nothing was written: "
                + "; ".join(r.description for r in failed),
                metadata={**{r.check_name: r.description for r in failed},
                          **{f"{r.check_name} sample": r.metadata["sample"] for r in failed if "sample" in r.metadata}},
            )
        yield dg.Output(frames, metadata={"source_fingerprint": fingerprint or "unknown"})
        yield from results

    return _asset


def build_job_and_schedule(feature: Feature, names: Names = Names()) -> tuple[dg.UnresolvedAssetJobDefinition, dg.ScheduleDefinition]:
    """A partitioned job per feature and a schedule that materializes each new partition after it closes."""
    job = dg.define_asset_job(names.job(feature.name), selection=dg.AssetSelection.assets(names.asset_key(feature.name)))
    minute = 5 if feature.granularity == "hourly" else 0
    hour = None if feature.granularity == "hourly" else 1
    kwargs = {"minute_of_hour": minute} if hour is None else {"minute_of_hour": minute, "hour_of_day": hour}
    schedule = dg.build_schedule_from_partitioned_job(job, description=f"Materializes each closed {feature.granularity} partition of {feature.name}", **kwargs)
    return job, schedule


__all__ = ["build_feature_asset", "build_job_and_schedule", "lineage_fingerprint", "partitions_def", "run_checks"]
