"""Sources of the fraud-detection example."""

from feature_pipelines import Source

# `base` says where the file lives on this machine (relative: under the project root); only the relative
# path identifies the source. `feature-pipelines` and the tests point it elsewhere with FEATURE_PIPELINES_DATA_DIR.
transactions = Source("transactions.parquet", timestamp="timestamp", base="${FEATURE_PIPELINES_DATA_DIR:-data}")
