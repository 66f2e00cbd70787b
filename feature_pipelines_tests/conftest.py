"""Shared fixtures: a throwaway project (data, store, profile, Dagster home) per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


@pytest.fixture(autouse=True, scope="session")
def _own_dagster_home(tmp_path_factory):
    """No test touches the developer's instance (`make test` exports DAGSTER_HOME=./.dagster_home)."""
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_HOME", str(home))
        yield


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp folder with env/test.yaml pointing the store at tmp_path/store, and DAGSTER_HOME set."""
    env = tmp_path / "env"
    env.mkdir()
    (env / "test.yaml").write_text("offline_store:\n  kind: local\n  path: ./store\n")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("storage:\n  sqlite:\n    base_dir:\n      env: DAGSTER_HOME\ntelemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("FEATURE_PIPELINES_ENV_DIR", str(env))
    monkeypatch.setenv("FEATURE_PIPELINES_PROFILE", "test")
    return tmp_path
