"""A throwaway PostgreSQL for tests, created (initdb) and started by the test, stopped by its own handle."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from feature_pipelines_tests.servers import free_port



@dataclass
class PostgresProcess:
    """One PostgreSQL cluster this process created (initdb) and started, in its own temp dir."""

    process: subprocess.Popen
    port: int
    dir: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Fast shutdown by the postmaster's own handle (SIGINT), then kill if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL bin dir (initdb, postgres), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


@contextmanager
def postgres_server() -> Iterator[PostgresProcess]:
    """A throwaway PostgreSQL on a free loopback port with trust auth; skips the test without the binaries.

    PostgreSQL refuses to run as root, so as root the cluster belongs to (and runs as) the `postgres` user.
    """
    import pwd

    bindir = postgres_bin()
    if bindir is None:
        import pytest  # noqa: PLC0415

        pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql (Debian package postgresql)")
    workdir = Path(tempfile.mkdtemp(prefix="fp-pg-"))
    data = workdir / "data"
    as_user: dict = {}
    if os.geteuid() == 0:
        # The child itself becomes `postgres` (no runuser wrapper), so our handle is the postmaster's pid.
        account = pwd.getpwnam("postgres")
        os.chown(workdir, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "env": {**os.environ, "HOME": str(workdir)}}
    subprocess.run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120, cwd=workdir, **as_user)
    port = free_port()
    process = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1", "-k", str(workdir)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, **as_user)
    server = PostgresProcess(process, port, workdir)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode != 0:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{port}")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
