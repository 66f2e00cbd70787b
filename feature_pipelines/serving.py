"""The HTTP endpoint of `feature-pipelines serve`: JSON in, JSON out, over `FeatureStore.get_online_features`.

    GET  /health            {"status": "ok", "online_store": "..."}
    GET  /features          the online features with their entity keys and columns
    POST /online-features   {"features": ["customer_spend", "merchant_spend:amount_sum_7d"],
                             "entities": [{"customer_id": "c1"}, {"customer_id": "c2"}]}
                         -> {"rows": [{"customer_id": "c1", "customer_spend__amount_sum_7d": 12.5, ...}, ...]}

Built on the standard library's threading HTTP server (HTTP/1.1 keep-alive): the work per request
is one batched online read, so a framework would add dependencies and latency, not capability.
Errors are 4xx with {"error": "..."}: 400 malformed body, 404 unknown feature or path, 413 batch
too large; a store failure is 503.
"""

from __future__ import annotations

import json
import socket
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from feature_pipelines.errors import DataError, DefinitionError, FeaturePipelinesError, StoreError
from feature_pipelines.retrieval import FeatureStore

MAX_BATCH = 1000
MAX_BODY = 8 * 1024 * 1024


class _Reject(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def make_server(store: FeatureStore, host: str = "127.0.0.1", port: int = 8080, max_batch: int = MAX_BATCH) -> ThreadingHTTPServer:
    """A ready-to-run server (call `serve_forever()`); port 0 picks a free one (see `server_address`)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "feature-pipelines"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without NODELAY, Nagle + delayed ACK add ~40 ms.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
            pass  # one line per request on stderr would cost more than the lookup itself

        def _send(self, status: HTTPStatus, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode())

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if self.path == "/health":
                self._send(HTTPStatus.OK, json.dumps({"status": "ok", "online_store": store.online.description}).encode())
            elif self.path == "/features":
                listing = [
                    {"name": f.name, "entities": [e.name for e in f.entities], "join_keys": f.join_keys,
                     "columns": f.metric_columns, "ttl_seconds": f.ttl_us / 1e6 if f.ttl_us else None}
                    for f in sorted(store.registry.features.values(), key=lambda f: f.name) if f.online
                ]
                self._send(HTTPStatus.OK, json.dumps({"features": listing, "services": sorted(store.registry.services)}).encode())
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path!r}; try GET /health, GET /features, POST /online-features")

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            try:
                if self.path != "/online-features":
                    raise _Reject(HTTPStatus.NOT_FOUND, f"no such path {self.path!r}; POST /online-features")
                features, entities = self._body()
                try:
                    frame = store.get_online_features(features, entities)
                except DefinitionError as err:
                    raise _Reject(HTTPStatus.NOT_FOUND if "unknown feature" in str(err) else HTTPStatus.BAD_REQUEST, str(err)) from err
                except DataError as err:
                    raise _Reject(HTTPStatus.BAD_REQUEST, str(err)) from err
                except StoreError as err:
                    raise _Reject(HTTPStatus.SERVICE_UNAVAILABLE, str(err)) from err
                self._send(HTTPStatus.OK, b'{"rows":' + frame.write_json().encode() + b"}")
            except _Reject as err:
                self._error(err.status, str(err))
            except FeaturePipelinesError as err:
                self._error(HTTPStatus.BAD_REQUEST, str(err))

        def _body(self) -> tuple[list, list[dict]]:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0:
                raise _Reject(HTTPStatus.BAD_REQUEST, "empty body; send JSON {\"features\": [...], \"entities\": [{...}, ...]}")
            if length > MAX_BODY:
                raise _Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes is over the {MAX_BODY} byte limit")
            try:
                body = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise _Reject(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {err}") from err
            if not isinstance(body, dict):
                raise _Reject(HTTPStatus.BAD_REQUEST, "body must be a JSON object with 'features' and 'entities'")
            features, entities = body.get("features"), body.get("entities")
            if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
                raise _Reject(HTTPStatus.BAD_REQUEST, "'features' must be a non-empty list of feature names (or 'name:column', or service names)")
            if not isinstance(entities, list) or not entities or not all(isinstance(e, dict) for e in entities):
                raise _Reject(HTTPStatus.BAD_REQUEST, "'entities' must be a non-empty list of objects holding join keys, e.g. [{\"customer_id\": \"c1\"}]")
            if len(entities) > max_batch:
                raise _Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{len(entities)} entities in one request; the limit is {max_batch}")
            return features, entities

    return ThreadingHTTPServer((host, port), Handler)


__all__ = ["MAX_BATCH", "make_server"]
