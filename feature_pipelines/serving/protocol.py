"""uvicorn's httptools protocol, hardened for serving: JSON errors for what the HTTP parser refuses, and timeouts.

uvicorn answers a request its parser refuses (`Content-Length: abc`, a broken request line, bad
chunked framing) with a text/plain 400 and has no limit on how long a client may take to send a
request nor on the size of its headers. This subclass changes exactly that:

- parser errors answer 400 {"error": "invalid HTTP request: ..."} and close the connection;
- a request line plus headers over `max_head_bytes` answers 431 and closes;
- a request not received in full (headers and body) within `request_timeout` seconds of its first
  byte answers 408 and closes (slow or stalled clients cannot hold a connection forever);
- a new connection that sends nothing is closed after the keep-alive (idle) timeout, like an idle
  keep-alive connection.

Everything else (keep-alive, pipelining, flow control, graceful shutdown) is uvicorn's.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from feature_pipelines.serving import metrics


@dataclass
class Limits:
    request_timeout: float = 10.0
    max_head_bytes: int = 64 * 1024


LIMITS = Limits()
"""Set once per worker process (by `feature_pipelines.serving.server.create_app` or `make_server`) before it serves."""


def configure(request_timeout: float, max_head_bytes: int = 64 * 1024) -> None:
    LIMITS.request_timeout = float(request_timeout)
    LIMITS.max_head_bytes = int(max_head_bytes)


class _HeadTooLarge(Exception):
    pass


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response {"error": message} that closes the connection."""
    body = json.dumps({"error": message}).encode()
    return b"".join([STATUS_LINE[status], b"content-type: application/json\r\ncontent-length: ",
                     str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body])


class ServingProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with JSON parser errors, a header size limit, a request timeout and an idle timeout from the start."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._receiving = False
        self._request_timer: asyncio.TimerHandle | None = None
        # A connection that never sends a request is idle like a kept-alive one: close it after the same timeout.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_request_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            if isinstance(cause, _HeadTooLarge):
                self._reject(431, str(cause))
            else:
                self._reject(400, f"invalid HTTP request: {cause or err}")
        except httptools.HttpParserUpgrade:
            pass  # upgrades (WebSocket) are not served: the request went to the app as plain HTTP
        except httptools.HttpParserError as err:
            self._reject(400, f"invalid HTTP request: {err}")

    def send_400_response(self, msg: str) -> None:
        self._reject(400, msg)

    # -- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0
        self._receiving = True
        self._stop_request_timer()
        self._request_timer = self.loop.call_later(LIMITS.request_timeout, self._request_timed_out)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_message_complete(self) -> None:
        self._receiving = False
        self._stop_request_timer()
        super().on_message_complete()

    # -- limits -----------------------------------------------------------------------------

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > LIMITS.max_head_bytes:
            raise _HeadTooLarge(f"request line and headers are over the {LIMITS.max_head_bytes} byte limit")

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self._receiving:
            self._reject(408, f"the request was not received in full within {LIMITS.request_timeout:g} s")

    def _reject(self, status: int, message: str) -> None:
        """Answer {"error": message} with `status` and close; if a response is already under way, just close."""
        self._stop_request_timer()
        self._receiving = False
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            responding = cycle.response_started
            cycle.disconnected = True  # the app's receive() now says disconnect and its send() writes nothing
            cycle.message_event.set()
            if responding:
                self.transport.close()
                return
        if not self.transport.is_closing():
            self.transport.write(error_response(status, message))
            self.transport.close()
        metrics.observe("other", "other", status, None)


__all__ = ["LIMITS", "ServingProtocol", "configure", "error_response"]
