"""`feature-pipelines build` as a user at 2 a.m. meets it: one line with the cause, the failing rows, defaults
that mean what they say, and several processes on a fresh Dagster home at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from feature_pipelines.cli import main

ROOT = Path(__file__).resolve().parent.parent

FEATURES = '''
import polars as pl
from feature_pipelines import Entity, Rolling, Source, feature, greater_than_or_equal

shop = Entity("shop", join_key="shop_id")
sales = Source("sales.parquet", timestamp="ts", base="data")


@feature(entities=[shop], source=sales, granularity="daily", start="2024-01-01", end="2024-01-11",
         metrics=[Rolling(windows=["2d"], aggregations={"amount": ["sum"]})],
         validators={"amount": [greater_than_or_equal(0)]})
def shop_sales(events: pl.LazyFrame) -> pl.LazyFrame:
    return events


@feature(entities=[shop], source=sales, granularity="daily", start="2024-01-01", end="2024-01-11",
         metrics=[Rolling(windows=["2d"], aggregations={"amount": ["count"]})],
         validators={"refund_reason": [greater_than_or_equal(0)]})
def shop_refunds(events: pl.LazyFrame) -> pl.LazyFrame:
    return events
'''


def _sales(path: Path, *, negative_on: str | None = None, string_ts: bool = False) -> None:
    rng = np.random.default_rng(3)
    n = 400
    ts = [datetime(2024, 1, 1) + timedelta(minutes=int(m)) for m in rng.integers(0, 10 * 24 * 60, n)]
    amount = rng.uniform(1, 50, n)
    if negative_on:
        day = datetime.fromisoformat(negative_on)
        amount = np.where([day <= t < day + timedelta(days=1) for t in ts], -amount, amount)
    frame = pl.DataFrame({"shop_id": rng.integers(0, 4, n).astype(str), "ts": ts, "amount": amount})
    if string_ts:
        frame = frame.with_columns(pl.col("ts").dt.to_string("%Y-%m-%d %H:%M:%S"))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project of its own with two features; the working directory is its root."""
    for var in ("FEATURE_PIPELINES_ENV_DIR", "FEATURE_PIPELINES_PROFILE", "FEATURE_PIPELINES_DATA_DIR", "FEATURE_PIPELINES_PACKAGE"):
        monkeypatch.delenv(var, raising=False)
    package = f"shop_{tmp_path.name.replace('-', '_')}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "features.py").write_text(FEATURES)
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "shop"\n\n[tool.feature_pipelines]\npackage = "{package}"\n')
    _sales(tmp_path / "data" / "sales.parquet")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_PIPELINES_")}
    return subprocess.run([sys.executable, "-m", "feature_pipelines.cli", *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


def test_a_failing_validator_shows_its_rows_and_ends_with_the_cause(shop: Path) -> None:
    _sales(shop / "data" / "sales.parquet", negative_on="2024-01-03")
    done = _cli(shop, "build", "--features", "shop_sales", "--start", "2024-01-01", "--end", "2024-01-05")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: building shop_sales failed") and "amount is >= 0" in lines[-1], done.stderr
    assert "| shop_id | amount |" in done.stderr  # the failing-row sample
    assert "Traceback" not in done.stderr and "DagsterExecutionStepExecutionError" not in done.stderr
    assert len(lines) < 15, done.stderr
    assert not (shop / "feature_store" / "shop_sales").exists()  # nothing written
    verbose = _cli(shop, "build", "--features", "shop_sales", "--start", "2024-01-01", "--end", "2024-01-05", "--verbose")
    cause = lines[-1].split("): ", 1)[1]  # the run id differs between the two runs
    assert verbose.returncode == 2 and verbose.stderr.strip().splitlines()[-1].endswith(cause)
    assert "dagster" in verbose.stderr.lower() and len(verbose.stderr.splitlines()) > len(lines)


def test_a_validator_on_a_missing_column_is_caught_before_any_compute(shop: Path) -> None:
    done = _cli(shop, "build", "--features", "shop_refunds", "--partition", "2024-01-02")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "has no column 'refund_reason' (a validator)" in last and "Nothing was computed" in last, done.stderr
    assert "Traceback" not in done.stderr


def test_a_wrong_timestamp_dtype_reads_in_one_line(shop: Path) -> None:
    _sales(shop / "data" / "sales.parquet", string_ts=True)
    done = _cli(shop, "build", "--features", "shop_sales", "--partition", "2024-01-02")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "timestamp column 'ts' has dtype String, expected Datetime" in last, done.stderr
    assert len(done.stderr.strip().splitlines()) < 5


def test_range_defaults_and_a_reversed_range(shop: Path, capsys) -> None:
    assert main(["build", "--features", "shop_sales", "--start", "2024-01-05", "--end", "2024-01-02"]) == 2
    assert "--start 2024-01-05 is after --end 2024-01-02" in capsys.readouterr().err
    assert main(["build", "--features", "shop_sales", "--partition", "2024-01-02", "--end", "2024-01-03"]) == 2
    assert "either --partition or --start/--end" in capsys.readouterr().err
    # --start alone: from there to the feature's last partition (its end is 2024-01-11, exclusive).
    assert main(["build", "--features", "shop_sales", "--start", "2024-01-08"]) == 0
    assert "3 partition(s) 2024-01-08 … 2024-01-10" in capsys.readouterr().out
    # No range: every partition of the feature.
    assert main(["build", "--features", "shop_sales"]) == 0
    assert "10 partition(s) 2024-01-01 … 2024-01-10" in capsys.readouterr().out
    manifest = json.loads((shop / "feature_store" / "shop_sales" / "_latest.json").read_text())
    assert sorted(manifest["partitions"]) == [f"2024-01-{d:02d}" for d in range(1, 11)]
    assert main(["build", "--features", "shop_sales", "--partition", "2024-01-11"]) == 2
    assert "--start '2024-01-11' is not a partition of 'shop_sales'" in capsys.readouterr().err
    assert main(["publish", "--features", "shop_sales", "--start", "2024-01-05", "--end", "2024-01-02"]) == 2


def test_eight_builds_at_once_on_a_fresh_dagster_home(shop: Path) -> None:
    """CI jobs started together on a new DAGSTER_HOME: the first initializes it under a lock, all eight succeed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_PIPELINES_")}
    procs = [subprocess.Popen([sys.executable, "-m", "feature_pipelines.cli", "build", "--features", "shop_sales", "--partition",
                               f"2024-01-{d:02d}"], cwd=shop, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in range(1, 9)]
    outcomes = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]
    assert all(code == 0 for code, _, _ in outcomes), [o for o in outcomes if o[0]]
    with dg.DagsterInstance.from_config(str(shop / "dagster_home")) as instance:
        runs = instance.get_runs()
    assert len(runs) == 8 and all(r.is_success for r in runs)
    manifest = json.loads((shop / "feature_store" / "shop_sales" / "_latest.json").read_text())
    assert sorted(manifest["partitions"]) == [f"2024-01-{d:02d}" for d in range(1, 9)]


def test_a_killed_build_is_marked_failed_by_the_next_one(shop: Path) -> None:
    """No run monitor watches a run executing inside the CLI process: the next CLI build marks it failed."""
    import signal

    from feature_pipelines_tests.servers import wait_for

    _sales(shop / "data" / "sales.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURE_PIPELINES_")}
    # A validator that sleeps keeps the run in STARTED long enough to kill it there.
    (shop / next(p for p in os.listdir(shop) if p.startswith("shop_")) / "slow.py").write_text(
        "import time\nimport polars as pl\nfrom feature_pipelines import Entity, Rolling, Source, feature\n\n"
        "@feature(entities=[Entity('shop', join_key='shop_id')], source=Source('sales.parquet', timestamp='ts', base='data'),\n"
        "         start='2024-01-01', end='2024-01-11', metrics=[Rolling(['2d'], {'amount': ['sum']})])\n"
        "def slow_sales(events: pl.LazyFrame) -> pl.LazyFrame:\n"
        "    time.sleep(120)\n    return events\n")
    proc = subprocess.Popen([sys.executable, "-m", "feature_pipelines.cli", "build", "--features", "slow_sales", "--partition", "2024-01-02"],
                            cwd=shop, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def started():
        # Only once the CLI has created the instance's storage (opening it meanwhile would race its migrations).
        if not (shop / "dagster_home" / ".feature_pipelines.initialized").exists():
            return None
        with dg.DagsterInstance.from_config(str(shop / "dagster_home")) as instance:
            runs = instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
        return runs[0] if runs else None

    run = wait_for(started, what="the build's run to start", timeout=120, alive=lambda: proc.poll() is None)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = _cli(shop, "build", "--features", "shop_sales", "--partition", "2024-01-02")
    assert done.returncode == 0, done.stderr
    with dg.DagsterInstance.from_config(str(shop / "dagster_home")) as instance:
        after = instance.get_run_by_id(run.run_id)
        messages = [e.message for e in instance.all_logs(run.run_id) if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
    assert after.status == dg.DagsterRunStatus.FAILURE
    assert any(f"pid {proc.pid}" in (m or "") for m in messages), messages
