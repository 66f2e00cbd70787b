"""Sources of the fraud-detection example."""

from feature_pipelines import Source
from feature_pipelines.sample_data import data_dir

# `base` is where the file lives on this machine; only the relative path identifies the source.
transactions = Source("transactions.parquet", timestamp="timestamp", base=str(data_dir()))
