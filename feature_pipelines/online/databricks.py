"""Databricks online tables as the online store: Databricks copies the offline Delta table itself.

With the Unity Catalog offline store, every feature already is a Delta table
(`<catalog>.<schema>.<feature>`). A Databricks online table is a managed, low-latency copy of such a
table kept up to date by a sync pipeline that Databricks runs; this store only creates that online
table and, depending on `sync_mode`, tells the pipeline when to run:

| sync_mode    | online table spec                          | on each publish                      |
|--------------|--------------------------------------------|--------------------------------------|
| `snapshot`   | `run_triggered` + `perform_full_copy`       | start a full-refresh pipeline update |
| `triggered`  | `run_triggered` (incremental, needs CDF)    | start an incremental pipeline update |
| `continuous` | `run_continuously` (incremental, needs CDF) | nothing: the pipeline follows the table |

Newer-wins is the online table's own rule: `primary_key_columns` are the feature's keys and
`timeseries_key` its timestamp column, so of several rows per entity the newest is kept. Incremental
modes read the source's change data feed, which `UnityCatalogStore` turns on for the tables it creates.
An online table is per (feature, MAJOR): `<online_catalog>.<online_schema>.<feature><suffix>_v<major>`,
because a MAJOR bump rewrites the source table with another schema; drop old-major online tables
when nothing serves them any more. Databricks online tables have no TTL: `ttl_seconds` is not enforced
here (values stay until a newer row replaces them).

Reads are not served in-process: on Databricks, serving goes through a Feature Serving endpoint (or
the online table's serving URL), configured in the workspace. `read` says so instead of guessing.

What needs a real workspace: everything `OnlineTablesAdapter` sends (POST /api/2.0/online-tables,
GET /api/2.0/online-tables/{name}, POST /api/2.0/pipelines/{id}/updates). What is tested here: the
request bodies (`build_online_table_request`, `build_refresh_request`), profile validation, and which
calls `write` makes in each mode (with a recording adapter).
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from feature_pipelines.errors import ProfileError, StoreError
from feature_pipelines.online.base import FEATURE_TIMESTAMP, OnlineRead, WriteResult
from feature_pipelines.spec.names import check_identifier

SYNC_MODES = ("snapshot", "triggered", "continuous")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,254}$")
_PROFILE_KEYS = {"catalog", "schema", "sync_mode", "online_catalog", "online_schema", "online_suffix", "host"}


def check_sync_mode(sync_mode: object) -> str:
    """`sync_mode` if it is one of snapshot | triggered | continuous, else a ProfileError saying what each means."""
    if sync_mode not in SYNC_MODES:
        raise ProfileError(
            f"online_store sync_mode {sync_mode!r} is not supported; expected one of: "
            "'snapshot' (full copy each publish), 'triggered' (incremental copy each publish) or "
            "'continuous' (Databricks streams every change; nothing to trigger)"
        )
    return sync_mode  # type: ignore[return-value]


def build_online_table_request(online_table: str, source_table: str, primary_keys: list[str],
                               timeseries_key: str | None, sync_mode: str) -> dict:
    """JSON body of `POST /api/2.0/online-tables` creating `online_table` as a synced copy of `source_table`.

    Same shape as `databricks.sdk.service.catalog.OnlineTable(...).as_dict()`.
    """
    check_sync_mode(sync_mode)
    for name, what in ((online_table, "online table"), (source_table, "source table")):
        if not isinstance(name, str) or name.count(".") != 2 or not all(name.split(".")):
            raise StoreError(f"{what} name {name!r} must be a three-part Unity Catalog name, catalog.schema.table")
    if not primary_keys:
        raise StoreError(f"online table {online_table}: primary_keys must name the feature's key column(s)")
    spec: dict[str, Any] = {"source_table_full_name": source_table, "primary_key_columns": list(primary_keys)}
    if timeseries_key:
        spec["timeseries_key"] = timeseries_key
    if sync_mode == "continuous":
        spec["run_continuously"] = {}
    else:
        spec["run_triggered"] = {}
        if sync_mode == "snapshot":
            spec["perform_full_copy"] = True
    return {"name": online_table, "spec": spec}


def build_refresh_request(pipeline_id: str, sync_mode: str) -> tuple[str, str, dict] | None:
    """(method, path, body) starting one update of an online table's sync pipeline; None for `continuous`."""
    check_sync_mode(sync_mode)
    if sync_mode == "continuous":
        return None
    if not pipeline_id:
        raise StoreError("the online table has no pipeline_id yet (still provisioning?); publish again in a minute")
    return "POST", f"/api/2.0/pipelines/{pipeline_id}/updates", {"full_refresh": sync_mode == "snapshot"}


