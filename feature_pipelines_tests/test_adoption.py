"""A brand-new Dagster project adopts the library from its wheel, as a team would, under Python 3.11 and 3.13.

Nothing is copied from this repository: the project (its pyproject.toml, a package with one feature two
sub-packages down, its data) is written here, the wheel is installed into a fresh virtual environment, the
component is added with `dg scaffold defs`, and then `dg check defs`, `dg launch` (one partition and a range),
`feature-pipelines list/build/publish` and `FeatureStore()` training and online reads all run from the
project's folder. Slow (a virtual environment per Python), so it runs once per interpreter.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_IN_COPY = {".git", ".venv", "build", "data", "feature_store", ".dagster_home", "__pycache__", ".hypothesis", "online_store.sqlite"}

FEATURE = '''
import polars as pl

from feature_pipelines import Entity, Rolling, Source, feature, not_null

store = Entity("store", join_key="store_id")
orders = Source("orders.parquet", timestamp="ts", base="data")


@feature(entities=[store], source=orders, granularity="daily", start="2024-01-01", end="2024-02-01",
         metrics=[Rolling(windows=["3d"], aggregations={"total": ["sum", "count"]})],
         validators={"store_id": [not_null()]}, online=True)
def store_sales(events: pl.LazyFrame) -> pl.LazyFrame:
    """Takings per store over the last three days."""
    return events
'''

READ = '''
import json
from datetime import datetime, timezone

import polars as pl

from feature_pipelines import FeatureStore

fs = FeatureStore()
labels = pl.DataFrame({"store_id": ["s1", "s2", "nope"], "t": [datetime(2024, 1, 5, 12, tzinfo=timezone.utc)] * 3})
train = fs.get_training_data(["store_sales"], labels, timestamp="t")
online = fs.get_online_features(["store_sales"], [{"store_id": "s1"}, {"store_id": "nope"}])
fs.close()
print(json.dumps({"train": train["store_sales__total_count_3d"].to_list(), "online": online["store_sales__total_count_3d"].to_list()}))
'''


def _interpreter(version: str) -> str | None:
    """A working python<version>: pyenv's own builds first (a pyenv shim on PATH may refuse to run it), then PATH."""
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")), reverse=True)
    candidates += [found] if (found := shutil.which(f"python{version}")) else []
    for candidate in candidates:
        if subprocess.run([candidate, "-c", "import venv"], capture_output=True, timeout=60).returncode == 0:
            return candidate
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The library's wheel, built from a clean copy of this tree (no build/ or egg-info leftovers)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(ROOT, src, dirs_exist_ok=True,
                    ignore=lambda d, names: [n for n in names if n in SKIP_IN_COPY or n.endswith(".egg-info")])
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    path = next(out.glob("feature_pipelines-*.whl"))
    names = zipfile.ZipFile(path).namelist()
    assert "feature_pipelines/orchestration/component.py" in names
    assert not [n for n in names if n.startswith("feature_pipelines/defs/")], "the fraud example must stay out of the wheel"
    return path


def _project(root: Path) -> None:
    """A Dagster project of a team's own, written from scratch."""
    (root / "pyproject.toml").write_text(textwrap.dedent('''
        [project]
        name = "shop"
        version = "0.1.0"
        requires-python = ">=3.11"
        dependencies = ["feature_pipelines"]

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "shop"

        [tool.feature_pipelines]
        package = "shop.features"
    '''))
    for rel in ("shop/__init__.py", "shop/defs/__init__.py", "shop/features/__init__.py", "shop/features/sales/__init__.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")
    (root / "shop" / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\ndefs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n")
    (root / "shop" / "features" / "sales" / "orders.py").write_text(FEATURE)


@pytest.mark.parametrize("version", ["3.11", "3.13"])
def test_a_new_dagster_project_adopts_the_wheel(version: str, wheel: Path, tmp_path: Path) -> None:
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this machine (looked for python{version} on PATH and under ~/.pyenv)")
    venv = tmp_path / "venv"
    made = subprocess.run([python, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                         capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]

    project = tmp_path / "shop_project"
    project.mkdir()
    _project(project)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATURE_PIPELINES_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), DAGSTER_HOME=str(home))

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(list(args), cwd=project, env=env, capture_output=True, text=True, timeout=600)
        if check:
            assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        return done

    # Example data of the project's own.
    run("python", "-c", textwrap.dedent('''
        from datetime import datetime, timedelta
        from pathlib import Path
        import numpy as np, polars as pl
        rng = np.random.default_rng(1)
        n = 2000
        Path("data").mkdir()
        pl.DataFrame({"store_id": [f"s{i}" for i in rng.integers(0, 5, n)],
                      "ts": [datetime(2024, 1, 1) + timedelta(minutes=int(m)) for m in rng.integers(0, 30 * 24 * 60, n)],
                      "total": rng.random(n) * 100}).write_parquet("data/orders.parquet")
    '''))

    run("dg", "scaffold", "defs", "feature_pipelines.FeatureStoreComponent", "feature_store")
    scaffolded = (project / "shop" / "defs" / "feature_store" / "defs.yaml").read_text()
    assert "type: feature_pipelines.FeatureStoreComponent" in scaffolded and "package: shop.features" in scaffolded
    run("dg", "check", "defs")

    run("dg", "launch", "--assets", "store_sales", "--partition", "2024-01-05")
    manifest = json.loads((project / "feature_store" / "store_sales" / "_latest.json").read_text())
    assert list(manifest["partitions"]) == ["2024-01-05"] and manifest["version"] == "1.0.0"
    run("dg", "launch", "--assets", "store_sales", "--partition-range", "2024-01-01...2024-01-10")
    manifest = json.loads((project / "feature_store" / "store_sales" / "_latest.json").read_text())
    assert len(manifest["partitions"]) == 10

    listed = run("feature-pipelines", "list").stdout
    assert "store_sales" in listed and "customer_spend" not in listed and "1.0.0" in listed
    built = run("feature-pipelines", "build", "--start", "2024-01-01", "--end", "2024-01-20").stdout
    assert "store_sales: 20 partition(s)" in built, built
    published = run("feature-pipelines", "publish").stdout
    assert "5 entities → 5 written" in published and str(project / "online_store.sqlite") in published, published

    read = json.loads(run("python", "-c", READ).stdout.strip().splitlines()[-1])
    assert read["train"][0] > 0 and read["train"][1] > 0 and read["train"][2] is None
    assert read["online"][0] > 0 and read["online"][1] is None

    # A wrong store setting fails `dg check defs` at load time, with the cause on the last lines.
    (project / "shop" / "defs" / "feature_store" / "defs.yaml").write_text(
        "type: feature_pipelines.FeatureStoreComponent\nattributes:\n  package: shop.features\n  offline_store: {kind: s3}\n")
    broken = run("dg", "check", "defs", check=False)
    assert broken.returncode != 0
    assert "offline_store kind 's3' needs `bucket`" in broken.stdout + broken.stderr, broken.stderr[-3000:]
