"""Dagster compilation: specs become assets, checks, jobs and schedules; resources keep the stores.

`build_defs(...)` is the plain-Python way to add a feature set to a code location; the Component
(`feature_pipelines.FeatureStoreComponent`) calls it with what `defs.yaml` says.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from types import ModuleType
from typing import Literal

import dagster as dg

# BackfillPolicy is marked beta and AssetCheckSpec(partitions_def=...) preview in Dagster 1.13; we rely on both
# deliberately (single-run backfills, per-partition checks), so their warnings would only be noise to users.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)

from feature_pipelines.engine import Engine, PolarsEngine  # noqa: E402
from feature_pipelines.errors import DefinitionError  # noqa: E402
from feature_pipelines.orchestration.assets import build_feature_asset, build_job_and_schedule  # noqa: E402
from feature_pipelines.orchestration.io_manager import FeatureStoreIOManager  # noqa: E402
from feature_pipelines.orchestration.lineage import build_source_asset, source_key  # noqa: E402
from feature_pipelines.orchestration.names import Names  # noqa: E402
from feature_pipelines.orchestration.publish import build_publish_job, build_publish_sensor  # noqa: E402
from feature_pipelines.orchestration.resources import OfflineStoreResource, OnlineStoreResource  # noqa: E402
from feature_pipelines.registry import Registry, load_registry, project_registry  # noqa: E402
from feature_pipelines.spec.feature import Feature, FeatureService  # noqa: E402

Automation = Literal["schedule", "on_cron", "eager", "none"]
ENGINES = ("polars",)
_CRON = {"hourly": "5 * * * *", "daily": "0 1 * * *", "weekly": "0 1 * * 0", "monthly": "0 1 1 * *"}


def features_of(features: str | ModuleType | Registry | Iterable[Feature | FeatureService] | None) -> Registry:
    """A Registry from a package name or module (searched recursively), a Registry, or Features/FeatureServices.

    None means the project's configured package (`[tool.feature_pipelines] package`).
    """
    if isinstance(features, Registry):
        return features
    if features is None:
        return project_registry()
    if isinstance(features, (str, ModuleType)):
        return load_registry(features)
    return Registry.of(features)


def engine_named(name: str | Engine) -> Engine:
    if not isinstance(name, str):
        return name
    if name == "polars":
        return PolarsEngine()
    raise DefinitionError(f"engine {name!r} is not supported; expected one of: {', '.join(ENGINES)}")


def build_defs(
    features: str | ModuleType | Registry | Iterable[Feature | FeatureService] | None = None,
    *,
    offline_store: OfflineStoreResource | None = None,
    online_store: OnlineStoreResource | None = None,
    profile: str | None = None,
    engine: str | Engine = "polars",
    prefix: str = "",
    group: str | None = None,
    automation: Automation = "schedule",
) -> dg.Definitions:
    """Dagster Definitions for a feature set: one partitioned asset per feature with its validators as
    blocking checks, a job per feature, the IO manager over the offline store, and the publish job with
    the (on by default) sensor that feeds the online store.

    `features`: a package name or module (searched recursively), Features/FeatureServices, or None for
    the project's `[tool.feature_pipelines] package`. Stores: the given resources, else those of
    `profile`, else those of the active profile ($FEATURE_PIPELINES_PROFILE, else dev). `prefix` goes in
    front of every name this adds (see `Names`), so several feature sets share a code location.
    `automation`: a schedule per feature (stopped until turned on: "schedule"), an `on_cron`
    automation condition per asset ("on_cron": the newest partition after it closes), `eager` ("eager":
    also whenever the feature's source asset reports a new data version), or nothing ("none"). Each
    source is an observable asset upstream of its features (`sources/<name>`).

    Settings are checked here, at load time (`dg check defs` fails with the cause), not after a compute.
    """
    registry = features_of(features)
    names = Names(prefix)
    if offline_store is None or online_store is None:
        from feature_pipelines.profiles import load_profile

        chosen = load_profile(profile)
        offline_store = offline_store or chosen.offline
        online_store = online_store or chosen.online
    for resource, role in ((offline_store, OfflineStoreResource), (online_store, OnlineStoreResource)):
        if not isinstance(resource, role):
            raise DefinitionError(f"{role.__name__.replace('Resource', '').lower()}: expected a {role.__name__} "
                                  f"(e.g. {'LocalStoreResource' if role is OfflineStoreResource else 'SQLiteOnlineStoreResource'}()), "
                                  f"got {type(resource).__name__}")
        resource.check()
    if automation not in ("schedule", "on_cron", "eager", "none"):
        raise DefinitionError(f"automation {automation!r} is not supported; expected 'schedule', 'on_cron', 'eager' or 'none'")
    engine = engine_named(engine)
    assets, jobs, schedules = [], [], []
    sources = {}
    for feature in registry.features.values():
        sources.setdefault(source_key(feature.source, names), feature.source)
        condition = (dg.AutomationCondition.on_cron(_CRON[feature.granularity]) if automation == "on_cron"
                     else dg.AutomationCondition.eager() if automation == "eager" else None)
        assets.append(build_feature_asset(feature, engine, names, group, condition))
        job, schedule = build_job_and_schedule(feature, names)
        jobs.append(job)
        if automation == "schedule":
            schedules.append(schedule)
    publish = build_publish_job(registry, names)
    jobs.append(publish)
    return dg.Definitions(
        assets=[*assets, *(build_source_asset(source, names) for source in sources.values())],
        jobs=jobs,
        schedules=schedules,
        sensors=[build_publish_sensor(registry, publish, names)],
        resources={
            names.io_manager: FeatureStoreIOManager(offline_store=offline_store),
            names.offline_store: offline_store,
            names.online_store: online_store,
        },
    )


__all__ = ["FeatureStoreIOManager", "Names", "build_defs", "engine_named", "features_of"]
