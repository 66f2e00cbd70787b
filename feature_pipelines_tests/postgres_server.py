"""A throwaway PostgreSQL for tests, created (initdb) and started by the test, stopped by its own handle.

Trust authentication by default; `postgres_server(password=...)` makes the `postgres` user need that
password (scram-sha-256) over TCP, for tests of credential handling. `stop()` and `start()` restart
the same cluster on the same port, for tests of a server that goes away and comes back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from feature_pipelines_tests.servers import free_port


@dataclass
class PostgresProcess:
    """One PostgreSQL cluster this process created (initdb) and started, in its own temp dir."""

    process: subprocess.Popen
    port: int
    dir: Path
    bindir: Path | None = None
    as_user: dict = field(default_factory=dict)
    password: str | None = None

    @property
    def url(self) -> str:
        """SQLAlchemy-style URL (Dagster's PostgreSQL storage)."""
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def conninfo(self) -> str:
        """libpq URL for psycopg 3, without the password (tests pass it separately, or put it in on purpose)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        """Fast shutdown by the postmaster's own handle (SIGINT), then kill if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def start(self) -> None:
        """(Re)start the postmaster on the same data dir and port; wait until it accepts connections."""
        assert self.bindir is not None and self.process.poll() is not None, "start() is for a stopped cluster"
        self.process = _postmaster(self.bindir, self.dir, self.port, self.as_user)
        _wait_ready(self)


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL bin dir (initdb, postgres), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return found[-1].parent if found else None


def _postmaster(bindir: Path, workdir: Path, port: int, as_user: dict) -> subprocess.Popen:
    return subprocess.Popen([str(bindir / "postgres"), "-D", str(workdir / "data"), "-p", str(port), "-h", "127.0.0.1", "-k", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir, **as_user)


def _wait_ready(server: PostgresProcess) -> None:
    assert server.bindir is not None
    deadline = time.monotonic() + 30
    while subprocess.run([str(server.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(server.port)], capture_output=True).returncode != 0:
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1:{server.port}")
        time.sleep(0.1)


@contextmanager
def postgres_server(password: str | None = None) -> Iterator[PostgresProcess]:
    """A throwaway PostgreSQL on a free loopback port; skips the test without the binaries.

    Trust auth, or with `password` the `postgres` user needs it over TCP (scram-sha-256). PostgreSQL
    refuses to run as root, so as root the cluster belongs to (and runs as) the `postgres` user.
    """
    import pwd

    bindir = postgres_bin()
    if bindir is None:
        import pytest  # noqa: PLC0415

        pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql (Debian package postgresql)")
    workdir = Path(tempfile.mkdtemp(prefix="fp-pg-"))
    as_user: dict = {}
    if os.geteuid() == 0:
        # The child itself becomes `postgres` (no runuser wrapper), so our handle is the postmaster's pid.
        account = pwd.getpwnam("postgres")
        os.chown(workdir, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": [], "env": {**os.environ, "HOME": str(workdir)}}
    auth = ["--auth=trust"]
    if password is not None:
        pwfile = workdir / "pwfile"
        pwfile.write_text(password + "\n")
        if as_user:
            os.chown(pwfile, as_user["user"], as_user["group"])
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    subprocess.run([str(bindir / "initdb"), "-D", str(workdir / "data"), "-U", "postgres", *auth, "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120, cwd=workdir, **as_user)
    port = free_port()
    server = PostgresProcess(_postmaster(bindir, workdir, port, as_user), port, workdir, bindir, as_user, password)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
