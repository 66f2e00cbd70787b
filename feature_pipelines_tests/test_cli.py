"""The `feature-pipelines` command in-process, on the example features and a throwaway project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from feature_pipelines.cli import main
from feature_pipelines.defs.sample_data import write_transactions


@pytest.fixture()
def example(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = project / "data"
    write_transactions(data / "transactions.parquet", rows=5_000, customers=50, days=20)
    monkeypatch.setenv("FEATURE_PIPELINES_DATA_DIR", str(data))
    return project


def test_sync_restores_missing_data_files_from_metadata(example: Path, capsys) -> None:
    assert main(["build", "--features", "customer_velocity", "--start", "2024-01-01", "--end", "2024-01-05"]) == 0
    feature_dir = example / "store" / "customer_velocity"
    files = sorted(feature_dir.glob("1.0.0/*.parquet"))
    assert len(files) == 5
    originals = {f: f.read_bytes() for f in files}
    for f in files[1:3]:
        f.unlink()  # as after a git clone: metadata is committed, data files are not
    capsys.readouterr()
    assert main(["sync"]) == 0
    assert "customer_velocity 1.0.0: restored 2 of 2 missing file(s)" in capsys.readouterr().out
    assert {f: f.read_bytes() for f in files} == originals


def test_profile_and_inspect_print_json(example: Path, capsys) -> None:
    assert main(["profile"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["profile"] == "test" and shown["settings"]["offline_store"]["kind"] == "local"
    assert main(["inspect", "customer_spend"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["latest"] is None and "amount_sum_7d" in inspected["columns"]


def test_unknown_feature_is_a_clear_error(example: Path, capsys) -> None:
    assert main(["build", "--features", "no_such_feature", "--partition", "2024-01-02"]) == 2
    err = capsys.readouterr().err
    assert "no_such_feature" in err and "customer_spend" in err
