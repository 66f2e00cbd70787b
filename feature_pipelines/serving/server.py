"""Running the serving app: uvicorn with worker processes, a real listen backlog, timeouts, TLS and clean shutdown.

`serve(ServeOptions(...))` is what `feature-pipelines serve` runs. It binds the socket itself
(listen backlog 2048 by default, so a burst of connections queues instead of being refused), then
runs uvicorn in this process (`workers=1`) or as N worker processes sharing that socket (uvicorn's
supervisor: a dead worker is replaced). Each worker builds its own app from `create_app()` — one
FeatureStore, one fixed thread pool — with the options handed over in $FEATURE_PIPELINES_SERVE_OPTIONS;
the project and profile reach it through the environment it inherits.

Timeouts: `keep_alive_timeout` closes idle connections (also new ones that never send a request),
`request_timeout` bounds the time to receive a whole request (408), `store_timeout` the time to
answer one from the store (503), `graceful_timeout` how long SIGTERM/SIGINT waits for requests in
flight before closing their connections; the process then exits 0.

`make_server(store, host, port)` is the embedded form: one FeatureStore you already have, one
uvicorn server in the calling thread (`serve_forever()`, `shutdown()` from another thread).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from feature_pipelines.errors import FeaturePipelinesError
from feature_pipelines.serving.app import MAX_BATCH, ServingApp
from feature_pipelines.serving.metrics import MULTIPROC_ENV
from feature_pipelines.serving.protocol import ServingProtocol, configure

OPTIONS_ENV = "FEATURE_PIPELINES_SERVE_OPTIONS"
APP = "feature_pipelines.serving.server:create_app"


@dataclass
class ServeOptions:
    """Everything `serve` needs; defaults are the CLI's."""

    host: str = "127.0.0.1"
    port: int = 8080
    profile: str | None = None
    workers: int = 1
    threads: int = 4
    """Store threads per worker: the most concurrent store reads, and store connections, per worker."""
    max_batch: int = MAX_BATCH
    max_body: int | None = None
    """Body size limit in bytes (default: 1 MiB, or 1 KiB per allowed entity when that is more)."""
    backlog: int = 2048
    keep_alive_timeout: float = 5.0
    request_timeout: float = 10.0
    store_timeout: float = 5.0
    graceful_timeout: float = 10.0
    tls_cert: str | None = None
    tls_key: str | None = None
    max_in_flight: int | None = None
    """Most requests in progress per worker (waiting for or using a store thread); past it, 503 at once. None: no limit."""
    log_level: str = "warning"

    def check(self) -> None:
        for name in ("workers", "threads", "max_batch", "backlog"):
            if getattr(self, name) < 1:
                raise FeaturePipelinesError(f"serve: {name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("keep_alive_timeout", "request_timeout", "store_timeout", "graceful_timeout"):
            if not getattr(self, name) > 0:
                raise FeaturePipelinesError(f"serve: {name.replace('_', '-')} must be a positive number of seconds")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise FeaturePipelinesError("serve: TLS needs both --tls-cert and --tls-key")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise FeaturePipelinesError(f"serve: {name.replace('_', '-')} {path} is not a file")

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> ServeOptions:
        return cls(**json.loads(os.environ.get(OPTIONS_ENV) or "{}"))


def create_app() -> ServingApp:
    """The app of one worker process (uvicorn factory): options from $FEATURE_PIPELINES_SERVE_OPTIONS."""
    options = ServeOptions.from_env()
    configure(options.request_timeout)
    return ServingApp(profile=options.profile, max_batch=options.max_batch, max_body=options.max_body,
                      threads=options.threads, store_timeout=options.store_timeout, max_in_flight=options.max_in_flight)


def _config(app, options: ServeOptions, *, factory: bool, workers: int, embedded: bool = False):
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    return uvicorn.Config(
        # embedded: leave the host process's logging alone (uvicorn's own config would reconfigure its loggers)
        log_config=None if embedded else LOGGING_CONFIG,
        app=app, factory=factory, workers=workers, http=ServingProtocol, ws="none", lifespan="on", interface="asgi3",
        loop="auto", access_log=False, log_level=options.log_level, proxy_headers=False, server_header=False,
        backlog=options.backlog, timeout_keep_alive=options.keep_alive_timeout,  # type: ignore[arg-type] - a float works
        timeout_graceful_shutdown=options.graceful_timeout,  # type: ignore[arg-type]
        ssl_certfile=options.tls_cert, ssl_keyfile=options.tls_key)


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket (IPv6 when `host` has a ':'), inheritable by worker processes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise FeaturePipelinesError(f"serve: cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise the soft open-files limit towards the hard one (each connection is a file descriptor); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


def serve(options: ServeOptions, on_listening=None) -> None:
    """Serve until SIGTERM or SIGINT; `on_listening(url)` is called once the socket listens (before workers start)."""
    options.check()
    raise_fd_limit()
    sock = bind(options.host, options.port, options.backlog)
    saved = {name: os.environ.get(name) for name in (OPTIONS_ENV, MULTIPROC_ENV)}
    metrics_dir = None
    try:
        if options.workers > 1 and not os.environ.get(MULTIPROC_ENV):
            metrics_dir = tempfile.mkdtemp(prefix="fp-serve-metrics-")
            os.environ[MULTIPROC_ENV] = metrics_dir  # before any worker imports prometheus_client
        os.environ[OPTIONS_ENV] = options.to_env()
        port = sock.getsockname()[1]
        host = f"[{options.host}]" if ":" in options.host else options.host
        if on_listening is not None:
            on_listening(f"{options.scheme}://{host}:{port}")
        if options.workers == 1:
            _run_single(options, sock)
        else:
            _run_workers(options, sock)
    finally:
        sock.close()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


STARTUP_FAILURE = 3
"""uvicorn's exit status for a worker whose startup (here: the app's lifespan startup) failed."""


def _run_single(options: ServeOptions, sock: socket.socket) -> None:
    import uvicorn

    config = _config(APP, options, factory=True, workers=1)
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with this handler in place a SIGTERM
    # ends in a normal exit (status 0) instead of the default action (killed by the signal).
    previous = signal.signal(signal.SIGTERM, lambda *_: None) if threading.current_thread() is threading.main_thread() else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    except SystemExit as exit_:  # uvicorn exits this way when the app's startup fails
        if exit_.code != STARTUP_FAILURE:
            raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise FeaturePipelinesError("serve: the server did not start (see the log above)")


def _run_workers(options: ServeOptions, sock: socket.socket) -> None:
    from uvicorn.supervisors import Multiprocess

    config = _config(APP, options, factory=True, workers=options.workers)
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    except KeyboardInterrupt:
        pass
    if any(p.process.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise FeaturePipelinesError("serve: a worker failed to start (see the log above)")


class EmbeddedServer:
    """One uvicorn server for a FeatureStore you hold, run by `serve_forever()` in the calling thread."""

    def __init__(self, app: ServingApp, options: ServeOptions) -> None:
        import uvicorn

        options.check()
        configure(options.request_timeout)
        self._socket = bind(options.host, options.port, options.backlog)
        self.server_address = self._socket.getsockname()[:2]
        self.app = app
        self._server = uvicorn.Server(_config(app, options, factory=False, workers=1, embedded=True))
        self._done = threading.Event()

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._done.set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop serving (from another thread) and wait for `serve_forever` to return."""
        self._server.should_exit = True
        self._done.wait(timeout)

    def server_close(self) -> None:
        self._socket.close()


def make_server(store, host: str = "127.0.0.1", port: int = 8080, max_batch: int = MAX_BATCH, **options) -> EmbeddedServer:
    """A ready-to-run server for `store` (call `serve_forever()`); port 0 picks a free one (see `server_address`).

    `options` are ServeOptions fields (threads, store_timeout, request_timeout, keep_alive_timeout, tls_cert, ...).
    The store stays yours: the server does not close it.
    """
    opts = ServeOptions(host=host, port=port, max_batch=max_batch, **options)
    app = ServingApp(store, max_batch=opts.max_batch, max_body=opts.max_body, threads=opts.threads, store_timeout=opts.store_timeout,
                     max_in_flight=opts.max_in_flight)
    return EmbeddedServer(app, opts)


__all__ = ["EmbeddedServer", "ServeOptions", "create_app", "make_server", "serve"]
