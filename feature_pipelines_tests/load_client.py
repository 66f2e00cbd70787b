"""A small HTTP/1.1 load generator on asyncio (uvloop when installed), for the serving tests and benchmarks/http_load.py.

Two shapes of traffic against one server:

- `keep_alive(...)`: `connections` connections opened at once, each sending requests one after the
  other (a new one as soon as the answer is in), for `duration` seconds or `per_connection` requests;
- `churn(...)`: `concurrency` clients, each sending every request on a new connection
  (`Connection: close`), for `duration` seconds or `total` requests.

Every answer is read in full and checked (status 200 and a body starting with `expect`); anything
else — another status, a reset, a timeout — is an error, counted and sampled. Latency is per
request, from the first byte written to the last byte read (churn: from connect).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl as ssl_module
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    connections: int = 0

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.samples) < 10:
            self.samples.append(what)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in milliseconds (q in 0..100)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] * 1000


def post_request(host: str, port: int, body: bytes, path: str = "/online-features", close: bool = False) -> bytes:
    """The bytes of one POST request."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n")
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one response with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def _check(result: LoadResult, status: int, body: bytes, expect: bytes) -> None:
    result.statuses[status] += 1
    if status != 200 or not body.startswith(expect):
        result.error(f"status {status}: {body[:200]!r}")


async def _keep_alive_one(host, port, requests, stop, result, expect, timeout, ssl, per_connection) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl), timeout)
    except (TimeoutError, OSError) as err:
        result.error(f"connect: {type(err).__name__}: {err}")
        return
    result.connections += 1
    sent = 0
    try:
        while not stop() and (per_connection is None or sent < per_connection):
            request = next(requests)
            started = time.perf_counter()
            writer.write(request)
            status, _, body = await asyncio.wait_for(read_response(reader), timeout)
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            sent += 1
            _check(result, status, body, expect)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
        result.error(f"keep-alive request {sent}: {type(err).__name__}: {err}")
    finally:
        writer.close()


async def _churn_one(host, port, requests, stop, result, expect, timeout, ssl, counter) -> None:
    while not stop() and next(counter, None) is not None:
        request = next(requests)
        started = time.perf_counter()
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ssl), timeout)
            result.connections += 1
            writer.write(request)
            status, _, body = await asyncio.wait_for(read_response(reader), timeout)
            result.latencies.append(time.perf_counter() - started)
            result.requests += 1
            _check(result, status, body, expect)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
            result.requests += 1
            result.error(f"churn: {type(err).__name__}: {err}")
        finally:
            if writer is not None:
                writer.close()


def _stopper(duration: float | None):
    if duration is None:
        return lambda: False
    deadline = time.monotonic() + duration
    return lambda: time.monotonic() >= deadline


def _run(coro_factory) -> LoadResult:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        uvloop = None
    result = LoadResult()

    async def main() -> None:
        started = time.perf_counter()
        await asyncio.gather(*coro_factory(result))
        result.seconds = time.perf_counter() - started

    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())
    return result


def keep_alive(host: str, port: int, bodies: list[bytes], connections: int, *, duration: float | None = None,
               per_connection: int | None = None, expect: bytes = b'{"rows":', timeout: float = 30.0,
               ssl: ssl_module.SSLContext | None = None) -> LoadResult:
    """`connections` concurrent keep-alive connections, each sending POSTs of `bodies` (cycled) back to back."""
    requests = itertools.cycle([post_request(host, port, b) for b in bodies])
    stop = _stopper(duration)
    return _run(lambda result: [_keep_alive_one(host, port, requests, stop, result, expect, timeout, ssl, per_connection)
                                for _ in range(connections)])


def churn(host: str, port: int, bodies: list[bytes], concurrency: int, *, duration: float | None = None, total: int | None = None,
          expect: bytes = b'{"rows":', timeout: float = 30.0, ssl: ssl_module.SSLContext | None = None) -> LoadResult:
    """`concurrency` clients, each request on a new connection, for `duration` seconds or `total` requests in all."""
    requests = itertools.cycle([post_request(host, port, b, close=True) for b in bodies])
    stop = _stopper(duration)
    tickets = itertools.count() if total is None else iter(range(total))  # shared: `total` requests in all
    return _run(lambda result: [_churn_one(host, port, requests, stop, result, expect, timeout, ssl, tickets)
                                for _ in range(concurrency)])


__all__ = ["LoadResult", "churn", "keep_alive", "post_request", "read_response"]
