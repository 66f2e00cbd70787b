"""The README runs as written: after `make demo`'s script, every shell command and Python snippet of it runs on the
demo's store, in a copy of this repository (so the developer's own store and Dagster instance are never touched).

Skipped, with the test that covers each instead: `make` (CI runs `make test`; this test runs the demo's script),
the "your own project" install commands (test_adoption.py) and the staging profile commands, which need S3 and
Redis servers (test_serving.py). The serve block runs against the demo's store on a free port instead of 8080.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_IN_COPY = {".git", ".venv", "build", "data", "feature_store", ".dagster_home", "__pycache__", ".hypothesis"}


def _blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in re.finditer(r"```(\w*)\n(.*?)```", text, re.S)]


def _commands(block: str) -> list[str]:
    """Logical shell lines (continuations joined), comments kept (bash ignores them)."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.strip().startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    """A copy of the repository where examples/demo.py (what `make demo` runs) has built and published the example."""
    from feature_pipelines.defs.sample_data import write_transactions

    copy = tmp_path_factory.mktemp("repo")
    shutil.copytree(ROOT, copy, dirs_exist_ok=True, symlinks=True,
                    ignore=lambda d, names: [n for n in names if n in SKIP_IN_COPY or n.endswith(".egg-info") or n.startswith("online_store")])
    (copy / ".venv").symlink_to(ROOT / ".venv")
    data = tmp_path_factory.mktemp("data")
    write_transactions(data / "transactions.parquet", rows=30_000, customers=300, days=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FEATURE_PIPELINES_", "DAGSTER_HOME"))}
    env["FEATURE_PIPELINES_DATA_DIR"] = str(data)
    env["DAGSTER_HOME"] = str(copy / ".dagster_home")
    done = subprocess.run([str(copy / ".venv" / "bin" / "python"), "examples/demo.py"], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "An online lookup" in done.stdout
    # `my_project.features` of the "your own project" Python snippet: a package of that name with one feature.
    (copy / "my_project" / "features").mkdir(parents=True)
    (copy / "my_project" / "__init__.py").write_text("")
    (copy / "my_project" / "features" / "__init__.py").write_text("from feature_pipelines.defs.fraud import customer_spend  # noqa: F401\n")
    return copy, env


def _readme(copy: Path) -> str:
    return (copy / "README.md").read_text()


def test_every_python_snippet_runs(demo) -> None:
    copy, env = demo
    snippets = [code for lang, code in _blocks(_readme(copy)) if lang == "python"]
    assert len(snippets) >= 4
    for code in snippets:
        ran = subprocess.run([str(copy / ".venv" / "bin" / "python"), "-c", code], cwd=copy, env={**env, "PYTHONPATH": str(copy)},
                             capture_output=True, text=True, timeout=600)
        assert ran.returncode == 0, f"README snippet failed:\n{code}\n{ran.stderr[-3000:]}"


def test_every_shell_command_runs(demo) -> None:
    copy, env = demo
    ran_any = 0
    for lang, block in _blocks(_readme(copy)):
        if lang != "bash" or "make demo" in block or "pip install" in block or "--profile staging" in block or " serve " in block:
            continue
        for command in _commands(block):
            done = subprocess.run(["bash", "-c", f"set -e\n{command}"], cwd=copy, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"README command failed: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
            ran_any += 1
    assert ran_any >= 10


def test_the_serve_block_answers(demo) -> None:
    copy, env = demo
    block = next(b for lang, b in _blocks(_readme(copy)) if lang == "bash" and " serve " in b and "--profile staging" not in b)
    port = str(_free_port())
    commands = [c.replace("8080", port) for c in _commands(block)]
    serve = subprocess.Popen(["bash", "-c", f"exec {commands[0]}"], cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", int(port))) == 0:
                    break
            assert serve.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.3)
        for command in commands[1:]:
            done = subprocess.run(["bash", "-c", f"set -e\n{command.replace('curl -s', 'curl -sf')}"], cwd=copy, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 and done.stdout, f"README command failed: {command}\n{done.stderr}"
    finally:
        os.killpg(serve.pid, 15)
        serve.wait(timeout=60)