class OnlineTablesAdapter:
    """The only part that calls Databricks for online tables (needs a real workspace; not exercised by tests).

    `workspace` is a `databricks.sdk.WorkspaceClient`; by default one is built from host/token or the
    environment (DATABRICKS_HOST, DATABRICKS_TOKEN, notebook credentials) on first use.
    """

    def __init__(self, host: str | None = None, token: str | None = None, workspace: Any = None) -> None:
        self._host, self._token, self._workspace = host, token, workspace

    def _api(self):
        if self._workspace is None:
            from databricks.sdk import WorkspaceClient
            from databricks.sdk.config import Config

            kwargs: dict[str, Any] = {"host": self._host} if self._host else {}
            if self._token:
                kwargs.update(token=self._token, auth_type="pat")
            self._workspace = WorkspaceClient(config=Config(**kwargs))
        return self._workspace.api_client

    def _do(self, what: str, method: str, path: str, body: dict | None = None) -> dict:
        from databricks.sdk.errors import DatabricksError

        try:
            return self._api().do(method, path, body=body) or {}
        except DatabricksError as err:
            raise StoreError(f"Databricks refused {what}: {getattr(err, 'error_code', '')} "
                             f"{str(err).split(' Config: ')[0]}") from None

    def get_online_table(self, name: str) -> dict | None:
        """The online table's record (its `spec.pipeline_id` is what a refresh starts), or None if it does not exist."""
        from databricks.sdk.errors import NotFound

        try:
            return self._do(f"GET online table {name}", "GET", f"/api/2.0/online-tables/{name}")
        except StoreError as err:
            if isinstance(err.__context__, NotFound):
                return None
            raise

    def create_online_table(self, request: dict) -> dict:
        return self._do(f"creating online table {request.get('name')}", "POST", "/api/2.0/online-tables", request)

    def start_update(self, method: str, path: str, body: dict) -> dict:
        return self._do(f"starting a sync ({path})", method, path, body)


