"""A real Dagster UI for browser tests: a small feature project in a folder, some partitions materialized
into its own Dagster home, `dg dev` serving it on a free loopback port, and headless Debian chromium
driven by Selenium through the system chromedriver (never selenium-manager: nothing is downloaded).

`dg dev` runs a webserver, a daemon and code servers: it is started in its own session and stopped as a
process group (SIGINT, then SIGKILL), like `make dev` stopped with Ctrl-C.
"""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from feature_pipelines_tests.servers import free_port, wait_for

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
DEV_INSTANCE = Path(__file__).resolve().parent.parent / "dagster.yaml"

FEATURE = "card_spend"
SOURCE = "card_events"
BAD_DAY = "2024-01-06"  # some negative amounts: the blocking check fails, nothing is written
RUNS = (("2024-01-01", "2024-01-05"), (BAD_DAY, BAD_DAY), ("2024-01-07", "2024-01-10"))  # one run each, the failing one between
DRIFT_DAY = "2024-01-10"  # amounts ten times larger: the drift check warns

LOCATION = '''
"""The code location `dg dev -f location.py` serves: one feature with a validator, stores in this folder."""
from pathlib import Path

from feature_pipelines import Entity, Feature, Rolling, Source, build_defs, greater_than_or_equal
from feature_pipelines.orchestration.resources import LocalStoreResource, SQLiteOnlineStoreResource
from feature_pipelines.registry import Registry

ROOT = Path(__file__).resolve().parent
FEATURE = Feature(
    name={feature!r}, description="What a card holder spent, per day and per week.",
    entities=[Entity("customer", join_key="customer_id")],
    source=Source(str(ROOT / "{source}.parquet"), timestamp="ts"),
    start="2024-01-01", end="2024-02-01",
    metrics=[Rolling(["1d", "7d"], {{"amount": ["sum", "count"]}})],
    validators={{"amount": [greater_than_or_equal(0)]}},
    owner="team:fraud", tags={{"domain": "fraud"}},
)
defs = build_defs(Registry.of([FEATURE]), offline_store=LocalStoreResource(path=str(ROOT / "store")),
                  online_store=SQLiteOnlineStoreResource(path=str(ROOT / "online.sqlite")), automation="none")
'''


def write_events(path: Path) -> None:
    """400 customers with amounts around 50 every day from 2023-12-20 (every window full from the first partition);
    a few negative amounts on BAD_DAY, amounts ten times larger on DRIFT_DAY."""
    rng = np.random.default_rng(7)
    n = 60_000
    start = np.datetime64("2023-12-20T00:00:00", "us")
    ts = start + rng.integers(0, 24 * 86_400_000_000, n).astype("timedelta64[us]")
    amount = rng.normal(50, 10, n).clip(0.01)
    day = ts.astype("datetime64[D]")
    amount = np.where(day == np.datetime64(DRIFT_DAY), amount * 10, amount)
    bad = np.flatnonzero(day == np.datetime64(BAD_DAY))[:3]
    amount[bad] = -amount[bad]
    pl.DataFrame({"customer_id": rng.integers(0, 400, n).astype(str), "ts": ts, "amount": amount}).write_parquet(path)


@dataclass
class Project:
    root: Path
    home: Path  # DAGSTER_HOME shared by the materializations and `dg dev`

    @property
    def location(self) -> Path:
        return self.root / "location.py"


def make_project(root: Path) -> Project:
    """location.py, its data and a Dagster home (SQLite storage under it)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "location.py").write_text(textwrap.dedent(LOCATION.format(feature=FEATURE, source=SOURCE)).lstrip())
    write_events(root / f"{SOURCE}.parquet")
    home = root / "dagster_home"
    home.mkdir(exist_ok=True)
    # The instance `make dev` uses (this repository's dagster.yaml: SQLite under $DAGSTER_HOME, a run's asset events in one
    # transaction), without telemetry and without the first-visit "Join the Dagster community" dialog over the pages.
    config = yaml.safe_load(DEV_INSTANCE.read_text()) if DEV_INSTANCE.exists() else {
        "storage": {"sqlite": {"base_dir": {"env": "DAGSTER_HOME"}}}}
    config.update(telemetry={"enabled": False}, nux={"enabled": False})
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return Project(root, home)


def materialize(project: Project) -> list[bool]:
    """RUNS in order, in-process against the project's Dagster home (the caller sets DAGSTER_HOME to it), as
    `dg launch --partition-range` would run them. Returns each run's success."""
    import dagster as dg

    defs = runpy.run_path(str(project.location))["defs"]
    job = defs.resolve_job_def(f"{FEATURE}_job")
    results = []
    with dg.DagsterInstance.get() as instance:
        assert Path(instance.root_directory).resolve() == project.home.resolve(), instance.root_directory
        for first, last in RUNS:
            result = job.execute_in_process(instance=instance, raise_on_error=False, tags={
                "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last})
            results.append(result.success)
    return results


@contextmanager
def dg_dev(project: Project) -> Iterator[str]:
    """`dg dev -f location.py` on a free loopback port (log: dg_dev.log in the project); yields its base URL once the
    webserver answers (the code location may still be loading). Stops the whole process group it started."""
    port = free_port()
    log_path = project.root / "dg_dev.log"
    log = log_path.open("wb")
    env = {**os.environ, "DAGSTER_HOME": str(project.home)}
    # A shell that started us in the background (`cmd &`) ignores SIGINT, and an ignored signal stays ignored across
    # exec: `dg dev` would shrug off the SIGINT that stops it gracefully. A handled one is reset to the default in the child.
    ignored = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        dev = subprocess.Popen([str(Path(sys.executable).with_name("dg")), "dev", "-f", "location.py", "--host", "127.0.0.1",
                                "--port", str(port)], cwd=project.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(f"{base}/server_info", timeout=5).read(), what="dg dev serving", timeout=180,
                 alive=lambda: dev.poll() is None, detail=lambda: log_path.read_text(errors="replace")[-3000:], interval=0.5)
        yield base
    finally:
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(dev.pid, sig)
            except ProcessLookupError:
                break
            try:
                dev.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(dev.pid, signal.SIGKILL)  # code servers may outlive `dg dev` itself
        except ProcessLookupError:
            pass
        log.close()


@contextmanager
def chromium(width: int = 1600, height: int = 1100):
    """Headless Debian chromium through /usr/bin/chromedriver, with a fresh profile and no background networking.

    Both paths are given, so selenium-manager has nothing to look up; SE_OFFLINE=1 forbids it any download anyway."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "1"
    profile = tempfile.mkdtemp(prefix="fp-chromium-")
    try:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-default-apps", "--disable-extensions", "--mute-audio", f"--window-size={width},{height}",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        try:
            driver.set_window_size(width, height)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        if offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = offline
