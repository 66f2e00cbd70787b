"""The ASGI application of `feature-pipelines serve`: routing, bodies, status codes, and the thread pool that reads the store.

    GET  /health            liveness, the store is not touched: {"status": "ok", "online_store": "..."}
    GET  /ready             readiness, one real round trip to the online store: 200 {"status": "ready", ...} or 503 {"error": ...}
    GET  /features          the online features with their entity keys and columns
    POST /online-features   {"features": ["customer_spend", "merchant_spend:amount_sum_7d"],
                             "entities": [{"customer_id": "c1"}, {"customer_id": "c2"}]}
                         -> {"rows": [{"customer_id": "c1", "customer_spend__amount_sum_7d": 12.5, ...}, ...]}
    GET  /metrics           Prometheus text format
    GET  /openapi.json      the OpenAPI description

Every answer but /metrics is JSON; every error is {"error": "..."}: 400 malformed body or entity
values, 404 unknown feature or path, 405 wrong method (with Allow), 408 request too slow, 413 too
many entities or too large a body, 500 a bug, 503 online store unreachable or too slow.

One `FeatureStore` per process, shared by every connection; its blocking reads run on a fixed pool
of `threads` threads, so a worker holds at most `threads` store connections (SQLite: one per pool
thread; Redis: one read connection per pool thread, the pool capped at 2 x threads + 2), whatever
the number of clients. A read that does not finish within `store_timeout` seconds (including the
wait for a free thread) answers 503, so overload sheds instead of queueing without bound; with
`max_in_flight`, requests beyond that many in progress answer 503 at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from feature_pipelines.serving import lookup as _lookup
from feature_pipelines.serving import metrics
from feature_pipelines.serving.lookup import Reject
from feature_pipelines.serving.openapi import openapi_spec

log = logging.getLogger("feature_pipelines.serving")

MAX_BATCH = 1000

_JSON = [(b"content-type", b"application/json")]
_ROUTES: dict[str, tuple[str, ...]] = {
    "/health": ("GET", "HEAD"), "/ready": ("GET", "HEAD"), "/features": ("GET", "HEAD"), "/metrics": ("GET", "HEAD"),
    "/openapi.json": ("GET", "HEAD"), "/online-features": ("POST",),
}
_HINT = "try GET /health, /ready, /features, /metrics, /openapi.json or POST /online-features"


def default_max_body(max_batch: int) -> int:
    """1 MiB, or 1 KiB per allowed entity when that is more (a PII entity is ~100 bytes of JSON)."""
    return max(1024 * 1024, max_batch * 1024)


class ServingApp:
    """An ASGI 3 application serving a FeatureStore's online features.

    `store`: a FeatureStore to serve (not closed by the app); without one, the app opens
    `FeatureStore(profile)` on the project's registry at startup and closes it at shutdown.
    Startup and shutdown follow the ASGI lifespan protocol; under a server without lifespan the
    app starts on its first request.
    """

    def __init__(self, store=None, *, profile: str | None = None, max_batch: int = MAX_BATCH, max_body: int | None = None,
                 threads: int = 4, store_timeout: float = 5.0, max_in_flight: int | None = None) -> None:
        if threads < 1 or max_batch < 1:
            raise ValueError("threads and max_batch must be at least 1")
        self.store = store
        self.profile = profile
        self.owns_store = store is None
        self.max_batch = max_batch
        self.max_body = max_body or default_max_body(max_batch)
        self.threads = threads
        self.store_timeout = store_timeout
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._lock = threading.Lock()
        self.description = "not opened"
        self._executor: ThreadPoolExecutor | None = None
        self._started: asyncio.Future | None = None
        self._static: dict[str, bytes] = {}
        self._keys: frozenset[str] = frozenset()

    # -- lifespan ---------------------------------------------------------------------------

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        # websocket scopes are not served (the server runs with ws="none")

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as err:
                    log.exception("serving failed to start")
                    await send({"type": "lifespan.startup.failed", "message": f"{type(err).__name__}: {err}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Open the store (once), start the thread pool, build the static answers."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                await self._start()
            except BaseException as err:
                self._started.set_exception(err)
                self._started.exception()  # mark retrieved: the caller gets `err` itself
                self._started = None
                raise
            self._started.set_result(None)
        else:
            await self._started

    async def _start(self) -> None:
        if self.store is None:
            from feature_pipelines.retrieval import FeatureStore

            self.store = FeatureStore(self.profile)
        self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="fp-serve")
        # Opened on a pool thread: an SQLite store's first connection then belongs to a thread that reads.
        self.description = await asyncio.get_running_loop().run_in_executor(self._executor, self._open_online)
        registry = self.store.registry
        self._keys = _lookup.join_key_names(registry)
        self._static = {"/features": json.dumps(_lookup.features_listing(registry)).encode(),
                        "/openapi.json": json.dumps(openapi_spec(self.max_batch, self.max_body)).encode(),
                        "/health": json.dumps({"status": "ok", "online_store": self.description}).encode()}

    def _open_online(self) -> str:
        try:
            return self._bounded(self.store.online)
        except Exception as err:  # noqa: BLE001 - any failure to open (e.g. an SQLite folder that cannot be created): /ready says so
            log.warning("online store not opened yet: %s", err)
            return f"unavailable ({err})"

    def _bounded(self, online) -> str:
        """Cap a Redis store's connection pool for this worker; the store's description."""
        # Reads run on `threads` pool threads, each holding at most its read connection plus one pooled one.
        # (RedisOnlineStore takes no max_connections yet, hence the private client; other stores have no such pool.)
        # A store handed in by the caller may have other users in this process: left as it is.
        pool = getattr(getattr(online, "_client", None), "connection_pool", None) if self.owns_store else None
        if pool is not None and isinstance(getattr(pool, "max_connections", None), int):
            pool.max_connections = min(pool.max_connections, 2 * self.threads + 2)
        return online.description

    async def shutdown(self) -> None:
        """Let running reads finish (queued ones are cancelled), then close the store if the app opened it."""
        executor, self._executor = self._executor, None
        self._started = None
        if executor is not None:
            done = asyncio.get_running_loop().run_in_executor(None, functools.partial(executor.shutdown, wait=True, cancel_futures=True))
            try:
                await asyncio.wait_for(done, timeout=max(self.store_timeout, 1.0) * 2)
            except TimeoutError:
                log.warning("store reads still running at shutdown; closing the store under them")
        if self.owns_store and self.store is not None:
            self.store.close()
            self.store = None

    # -- requests ---------------------------------------------------------------------------

    async def _http(self, scope, receive, send) -> None:
        started = time.perf_counter()
        path, method = scope["path"], scope["method"]
        headers = _JSON
        try:
            allowed = _ROUTES.get(path)
            if allowed is None:
                raise Reject(404, f"no such path {path!r}; {_HINT}")
            if method not in allowed:
                headers = [*_JSON, (b"allow", ", ".join(allowed).encode())]
                raise Reject(405, f"{method} is not allowed on {path}; use {' or '.join(allowed)}")
            if self._executor is None:
                await self.startup()
            if path == "/online-features":
                status, body = 200, await self._online_features(scope, receive)
                if body is None:
                    return  # the client went away before sending its body
            elif path == "/ready":
                status, body = await self._ready()
            elif path == "/metrics":
                # On the loop's default executor: metrics never queue behind store reads, nor count against max_in_flight.
                status, body = 200, await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
                headers = [(b"content-type", metrics.CONTENT_TYPE.encode())]
            else:
                status, body = 200, self._static[path]
        except Reject as err:
            status, body = err.status, json.dumps({"error": str(err)}).encode()
            if err.close:  # the body was not read: do not parse the rest of it as the next request
                headers = [*headers, (b"connection", b"close")]
        except Exception as err:  # a bug: answer JSON and keep serving
            log.exception("error answering %s %s", method, path)
            status, body = 500, json.dumps({"error": f"internal error: {type(err).__name__}: {err}"}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        metrics.observe(method, path, status, time.perf_counter() - started)

    async def _run(self, fn, *args):
        """Run a blocking call on the store's thread pool; 503 at once when max_in_flight calls are queued or running there.

        A call counts until its thread is done with it, even after its request gave up waiting (store_timeout):
        the bound is on the pool's backlog, which a hung store would otherwise let grow without limit.
        """
        with self._lock:
            if self.max_in_flight is not None and self._in_flight >= self.max_in_flight:
                raise Reject(503, f"server busy: {self._in_flight} store calls queued or running in this worker "
                                  f"(limit {self.max_in_flight}); retry later")
            self._in_flight += 1
        future = self._executor.submit(self._counted, fn, *args)
        future.add_done_callback(self._uncount_cancelled)
        return await asyncio.wrap_future(future)

    def _counted(self, fn, *args):
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _uncount_cancelled(self, future) -> None:
        if future.cancelled():  # given up while still queued: `_counted` never ran
            with self._lock:
                self._in_flight -= 1

    async def _online_features(self, scope, receive) -> bytes | None:
        body = await self._body(scope, receive)
        if body is None:
            return None
        try:
            return await asyncio.wait_for(self._run(self._lookup, body), self.store_timeout)
        except TimeoutError:
            metrics.store_error("read", "timeout")
            raise Reject(503, f"no answer from the online store ({self.description}) within {self.store_timeout:g} s; "
                              "it is slow or unreachable, or this server is overloaded") from None

    def _lookup(self, body: bytes) -> bytes:
        features, frame = _lookup.parse_lookup(body, self.max_batch, self._keys)
        metrics.batch_size(frame.height)
        try:
            return _lookup.lookup(self.store, features, frame)
        except Reject as err:
            if err.store_error:
                metrics.store_error("read", "error")
            raise

    async def _body(self, scope, receive) -> bytes | None:
        """The request body, at most max_body bytes (413 before reading when Content-Length says more); None on disconnect."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                if int(value) > self.max_body:  # the parser has checked it is a number
                    raise Reject(413, f"body of {int(value)} bytes is over the {self.max_body} byte limit", close=True)
                break
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise Reject(413, f"body is over the {self.max_body} byte limit", close=True)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _ready(self) -> tuple[int, bytes]:
        try:
            await asyncio.wait_for(self._run(self._probe), self.store_timeout)
        except TimeoutError:
            metrics.store_error("ready", "timeout")
            reason = f"online store {self.description} did not answer within {self.store_timeout:g} s"
        except Reject as err:  # max_in_flight reached: busy is not ready either, but it is no store error
            reason = str(err)
        except Exception as err:  # noqa: BLE001 - whatever the store raises, it is not ready
            metrics.store_error("ready", "error")
            reason = f"online store not ready: {err}"
        else:
            return 200, json.dumps({"status": "ready", "online_store": self.description}).encode()
        return 503, json.dumps({"error": reason, "online_store": self.description}).encode()

    def _probe(self) -> None:
        if self.description.startswith("unavailable"):  # not opened at startup: try again (raises while it still fails)
            self.description = self._bounded(self.store.online)
            self._static["/health"] = json.dumps({"status": "ok", "online_store": self.description}).encode()
        _lookup.probe(self.store.online)


__all__ = ["MAX_BATCH", "ServingApp", "default_max_body"]
