"""`FeatureStoreComponent`: a feature set in a `dg` project, configured in `defs.yaml`.

    dg scaffold defs feature_pipelines.FeatureStoreComponent feature_store

writes `defs/feature_store/defs.yaml`::

    type: feature_pipelines.FeatureStoreComponent
    attributes:
      package: my_project.features                        # your Features and FeatureServices (searched recursively)
      offline_store: {kind: local, path: feature_store}   # or s3 / gcs / unity_catalog; without it: the profile's
      online_store: {kind: sqlite, path: online_store.sqlite}   # or redis / databricks
      # prefix: fraud        # in front of every asset key, job, sensor and resource key this adds
      # group: features      # the asset group of every feature (default: each feature's own)
      # engine: polars
      # automation: schedule # schedule (stopped until turned on) | on_cron | eager | none

Store mappings are exactly a profile's (`kind` + the resource's fields, `${VAR}` from the environment,
secrets kept as `dg.EnvVar`); relative paths resolve against the project root. It all resolves to the
same `build_defs(...)` a plain-Python project calls.
"""

from __future__ import annotations

from typing import Any, Literal

import dagster as dg
from pydantic import Field

from feature_pipelines.orchestration.resources import resource_from_settings


class FeatureStoreScaffolder(dg.Scaffolder):
    """Writes a `defs.yaml` for the project's features package with the embedded stores."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        from dagster.components.component_scaffolding import scaffold_component

        from feature_pipelines.project import find_project

        package = find_project(request.project_root).package if request.project_root else None
        if not package and request.project_root:
            package = f"{_root_module(request.project_root) or 'my_project'}.features"
        scaffold_component(request, {
            "package": package or "my_project.features",
            "offline_store": {"kind": "local", "path": "feature_store"},
            "online_store": {"kind": "sqlite", "path": "online_store.sqlite"},
        })


def _root_module(project_root) -> str | None:
    import tomllib

    try:
        tool = tomllib.loads((project_root / "pyproject.toml").read_text()).get("tool", {})
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return tool.get("dg", {}).get("project", {}).get("root_module")


@dg.scaffold_with(FeatureStoreScaffolder)
class FeatureStoreComponent(dg.Component, dg.Resolvable, dg.Model):
    """A feature set: every Feature of `package` as a time-partitioned asset with its checks, jobs, the
    IO manager over the offline store, and the sensor that publishes new partitions to the online store."""

    package: str = Field(description="Python package (or module) holding the Features and FeatureServices; sub-packages are searched too.")
    profile: str | None = Field(default=None, description="A profile (env/<name>.yaml) to take the stores from, instead of offline_store/online_store.")
    offline_store: dict[str, Any] | None = Field(
        default=None, description="{kind: local|s3|gcs|unity_catalog, ...fields}; default: the profile's (dev: local ./feature_store).")
    online_store: dict[str, Any] | None = Field(
        default=None, description="{kind: sqlite|redis|databricks, ...fields}; default: the profile's (dev: sqlite ./online_store.sqlite).")
    prefix: str = Field(default="", description="Put in front of every asset key, job, sensor and resource key this component adds.")
    group: str | None = Field(default=None, description="Asset group of every feature (default: each feature's own `group`).")
    engine: Literal["polars"] = Field(default="polars", description="The engine that computes partitions.")
    automation: Literal["schedule", "on_cron", "eager", "none"] = Field(
        default="schedule", description="A schedule per feature (stopped until turned on), an on_cron automation condition, "
                                        "eager (also when the source changes), or none.")

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from feature_pipelines.orchestration import build_defs

        where, root = f"component {context.path}", context.project_root
        offline = resource_from_settings(self.offline_store, "offline_store", where, root) if self.offline_store is not None else None
        online = resource_from_settings(self.online_store, "online_store", where, root) if self.online_store is not None else None
        # A store not given here comes from `profile`, else the active profile ($FEATURE_PIPELINES_PROFILE, else dev).
        return build_defs(self.package, offline_store=offline, online_store=online, profile=self.profile, engine=self.engine,
                          prefix=self.prefix, group=self.group, automation=self.automation)
