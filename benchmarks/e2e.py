"""What a user runs, as a whole process: a year backfill through the CLI and through `dg launch`.

build_year_e2e — `feature-pipelines build` of a year of daily `customer_spend` (7d, 30d × 6 aggregations; 1,000,000
                 transactions, 10,000 customers) into a fresh store and a fresh Dagster instance, timed from process
                 start to exit; floor: a whole process that imports polars and the engine, computes the same year and
                 writes the same partition files with plain polars. Interleaved runs, median of each.
                 Beside it: `dg launch --assets customer_spend --partition-range ...` for the same year.

Usage: python benchmarks/e2e.py [--repeat 3]  (or make bench ONLY=build_year_e2e)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

FEATURES = '''
from feature_pipelines import Entity, Feature, Rolling, Source

customer_spend = Feature(name="customer_spend", entities=[Entity("customer", join_key="customer_id")],
                         source=Source("events.parquet", timestamp="ts"), start="2024-01-01", end="2024-12-31",
                         metrics=[Rolling(["7d", "30d"], {"amount": ["sum", "mean", "count", "std", "min", "max"]})])
'''

# The floor: the engine's frames written as one parquet file per partition, nothing else.
FLOOR = '''
import sys
from pathlib import Path
sys.path.insert(0, ".")
from feature_pipelines.engine import PolarsEngine
from yearbench import customer_spend
from datetime import date, timedelta
keys = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(365)]
out = Path("floor_store")
out.mkdir()
for key, frame in PolarsEngine().compute(customer_spend, keys).items():
    frame.write_parquet(out / f"{key}.parquet")
'''


def _project(where: Path) -> Path:
    from run import _events  # noqa: PLC0415  (benchmarks/run.py's generator: the same data as build_year)

    (where / "yearbench").mkdir(parents=True)
    (where / "yearbench" / "__init__.py").write_text(FEATURES)
    (where / "pyproject.toml").write_text('[project]\nname = "yearbench"\n\n[tool.feature_pipelines]\npackage = "yearbench"\n\n'
                                          '[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "yearbench"\n'
                                          'code_location_target_module = "yearbench.definitions"\n')
    (where / "yearbench" / "definitions.py").write_text("from feature_pipelines import build_defs\n\ndefs = build_defs('yearbench')\n")
    _events(where / "events.parquet", 1_000_000, 10_000, 365, "2024-01-01")
    return where


def _timed(command: list[str], cwd: Path, env: dict) -> float:
    """Seconds for one whole process, on a fresh store; the Dagster instance is the project's own, kept between runs
    (as a user's is), set up with the dagster.yaml a new project gets from `feature-pipelines`."""
    for leftover in ("feature_store", "floor_store"):
        shutil.rmtree(cwd / leftover, ignore_errors=True)
    if not (cwd / "dagster_home").exists():
        (cwd / "dagster_home").mkdir()
        from feature_pipelines.cli import _INSTANCE_YAML  # noqa: PLC0415

        (cwd / "dagster_home" / "dagster.yaml").write_text(_INSTANCE_YAML)
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return elapsed


def build_year_e2e(tmp: Path, repeat: int = 3) -> dict:
    """The CLI year backfill vs the floor process, interleaved; `dg launch` of the same range beside them."""
    bin_dir = Path(sys.executable).parent
    project = _project(tmp / "e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATURE_PIPELINES_", "DAGSTER_EVENT_BATCH"))}
    env.update(DAGSTER_HOME=str(project / "dagster_home"), PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    cli = [str(bin_dir / "feature-pipelines"), "build", "--start", "2024-01-01", "--end", "2024-12-30"]
    floor = [sys.executable, "-c", FLOOR]
    launch = [str(bin_dir / "dg"), "launch", "--assets", "customer_spend", "--partition-range", "2024-01-01...2024-12-30"]
    ours, floors, dg_times = [], [], []
    for _ in range(repeat):  # interleaved, so drift on a shared machine hits all three alike
        ours.append(_timed(cli, project, env))
        floors.append(_timed(floor, project, env))
        dg_times.append(_timed(launch, project, env))
    value, base, dg_value = statistics.median(ours), statistics.median(floors), statistics.median(dg_times)
    return {"workload": "build_year_e2e", "metric": "seconds", "value": round(value, 2), "floor": round(base, 2),
            "ratio": round(value / base, 2), "dg_launch_seconds": round(dg_value, 2), "dg_launch_ratio": round(dg_value / base, 2),
            "runs": repeat, "cli_runs": [round(t, 2) for t in ours], "floor_runs": [round(t, 2) for t in floors],
            "dg_launch_runs": [round(t, 2) for t in dg_times], "partitions": 365,
            "note": "whole processes: CLI build / dg launch into a fresh store and an existing instance; floor: engine + plain write_parquet",
            "machine": f"{os.cpu_count()} cores"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(build_year_e2e(Path(tmp), args.repeat)), flush=True)


if __name__ == "__main__":
    main()
