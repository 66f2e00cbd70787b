"""Dagster compilation: specs become assets, checks, jobs and schedules; the IO manager persists them."""

from __future__ import annotations

import warnings

import dagster as dg

# BackfillPolicy is marked beta in Dagster 1.13; we rely on it deliberately (single-run backfills).
warnings.filterwarnings("ignore", category=dg.BetaWarning)

from feature_pipelines.engine import Engine  # noqa: E402
from feature_pipelines.orchestration.assets import build_feature_asset, build_job_and_schedule  # noqa: E402
from feature_pipelines.orchestration.io_manager import FeatureStoreIOManager  # noqa: E402
from feature_pipelines.orchestration.publish import build_publish_job, build_publish_sensor  # noqa: E402
from feature_pipelines.registry import Registry  # noqa: E402


def build_definitions(registry: Registry, *, profile: str = "", engine: Engine | None = None) -> dg.Definitions:
    """Dagster Definitions for every feature of `registry`: assets with checks, jobs, schedules, IO manager,
    and the publish job with the sensor that feeds the online store."""
    assets, jobs, schedules = [], [], []
    for feature in registry.features.values():
        assets.append(build_feature_asset(feature, engine))
        job, schedule = build_job_and_schedule(feature)
        jobs.append(job)
        schedules.append(schedule)
    publish = build_publish_job(registry, profile)
    jobs.append(publish)
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        schedules=schedules,
        sensors=[build_publish_sensor(registry, publish)],
        resources={"feature_store": FeatureStoreIOManager(profile=profile)},
    )


__all__ = ["FeatureStoreIOManager", "build_definitions"]
