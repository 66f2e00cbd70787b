"""The Dagster code location: `dagster dev -w workspace.yaml` and `dagster asset materialize -m feature_pipelines.definitions`."""

from feature_pipelines.orchestration import build_definitions
from feature_pipelines.registry import load_registry

registry = load_registry("feature_pipelines.defs")
defs = build_definitions(registry)
