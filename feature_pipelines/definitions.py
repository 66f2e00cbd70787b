"""The Dagster code location: `dagster dev -w workspace.yaml` and `dagster asset materialize -m feature_pipelines.definitions`.

Features found in `feature_pipelines.defs` are compiled to assets; plain Dagster assets defined
there (such as `training_set`) are loaded as they are.
"""

import dagster as dg

import feature_pipelines.defs
from feature_pipelines.orchestration import build_definitions
from feature_pipelines.registry import load_registry

registry = load_registry("feature_pipelines.defs")
defs = dg.Definitions.merge(
    build_definitions(registry),
    dg.Definitions(assets=dg.load_assets_from_package_module(feature_pipelines.defs)),
)
