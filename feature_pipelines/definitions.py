"""The Dagster code location of this repository: everything under `feature_pipelines/defs/`, loaded as `dg` does.

`dg dev`, `dg launch --assets customer_spend --partition 2024-01-05` and `dg check defs` find it through
`[tool.dg]` in pyproject.toml; `dagster dev -w workspace.yaml` and `dagster asset materialize -m
feature_pipelines.definitions` load the same `defs`. The feature set itself is the `FeatureStoreComponent` in
`defs/feature_store/defs.yaml`; plain Dagster assets in `defs/` (such as `training_set`) load as they are.
"""

from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).resolve().parent)
