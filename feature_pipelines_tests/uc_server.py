"""A small Unity Catalog REST server for tests: just the endpoints `UnityCatalogStore` calls.

It speaks the same paths, JSON bodies and error shapes as Databricks' Unity Catalog API
(`/api/2.1/unity-catalog/...`), so the store reaches it through `databricks-sdk` exactly as it would
reach a workspace (`WorkspaceClient(host="http://127.0.0.1:<port>", token=...)`). Only table
*metadata* lives here, in memory; the tables themselves are real Delta tables under a temp folder,
read and written by deltalake/polars, like external tables on cloud storage.

Endpoints (everything else answers 404 `ENDPOINT_NOT_FOUND`):

    GET  /api/2.1/unity-catalog/catalogs/{catalog}
    GET  /api/2.1/unity-catalog/schemas/{catalog}.{schema}        -> storage_root = <root>/<catalog>/<schema>
    GET  /api/2.1/unity-catalog/tables/{catalog}.{schema}.{table}  -> 404 TABLE_DOES_NOT_EXIST (or CATALOG/SCHEMA_...)
    GET  /api/2.1/unity-catalog/tables?catalog_name=&schema_name=
    POST /api/2.1/unity-catalog/tables                            -> 409 TABLE_ALREADY_EXISTS on a second create

Every request needs `Authorization: Bearer <token>`; anything else gets 401 with the UC error JSON,
like a workspace refusing a revoked token. `requests` records (method, path, status) so tests can
check what the client actually called; the token is never recorded.

Run it by hand with `python -m feature_pipelines_tests.uc_server --root /tmp/uc --token t`.
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

PREFIX = "/api/2.1/unity-catalog"


class UnityCatalogServer:
    """An in-memory Unity Catalog metastore over HTTP on a free 127.0.0.1 port, served from a thread.

    `schemas` lists the "catalog.schema" pairs that exist (their catalogs exist too); storage roots
    are folders under `root` (plain paths, or `file://` URIs with `file_uris=True`).
    """

    def __init__(self, root: str | Path, token: str, schemas: tuple[str, ...] = ("main.features",), *,
                 file_uris: bool = False, storage_root: str | None = None, vended: dict | None = None) -> None:
        self.root = Path(root).resolve()
        self.token = token
        self.file_uris = file_uris
        self.cloud_root = storage_root  # e.g. s3://bucket/uc: schema storage roots live there instead of under `root`
        self.vended = vended  # aws_temp_credentials handed out by the temporary-credentials endpoints
        self.vended_for: list[dict] = []  # what was asked for, for tests
        self.catalogs: set[str] = {s.split(".")[0] for s in schemas}
        self.schemas: set[str] = set(schemas)
        self.tables: dict[str, dict] = {}
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> UnityCatalogServer:
        server = self

        class Handler(_Handler):
            uc = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="uc-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> UnityCatalogServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- the metastore -----------------------------------------------------------------------

    def storage_root(self, catalog: str, schema: str) -> str:
        if self.cloud_root:
            return f"{self.cloud_root.rstrip('/')}/{catalog}/{schema}"
        path = self.root / catalog / schema
        return path.as_uri() if self.file_uris else str(path)

    def add_schema(self, full_name: str) -> str:
        """Create `catalog.schema` (and its catalog), as `CREATE SCHEMA` would; returns the name."""
        with self._lock:
            self.catalogs.add(full_name.split(".")[0])
            self.schemas.add(full_name)
        return full_name

    def drop_table(self, full_name: str) -> None:
        """Forget a table's metadata (its files stay), as `DROP TABLE` of an external table would."""
        with self._lock:
            self.tables.pop(full_name, None)

    def _missing(self, full_name: str) -> tuple[int, dict] | None:
        """The UC 404 for a three-part name whose catalog, schema or table does not exist."""
        parts = full_name.split(".")
        if len(parts) != 3 or not all(parts):
            return 400, _error("INVALID_PARAMETER_VALUE", f"Invalid table name '{full_name}': expected catalog.schema.table.")
        catalog, schema, _ = parts
        if catalog not in self.catalogs:
            return 404, _error("CATALOG_DOES_NOT_EXIST", f"Catalog '{catalog}' does not exist.")
        if f"{catalog}.{schema}" not in self.schemas:
            return 404, _error("SCHEMA_DOES_NOT_EXIST", f"Schema '{catalog}.{schema}' does not exist.")
        if full_name not in self.tables:
            return 404, _error("TABLE_DOES_NOT_EXIST", f"Table '{full_name}' does not exist.")
        return None

    def handle(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict]:
        if method == "POST" and path == "/api/2.0/sql/statements":
            return self._statement(body or {})
        if method == "POST" and path in (PREFIX + "/temporary-table-credentials", PREFIX + "/temporary-path-credentials"):
            if self.vended is None:
                return 400, _error("FEATURE_DISABLED", "credential vending is not enabled on this server")
            with self._lock:
                self.vended_for.append({"path": path, **(body or {})})
                known = {t["table_id"] for t in self.tables.values()}
            if path.endswith("table-credentials") and (body or {}).get("table_id") not in known:
                return 404, _error("TABLE_DOES_NOT_EXIST", f"no table with id {(body or {}).get('table_id')!r}")
            return 200, {"aws_temp_credentials": dict(self.vended), "expiration_time": int((time.time() + 3600) * 1000)}
        if not path.startswith(PREFIX + "/"):
            return 404, _error("ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")
        rest = path[len(PREFIX) + 1:]
        with self._lock:
            if method == "GET" and rest.startswith("catalogs/"):
                name = rest.split("/", 1)[1]
                if name not in self.catalogs:
                    return 404, _error("CATALOG_DOES_NOT_EXIST", f"Catalog '{name}' does not exist.")
                return 200, {"name": name, "full_name": name, "catalog_type": "MANAGED_CATALOG"}
            if method == "GET" and rest.startswith("schemas/"):
                full = rest.split("/", 1)[1]
                catalog, _, schema = full.partition(".")
                if catalog not in self.catalogs:
                    return 404, _error("CATALOG_DOES_NOT_EXIST", f"Catalog '{catalog}' does not exist.")
                if full not in self.schemas:
                    return 404, _error("SCHEMA_DOES_NOT_EXIST", f"Schema '{full}' does not exist.")
                return 200, {"name": schema, "catalog_name": catalog, "full_name": full,
                             "storage_root": self.storage_root(catalog, schema)}
            if method == "GET" and rest.startswith("tables/"):
                full = rest.split("/", 1)[1]
                missing = self._missing(full)
                return missing if missing else (200, self.tables[full])
            if method == "GET" and rest == "tables":
                catalog, schema = (query.get("catalog_name") or [""])[0], (query.get("schema_name") or [""])[0]
                if catalog not in self.catalogs:
                    return 404, _error("CATALOG_DOES_NOT_EXIST", f"Catalog '{catalog}' does not exist.")
                if f"{catalog}.{schema}" not in self.schemas:
                    return 404, _error("SCHEMA_DOES_NOT_EXIST", f"Schema '{catalog}.{schema}' does not exist.")
                found = [t for t in self.tables.values() if t["catalog_name"] == catalog and t["schema_name"] == schema]
                return 200, {"tables": sorted(found, key=lambda t: t["name"])}
            if method == "POST" and rest == "tables":
                return self._create_table(body or {})
        return 404, _error("ENDPOINT_NOT_FOUND", f"No API found for '{method} {path}'")

    def _create_table(self, body: dict) -> tuple[int, dict]:
        required = ["name", "catalog_name", "schema_name", "table_type", "data_source_format", "storage_location"]
        absent = [k for k in required if not body.get(k)]
        if absent:
            return 400, _error("INVALID_PARAMETER_VALUE", f"Missing required field(s): {', '.join(absent)}")
        if body["table_type"] != "EXTERNAL" or body["data_source_format"] != "DELTA":
            return 400, _error("INVALID_PARAMETER_VALUE", "This test server only creates EXTERNAL DELTA tables.")
        full = f"{body['catalog_name']}.{body['schema_name']}.{body['name']}"
        missing = self._missing(full)
        if missing is None:
            return 409, _error("TABLE_ALREADY_EXISTS", f"Table '{full}' already exists.")
        if missing[1]["error_code"] != "TABLE_DOES_NOT_EXIST":
            return missing
        now = int(time.time() * 1000)
        info = {
            "name": body["name"], "catalog_name": body["catalog_name"], "schema_name": body["schema_name"],
            "full_name": full, "table_type": "EXTERNAL", "data_source_format": "DELTA",
            "storage_location": body["storage_location"], "columns": body.get("columns") or [],
            "comment": body.get("comment"), "properties": body.get("properties") or {},
            "table_id": str(uuid.uuid4()), "created_at": now, "updated_at": now, "owner": "test-user",
        }
        self.tables[full] = info
        return 200, info


    _CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS `([^`]+)`\.`([^`]+)`\.`([^`]+)` USING DELTA LOCATION '((?:[^']|'')*)'$")

    def _statement(self, body: dict) -> tuple[int, dict]:
        """The Statement Execution API, for the one statement the store sends: CREATE TABLE ... LOCATION."""
        if not body.get("warehouse_id"):
            return 400, _error("INVALID_PARAMETER_VALUE", "warehouse_id is required")
        found = self._CREATE.match(body.get("statement") or "")
        if not found:
            return 200, {"statement_id": str(uuid.uuid4()), "status": {"state": "FAILED", "error": {
                "error_code": "PARSE_SYNTAX_ERROR", "message": f"this test server runs only CREATE TABLE ... LOCATION: {body.get('statement')!r}"}}}
        catalog, schema, table, location = found.groups()
        with self._lock:
            status, info = self._create_table({"name": table, "catalog_name": catalog, "schema_name": schema, "table_type": "EXTERNAL",
                                               "data_source_format": "DELTA", "storage_location": location.replace("''", "'")})
        if status not in (200, 409):
            return 200, {"statement_id": str(uuid.uuid4()), "status": {"state": "FAILED", "error": info}}
        return 200, {"statement_id": str(uuid.uuid4()), "status": {"state": "SUCCEEDED"}}


def _error(code: str, message: str) -> dict:
    return {"error_code": code, "message": message}


class _Handler(BaseHTTPRequestHandler):
    uc: UnityCatalogServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: tests read `requests` instead
        pass

    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Authorization") != f"Bearer {self.uc.token}":
            status, payload = 401, _error("UNAUTHENTICATED", "Credential was not sent or was of an unsupported type for this API.")
        else:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, payload = 400, _error("MALFORMED_REQUEST", "Request body is not valid JSON.")
            else:
                status, payload = self.uc.handle(method, path, parse_qs(url.query), body)
        self.uc.requests.append((method, path, status))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")


def main() -> None:
    parser = argparse.ArgumentParser(description="A local Unity Catalog REST server for tests (metadata in memory).")
    parser.add_argument("--root", required=True, help="folder under which schema storage roots live")
    parser.add_argument("--token", required=True, help="the bearer token clients must send")
    parser.add_argument("--schema", action="append", default=None, help="catalog.schema that exists (repeatable)")
    args = parser.parse_args()
    server = UnityCatalogServer(args.root, args.token, tuple(args.schema or ["main.features"])).start()
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