class DatabricksOnlineStore:
    """Publishing to Databricks online tables: create the per-(feature, MAJOR) online table, then sync by `sync_mode`.

    The offline feature tables live in `catalog.schema` (the UnityCatalogStore's); online tables go to
    `online_catalog.online_schema` (default: the same) as `<feature><online_suffix>_v<major>`.
    """

    def __init__(self, catalog: str, schema: str = "features", *, sync_mode: str = "triggered",
                 online_catalog: str | None = None, online_schema: str | None = None, online_suffix: str = "_online",
                 host: str | None = None, token: str | None = None, adapter: Any = None) -> None:
        self.sync_mode = check_sync_mode(sync_mode)
        self.catalog, self.schema = catalog, schema
        self.online_catalog, self.online_schema = online_catalog or catalog, online_schema or schema
        for value, what in ((self.catalog, "catalog"), (self.schema, "schema"), (self.online_catalog, "online_catalog"),
                            (self.online_schema, "online_schema")):
            if not isinstance(value, str) or not _NAME.match(value):
                raise ProfileError(f"online_store {what} {value!r} is not a valid Unity Catalog name (letters, digits, '_', '-')")
        if not re.fullmatch(r"[A-Za-z0-9_]*", online_suffix or ""):
            raise ProfileError(f"online_store online_suffix {online_suffix!r} may hold only letters, digits and '_'")
        self.online_suffix = online_suffix
        self.adapter = adapter or OnlineTablesAdapter(host=host, token=token)
        where = host or "the workspace from the environment"
        self.description = f"databricks-online:{self.online_catalog}.{self.online_schema} ({self.sync_mode}) at {where}"

    @classmethod
    def from_profile(cls, settings: dict, adapter: Any = None) -> DatabricksOnlineStore:
        """Build from a profile's `online_store` mapping (kind already removed or `databricks`)::

            online_store: {kind: databricks, catalog: main, schema: features, sync_mode: triggered,
                           online_schema: features_online, online_suffix: _online, host: ${DATABRICKS_HOST}}

        The token never goes in a profile: it comes from DATABRICKS_TOKEN (or the workspace's own auth).
        """
        cfg = {k: v for k, v in dict(settings).items() if k != "kind"}
        if "token" in cfg:
            raise ProfileError("online_store kind 'databricks' takes no `token`: set DATABRICKS_TOKEN in the environment")
        extra = sorted(set(cfg) - _PROFILE_KEYS)
        if extra:
            raise ProfileError(f"online_store kind 'databricks' has unknown setting(s) {extra}; "
                               f"it takes: {', '.join(sorted(_PROFILE_KEYS))}")
        if not cfg.get("catalog"):
            raise ProfileError("online_store kind 'databricks' needs `catalog`: the Unity Catalog catalog of the feature tables")
        if "sync_mode" not in cfg:
            raise ProfileError("online_store kind 'databricks' needs `sync_mode`: snapshot, triggered or continuous")
        cfg = {k: (None if v == "" else v) for k, v in cfg.items()}
        return cls(cfg.pop("catalog"), cfg.pop("schema", None) or "features", adapter=adapter, **cfg)

    def online_table_name(self, feature: str, major: int) -> str:
        return f"{self.online_catalog}.{self.online_schema}.{check_identifier(feature, 'feature name')}{self.online_suffix}_v{int(major)}"

    def source_table_name(self, feature: str) -> str:
        return f"{self.catalog}.{self.schema}.{check_identifier(feature, 'feature name')}"

    def write(self, feature: str, major: int, keys: list[str], frame: pl.DataFrame, *,
              timestamp: str = FEATURE_TIMESTAMP, ttl_seconds: float | None = None,
              version: str | None = None) -> WriteResult:
        """Make sure the online table exists, then sync it per `sync_mode`.

        The rows themselves travel through Databricks' pipeline from the offline Delta table (already
        committed by the offline store), not through this call: `written` counts the rows handed over.
        `version` is accepted for the protocol and not used: the sync copies the table's current rows,
        so a corrected partition (the Delta table overwritten in place) reaches the online table as is.
        """
        name = self.online_table_name(feature, major)
        table = self.adapter.get_online_table(name)
        if table is None:
            request = build_online_table_request(name, self.source_table_name(feature), list(keys), timestamp, self.sync_mode)
            table = self.adapter.create_online_table(request)  # creating it runs the first sync itself
        else:
            refresh = build_refresh_request(((table.get("spec") or {}).get("pipeline_id") or ""), self.sync_mode)
            if refresh is not None:
                self.adapter.start_update(*refresh)
        return WriteResult(written=frame.height, skipped=0)

    def read(self, reads: list[OnlineRead]) -> list[pl.DataFrame]:
        raise StoreError(
            f"{self.description} does not serve reads in-process: query the Databricks Feature Serving endpoint "
            "built on these online tables, or serve from the sqlite/redis online store"
        )

    def close(self) -> None:
        pass


__all__ = ["SYNC_MODES", "DatabricksOnlineStore", "OnlineTablesAdapter", "build_online_table_request",
           "build_refresh_request", "check_sync_mode"]
