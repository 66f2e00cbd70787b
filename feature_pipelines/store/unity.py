"""The Unity Catalog offline store: one Delta table per feature, versioned exactly like `VersionedStore`.

Layout, in one Unity Catalog schema (`<catalog>.<schema>`, default schema `features`)::

    <catalog>.<schema>.<feature>            EXTERNAL Delta table, partitioned by `__partition` (the Dagster
                                            partition key), with the feature frame's columns
    <catalog>.<schema>._feature_metadata    EXTERNAL Delta table, partitioned by `feature`: one row per
                                            (feature, semantic version) -> the Delta version holding it

Table names resolve to storage locations through the Unity Catalog REST API (`CatalogClient`, the only
class that talks to Databricks); everything else is plain deltalake/polars on a path or URI, so the
same code runs against a workspace, the open-source Unity Catalog server, or the test server.

How a write commits (the Delta transaction log is the commit point):

1. The manifest of the newest version is read from the feature table's Delta log: every commit this
   store makes carries the full manifest (same dict as `VersionedStore`'s, plus `delta_version`) in its
   commitInfo (`CommitProperties.custom_metadata`).
2. The versioning decision is `VersionedStore`'s (the shared `decide`, the same hashes).
3. ONE Delta transaction writes the data and the new manifest: a predicate overwrite
   (`__partition IN (...)`) of exactly the changed partitions -- one partition or a whole range -- or, for
   a version that starts empty (initial/MAJOR/MINOR), a full overwrite with the new schema. The commit is
   attempted at exactly `read version + 1` with no automatic rebase (`max_commit_retries=0`), i.e. a
   compare-and-swap on the log: a writer that loses the race gets `CommitFailedError`, re-reads and
   decides again, so two partitions written at once both survive.
4. Only then is the manifest recorded in `_feature_metadata` (another compare-and-swap, monotonic in the
   Delta version), so a metadata row never names a Delta version that does not exist. A writer that
   dies between 3 and 4 leaves a committed version that readers do not see yet; the next write of that
   feature (or `repair()`) records every commit the metadata table lacks.

Reading a version is Delta time travel to the Delta version recorded for it, filtered on `__partition`
(pushed down, so only those partitions' files are read). Old versions therefore stay readable after a
PATCH, and after a MAJOR/MINOR rewrote the table with another schema -- as long as `VACUUM` has not
deleted their files: keep `delta.deletedFileRetentionDuration` longer than the oldest pin you need.

Delta cannot hold every polars dtype; unsigned integers are stored one size wider and signed (UInt32 ->
Int64), Duration/Time as Int64, non-µs Datetime as µs, Categorical/Enum as String. Reads cast back to
the dtypes in the manifest, so callers see the frames they wrote (and what LocalStore would return).

Credentials: the workspace token goes only to `databricks-sdk`; it is never put in a description, repr,
metadata row, Delta commit or error message. `storage_options` (cloud credentials for the table storage,
passed to deltalake/polars) are treated the same way.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import polars as pl
import pyarrow as pa

from feature_pipelines.errors import StoreError
from feature_pipelines.spec.names import check_identifier
from feature_pipelines.store.hashing import HASH_FORMAT
from feature_pipelines.store.versioned import (
    FORMAT,
    CommitResult,
    _first_line,
    _now,
    _some,
    content_hash,
    commit_result,
    corrupt_metadata,
    decide,
    load_manifest,
    newest_or_raise,
    next_manifest,
    schema_of,
    wants_older,
)

PARTITION_COLUMN = "__partition"
METADATA_TABLE = "_feature_metadata"
MANIFEST_KEY = "feature_pipelines.manifest"
"""commitInfo key holding the manifest of the state a commit produced."""
ATTEMPTS = 100
"""Compare-and-swap attempts before a write gives up (each retry re-reads and re-decides)."""
RETRY_TIMEOUT_SECONDS = 60
"""How long databricks-sdk keeps retrying an unreachable workspace before the store reports it."""

# Commits by others that leave the data as it was (table maintenance): safe to build on.
_HARMLESS_OPERATIONS = {"CREATE TABLE", "OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES",
                        "UNSET TBLPROPERTIES", "UPGRADE PROTOCOL", "ANALYZE", "COMPUTE STATISTICS"}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,254}$")

_METADATA_SCHEMA = pa.schema([
    ("feature", pa.string()),
    ("version", pa.string()),
    ("delta_version", pa.int64()),
    ("revision", pa.int64()),
    ("parent_version", pa.string()),
    ("table_name", pa.string()),
    ("storage_location", pa.string()),
    ("keys", pa.string()),             # JSON list
    ("timestamp_column", pa.string()),
    ("columns", pa.string()),          # JSON [{name, dtype}] (polars dtypes, as VersionedStore)
    ("schema_hash", pa.string()),
    ("config_hash", pa.string()),
    ("content_hash", pa.string()),
    ("row_count", pa.int64()),
    ("partition_count", pa.int64()),
    ("partitions", pa.string()),       # JSON {key: {rows, content_hash, written_at, delta_version, lineage?}}
    ("info", pa.string()),             # JSON
    ("change_bump", pa.string()),
    ("change_reason", pa.string()),
    ("change", pa.string()),           # JSON {bump, reason, partitions, replaced_files}
    ("created_at", pa.timestamp("us", "UTC")),
    ("updated_at", pa.timestamp("us", "UTC")),
    ("recorded_at", pa.timestamp("us", "UTC")),
    ("format", pa.int64()),
])
"""Schema of `_feature_metadata`; the JSON columns keep the manifest lossless, the others make SQL easy."""


def _lazy_deltalake():
    try:
        import deltalake
        from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
    except ImportError as err:  # pragma: no cover - deltalake is a core dependency
        raise StoreError("the Unity Catalog store needs the `deltalake` package (pip install deltalake)") from err
    return deltalake, CommitFailedError, DeltaError, TableNotFoundError


def _quote(value: str) -> str:
    """A SQL string literal for a Delta predicate."""
    return "'" + value.replace("'", "''") + "'"


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


# ---------------------------------------------------------------------------------------------
# The only part that talks to Databricks: names -> storage locations


class CatalogClient:
    """Unity Catalog table lookups and registration through `databricks-sdk` (REST, `/api/2.1/unity-catalog`).

    `host`/`token` default to the environment (DATABRICKS_HOST, DATABRICKS_TOKEN, or whatever
    databricks-sdk's default auth finds, e.g. a notebook's runtime credentials); `workspace` may be a
    ready `databricks.sdk.WorkspaceClient`. The SDK client is built on first use, so building a store
    needs no network. Every failure is a StoreError naming the host and the object, never the token.
    """

    def __init__(self, catalog: str, schema: str, *, host: str | None = None, token: str | None = None,
                 workspace: Any = None, retry_timeout_seconds: int = RETRY_TIMEOUT_SECONDS,
                 warehouse_id: str | None = None) -> None:
        for value, what in ((catalog, "catalog"), (schema, "schema")):
            if not isinstance(value, str) or not _NAME.match(value):
                raise StoreError(f"Unity Catalog {what} name {value!r} is not valid: expected letters, digits, '_' or '-', e.g. 'main'")
        self.catalog, self.schema = catalog, schema
        self._host = host
        self._token = token
        self._workspace = workspace
        self._retry_timeout = retry_timeout_seconds
        self.warehouse_id = warehouse_id

    @property
    def host(self) -> str:
        """The workspace URL (no credentials), for messages."""
        if self._workspace is not None:
            return str(getattr(self._workspace.config, "host", None) or "?")
        return self._host or os.environ.get("DATABRICKS_HOST") or "(workspace from the environment)"

    def __repr__(self) -> str:
        return f"CatalogClient({self.catalog}.{self.schema} at {self.host})"

    def full_name(self, table: str) -> str:
        return f"{self.catalog}.{self.schema}.{table}"

    def workspace(self):
        if self._workspace is None:
            try:
                from databricks.sdk import WorkspaceClient
                from databricks.sdk.config import Config
            except ImportError as err:
                raise StoreError("the Unity Catalog store needs databricks-sdk: pip install 'feature-pipelines[databricks]'") from err
            kwargs: dict[str, Any] = {"retry_timeout_seconds": self._retry_timeout}
            if self._host:
                kwargs["host"] = self._host
            if self._token:
                kwargs.update(token=self._token, auth_type="pat")  # explicit: no clash with other auth in the environment
            try:
                self._workspace = WorkspaceClient(config=Config(**kwargs))
            except Exception as err:  # databricks-sdk raises ValueError for "no credentials found"
                raise StoreError(
                    f"cannot set up a Databricks client for Unity Catalog {self.catalog}.{self.schema} at {self.host}: "
                    f"{self._scrub(str(err)).split(' Config: ')[0].rstrip('. ')}; pass host=/token= or set DATABRICKS_HOST "
                    "and DATABRICKS_TOKEN"
                ) from None
        return self._workspace

    def _scrub(self, text: str) -> str:
        for secret in (self._token, os.environ.get("DATABRICKS_TOKEN")):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _call(self, what: str, method: str, path: str, body: dict | None = None) -> dict:
        """One REST call; DatabricksError -> StoreError (with `.error_code` kept for callers)."""
        from databricks.sdk.errors import DatabricksError

        try:
            return self.workspace().api_client.do(method, path, body=body, headers={"Accept": "application/json"}) or {}
        except DatabricksError as err:
            code = getattr(err, "error_code", None) or type(err).__name__
            message = self._scrub(str(err)).split(" Config: ")[0].rstrip(". ")  # the SDK appends its (masked) config
            hint = ""
            refused = ("Unauthenticated", "PermissionDenied", "UNAUTHENTICATED", "PERMISSION_DENIED", "401", "403")
            if type(err).__name__ in refused or code in refused:
                hint = "; check the workspace token (DATABRICKS_TOKEN or token=) and its grants on this catalog/schema"
            raised = StoreError(f"Unity Catalog at {self.host} refused {what}: {code}: {message}{hint}")
            raised.error_code = code  # type: ignore[attr-defined]
            raise raised from None
        except TimeoutError as err:
            raise StoreError(f"Unity Catalog at {self.host} did not answer {what} ({err}); is the host right and reachable?") from None
        except OSError as err:
            raise StoreError(f"cannot reach Unity Catalog at {self.host} for {what}: {self._scrub(str(err))}") from None

    def table_location(self, table: str) -> str | None:
        """Storage location of `<catalog>.<schema>.<table>`, or None if the table does not exist.

        A missing catalog or schema is an error (it will not appear by itself), not None.
        """
        full = self.full_name(table)
        try:
            info = self._call(f"GET table {full}", "GET", f"/api/2.1/unity-catalog/tables/{full}")
        except StoreError as err:
            code = getattr(err, "error_code", "")
            if code in ("TABLE_DOES_NOT_EXIST", "NOT_FOUND", "RESOURCE_DOES_NOT_EXIST", "NotFound"):
                if code != "TABLE_DOES_NOT_EXIST":
                    self.schema_info()  # a generic 404: raise if the catalog or schema is what is missing
                return None
            if code in ("CATALOG_DOES_NOT_EXIST", "SCHEMA_DOES_NOT_EXIST"):
                raise StoreError(f"{err}; create it first (e.g. `CREATE SCHEMA IF NOT EXISTS {self.catalog}.{self.schema}`) "
                                 "or fix the catalog/schema in the profile") from None
            raise
        location = info.get("storage_location")
        if not location:
            raise StoreError(f"Unity Catalog at {self.host}: table {full} has no storage_location "
                             f"(a view or a table type this store cannot read directly: {info.get('table_type')})")
        return location

    def temporary_credentials(self, *, table: str | None = None, url: str | None = None) -> dict:
        """Short-lived storage credentials Unity Catalog vends for a registered table (read/write) or, for a
        table not registered yet, for its path (create)."""
        if table is not None:
            full = self.full_name(table)
            info = self._call(f"GET table {full}", "GET", f"/api/2.1/unity-catalog/tables/{full}")
            return self._call(f"temporary credentials for {full}", "POST", "/api/2.1/unity-catalog/temporary-table-credentials",
                              {"table_id": info.get("table_id"), "operation": "READ_WRITE"})
        return self._call(f"temporary credentials for {url}", "POST", "/api/2.1/unity-catalog/temporary-path-credentials",
                          {"url": url, "operation": "PATH_CREATE_TABLE"})

    def schema_info(self) -> dict:
        """The schema's UC record (raises a StoreError naming the missing catalog or schema)."""
        full = f"{self.catalog}.{self.schema}"
        try:
            return self._call(f"GET schema {full}", "GET", f"/api/2.1/unity-catalog/schemas/{full}")
        except StoreError as err:
            if getattr(err, "error_code", "") in ("CATALOG_DOES_NOT_EXIST", "SCHEMA_DOES_NOT_EXIST", "NOT_FOUND", "NotFound"):
                raise StoreError(f"{err}; create it first (e.g. `CREATE SCHEMA IF NOT EXISTS {full}`) "
                                 "or fix the catalog/schema in the profile") from None
            raise

    def storage_root(self) -> str:
        """Where new tables go when the store was given no `storage_root`: the schema's storage root."""
        info = self.schema_info()
        root = info.get("storage_root") or info.get("storage_location")
        if not root:
            raise StoreError(
                f"Unity Catalog schema {self.catalog}.{self.schema} at {self.host} has no storage root; give the store "
                "`storage_root=` (an external location, e.g. s3://bucket/features) for its Delta tables"
            )
        return root

    def ensure_table(self, table: str, columns: list[dict], location: str, comment: str = "") -> str:
        """Register `<catalog>.<schema>.<table>` as an EXTERNAL Delta table at `location` unless it exists.

        Returns the table's location as Unity Catalog has it (another writer may have registered it first).
        """
        found = self.table_location(table)
        if found:
            return found
        if self.warehouse_id:
            # Databricks workspaces do not take external tables through POST /tables: SQL on a warehouse does it.
            request = create_table_statement(self.catalog, self.schema, table, location, self.warehouse_id)
            answer = self._call(f"CREATE table {self.full_name(table)} (SQL warehouse {self.warehouse_id})", "POST",
                                "/api/2.0/sql/statements", request)
            state = (answer.get("status") or {}).get("state")
            if state != "SUCCEEDED":
                error = (answer.get("status") or {}).get("error") or {}
                raise StoreError(f"Unity Catalog at {self.host}: creating {self.full_name(table)} on SQL warehouse "
                                 f"{self.warehouse_id} ended {state}: {self._scrub(str(error.get('message') or error))}")
            return self.table_location(table) or location
        body = {"name": table, "catalog_name": self.catalog, "schema_name": self.schema, "table_type": "EXTERNAL",
                "data_source_format": "DELTA", "storage_location": location, "columns": columns,
                "comment": comment or "written by feature_pipelines"}
        try:
            info = self._call(f"CREATE table {self.full_name(table)}", "POST", "/api/2.1/unity-catalog/tables", body)
        except StoreError as err:
            if getattr(err, "error_code", "") not in ("TABLE_ALREADY_EXISTS", "ALREADY_EXISTS", "RESOURCE_ALREADY_EXISTS"):
                raise
            return self.table_location(table) or location
        return info.get("storage_location") or location


def vended_storage_options(answer: dict, where: str) -> dict[str, str]:
    """deltalake/polars storage options from a Unity Catalog temporary-credentials answer."""
    aws = answer.get("aws_temp_credentials")
    if aws:
        options = {"AWS_ACCESS_KEY_ID": aws["access_key_id"], "AWS_SECRET_ACCESS_KEY": aws["secret_access_key"]}
        if aws.get("session_token"):
            options["AWS_SESSION_TOKEN"] = aws["session_token"]
        return options
    azure = answer.get("azure_user_delegation_sas")
    if azure:
        return {"SAS_TOKEN": azure["sas_token"]}
    raise StoreError(f"Unity Catalog vended credentials for {where} of a kind this store cannot use "
                     f"({', '.join(k for k in answer if k.endswith(('credentials', 'token', 'sas'))) or 'none'}); "
                     "pass storage_options= to the store instead")


def _is_cloud(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def create_table_statement(catalog: str, schema: str, table: str, location: str, warehouse_id: str) -> dict:
    """The Statement Execution API request that registers an external Delta table at `location`.

    Identifiers are validated names (letters, digits, '_', '-'), quoted with backticks; the location
    is a string literal with quotes doubled.
    """
    for value in (catalog, schema, table):
        if not _NAME.match(value):
            raise StoreError(f"{value!r} is not a valid Unity Catalog name")
    literal = location.replace("\\", "\\\\").replace("'", "''")
    statement = f"CREATE TABLE IF NOT EXISTS `{catalog}`.`{schema}`.`{table}` USING DELTA LOCATION '{literal}'"
    return {"warehouse_id": warehouse_id, "statement": statement, "wait_timeout": "30s", "on_wait_timeout": "CANCEL"}


def _uc_columns(delta_schema_json: str, partition_column: str) -> list[dict]:
    """Unity Catalog column records (name, type_text, type_name, type_json, position, partition_index)."""
    names = {"string": "STRING", "long": "LONG", "integer": "INT", "short": "SHORT", "byte": "BYTE", "double": "DOUBLE",
             "float": "FLOAT", "boolean": "BOOLEAN", "timestamp": "TIMESTAMP", "timestamp_ntz": "TIMESTAMP_NTZ",
             "date": "DATE", "binary": "BINARY"}
    texts = {"long": "bigint", "integer": "int", "short": "smallint", "byte": "tinyint"}
    out = []
    for position, field in enumerate(json.loads(delta_schema_json)["fields"]):
        kind = field["type"]
        if isinstance(kind, str):
            type_name = "DECIMAL" if kind.startswith("decimal") else names.get(kind, kind.upper())
            type_text = texts.get(kind, kind)
        else:
            type_name, type_text = kind["type"].upper(), kind["type"]
        column = {"name": field["name"], "type_text": type_text, "type_name": type_name,
                  "type_json": json.dumps(field), "position": position, "nullable": field.get("nullable", True)}
        if field["name"] == partition_column:
            column["partition_index"] = 0
        out.append(column)
    return out


# ---------------------------------------------------------------------------------------------
# dtypes: what Delta can hold, and back


def _for_delta(frame: pl.DataFrame, feature: str) -> pl.DataFrame:
    """`frame` with every column in a dtype Delta can store losslessly (reads cast back by the manifest)."""
    casts = []
    for name, dtype in frame.schema.items():
        target = None
        if dtype in (pl.UInt8, pl.UInt16, pl.UInt32):
            target = {pl.UInt8: pl.Int16, pl.UInt16: pl.Int32, pl.UInt32: pl.Int64}[dtype.base_type()]
        elif dtype == pl.UInt64:
            target = pl.Int64
        elif isinstance(dtype, pl.Datetime) and dtype.time_unit != "us":
            target = pl.Datetime("us", dtype.time_zone)
        elif isinstance(dtype, (pl.Duration, pl.Time)):
            target = pl.Int64
        elif isinstance(dtype, (pl.Categorical, pl.Enum)):
            target = pl.String
        if target is not None:
            casts.append(pl.col(name).cast(target, strict=True))
    if not casts:
        return frame
    try:
        return frame.with_columns(casts)
    except pl.exceptions.PolarsError as err:
        raise StoreError(f"feature {feature!r}: a column cannot be stored in Delta Lake ({err}); "
                         "UInt64 values above 2^63-1 have no Delta type") from None


_SIMPLE = {name: getattr(pl, name) for name in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                                                "Float32", "Float64", "Boolean", "String", "Date", "Time", "Binary",
                                                "Null", "Categorical")}


def _dtype(name: str) -> pl.DataType | None:
    """The polars dtype for a manifest dtype name (str(dtype)); None when it is not one this store casts to."""
    if name in _SIMPLE:
        return _SIMPLE[name]()
    found = re.fullmatch(r"Datetime\(time_unit='(\w+)', time_zone=(?:'([^']*)'|None)\)", name)
    if found:
        return pl.Datetime(found.group(1), found.group(2))
    found = re.fullmatch(r"Duration\(time_unit='(\w+)'\)", name)
    if found:
        return pl.Duration(found.group(1))
    return None


def _empty_frame(manifest: dict) -> pl.DataFrame:
    return pl.DataFrame(schema={c["name"]: _dtype(c["dtype"]) or pl.String for c in manifest["columns"]})


_ENTRY = ("rows", "content_hash", "delta_version")
"""The fields every partition entry of this store's manifests has."""


class _Moved(Exception):
    """The table changed while it was being read: re-read."""


# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    frame: pl.DataFrame
    schema: list[dict[str, str]]
    digest: str


class UnityCatalogStore:
    """Versioned feature partitions in Unity Catalog Delta tables; same interface and rules as `VersionedStore`.

    `catalog`/`schema` name where the tables live; `host`/`token` the workspace (default: the environment,
    DATABRICKS_HOST / DATABRICKS_TOKEN); `client` a ready `databricks.sdk.WorkspaceClient` or `CatalogClient`.
    New tables are created under `storage_root` (default: the schema's storage root as UC reports it) as
    `<storage_root>/<feature>`; `storage_options` (cloud credentials for that storage) go to deltalake/polars.
    `change_data_feed` turns on Delta's change data feed on new tables, which Databricks online tables need
    for triggered/continuous sync.
    """

    def __init__(self, catalog: str, schema: str = "features", *, host: str | None = None, token: str | None = None,
                 client: Any = None, storage_options: dict[str, str] | None = None, storage_root: str | None = None,
                 change_data_feed: bool = True, warehouse_id: str | None = None, vend_credentials: bool = True) -> None:
        if isinstance(client, CatalogClient):
            self.catalog_client = client
        else:
            self.catalog_client = CatalogClient(catalog, schema, host=host, token=token, workspace=client,
                                                warehouse_id=warehouse_id)
        self.catalog, self.schema = self.catalog_client.catalog, self.catalog_client.schema
        self._storage_options = dict(storage_options) if storage_options else None
        # Without explicit storage_options, cloud locations get credentials vended by Unity Catalog, per table.
        self._vend = vend_credentials
        self._vended: dict[str, tuple[float, dict]] = {}  # location -> (expires at, storage options)
        self._storage_root = storage_root
        self._change_data_feed = change_data_feed
        self._locations: dict[str, str] = {}  # table -> storage location, as Unity Catalog has it
        self._ensured: set[str] = set()  # tables known to exist as Delta tables and in Unity Catalog
        self.description = f"unity-catalog:{self.catalog}.{self.schema} at {self.catalog_client.host}"

    def __repr__(self) -> str:
        return f"UnityCatalogStore({self.catalog}.{self.schema} at {self.catalog_client.host})"

    @property
    def blobs(self):
        raise StoreError(
            f"{self.description} keeps data in Delta tables, not files: `feature-pipelines sync` and other file-level "
            "commands apply to the local/S3/GCS stores only. To bring back data, time-travel or RESTORE the feature's "
            "Delta table, or re-materialize the partitions"
        )

    def scan_options(self) -> dict:
        return {}

    # ---- locations -----------------------------------------------------------------------

    def table_name(self, feature: str) -> str:
        return self.catalog_client.full_name(feature)

    def _options(self, location: str) -> dict | None:
        """Storage options for `location`: the explicit ones, else (cloud storage) credentials vended by Unity Catalog."""
        if self._storage_options is not None or not self._vend or not _is_cloud(location):
            return self._storage_options
        cached = self._vended.get(location)
        if cached is not None and cached[0] > time.time() + 60:
            return cached[1]
        table = next((t for t, at in self._locations.items() if at == location), None)
        answer = self.catalog_client.temporary_credentials(table=table, url=None if table else location)
        options = vended_storage_options(answer, self.table_name(table) if table else location)
        expires = (answer.get("expiration_time") or 0) / 1000 or time.time() + 900
        self._vended[location] = (expires, options)
        return options

    def _location(self, table: str) -> str | None:
        if table not in self._locations:
            found = self.catalog_client.table_location(table)
            if found is None:
                return None
            self._locations[table] = found
        return self._locations[table]

    def _root(self) -> str:
        if not self._storage_root:
            self._storage_root = self.catalog_client.storage_root()
        return self._storage_root

    def _ensure_delta(self, table: str, schema: pa.Schema, partition_by: list[str], comment: str,
                      change_data_feed: bool = False) -> str:
        """Location of `table`, creating the (empty) Delta table and its UC entry if either is missing."""
        deltalake, _, DeltaError, _ = _lazy_deltalake()
        if table in self._ensured:
            return self._locations[table]
        location = self._location(table)
        target = location or _join(self._root(), table)
        if self._open(target) is None:
            config = {"delta.enableChangeDataFeed": "true"} if change_data_feed else None
            try:
                deltalake.DeltaTable.create(target, schema=schema, partition_by=partition_by, mode="ignore",
                                            configuration=config, storage_options=self._options(target))
            except (DeltaError, OSError) as err:
                if self._open(target) is None:  # not a lost creation race: a real failure
                    raise StoreError(f"cannot create the Delta table for {self.table_name(table)} at {target}: {err}; "
                                     "check the storage location and its credentials (storage_options)") from None
        if location is None:
            columns = _uc_columns(self._open(target).schema().to_json(), partition_by[0])
            location = self.catalog_client.ensure_table(table, columns, target, comment)
            self._locations[table] = location
            self._vended.pop(target, None)  # path credentials were for creating it; the table's own come next
        self._ensured.add(table)
        return location

    def _open(self, location: str, version: int | None = None):
        """The Delta table at `location` (at `version`), or None if there is none."""
        deltalake, _, DeltaError, TableNotFoundError = _lazy_deltalake()
        try:
            return deltalake.DeltaTable(location, version=version, storage_options=self._options(location))
        except TableNotFoundError:
            return None
        except (DeltaError, OSError) as err:
            at = "" if version is None else f" version {version}"
            raise StoreError(f"cannot open the Delta table at {location}{at}: {err}") from None

    # ---- the metadata table -----------------------------------------------------------------

    def _metadata_rows(self, feature: str | None = None) -> pl.DataFrame:
        location = self._location(METADATA_TABLE)
        table = self._open(location) if location else None
        if table is None:
            return pl.from_arrow(_METADATA_SCHEMA.empty_table())
        # polars' native Delta reader, not `DeltaTable.to_pyarrow_table`: with deltalake 1.6 / pyarrow 26 the
        # latter leaves C++ threads behind that abort the interpreter at exit ("terminate called ...").
        frame = pl.scan_delta(table)
        return (frame.filter(pl.col("feature") == feature) if feature else frame).collect()

    def _row_to_manifest(self, row: dict) -> dict:
        """The manifest a `_feature_metadata` row holds; a StoreError naming the row and the repair when it is damaged."""
        feature, meta = row["feature"], self.table_name(METADATA_TABLE)
        where = f"the {METADATA_TABLE} row of version {row['version']} of {feature!r} in {meta}"
        repair = (f"delete the feature's rows (`DELETE FROM {meta} WHERE feature = '{feature}'`) and run "
                  f"`UnityCatalogStore(...).repair('{feature}')`, which records them again from the Delta log of "
                  f"{self.table_name(feature)}")
        parsed = {}
        for column in ("keys", "columns", "info", "change", "partitions"):
            try:
                parsed[column] = json.loads(row[column])
            except (TypeError, ValueError) as err:
                raise corrupt_metadata(feature, where, f"column {column} is not valid JSON ({_first_line(err)})", repair) from None
        try:
            manifest = {
                "format": row["format"],
                "name": feature,
                "version": row["version"],
                "parent_version": row["parent_version"],
                "keys": parsed["keys"],
                "timestamp_column": row["timestamp_column"],
                "columns": parsed["columns"],
                "schema_hash": row["schema_hash"],
                "config_hash": row["config_hash"],
                "info": parsed["info"],
                "revision": row["revision"],
                "created_at": row["created_at"].astimezone(timezone.utc).isoformat(timespec="seconds"),
                "updated_at": row["updated_at"].astimezone(timezone.utc).isoformat(timespec="seconds"),
                "change": parsed["change"],
                "partitions": parsed["partitions"],
                "row_count": row["row_count"],
                "content_hash": row["content_hash"],
                "delta_version": row["delta_version"],
                "table": row["table_name"],
            }
        except (AttributeError, TypeError) as err:  # a null timestamp
            raise corrupt_metadata(feature, where, _first_line(err), repair) from None
        return load_manifest(manifest, feature=feature, where=where, repair=repair, entry_fields=_ENTRY)

    def _manifest_of(self, entry: dict, feature: str) -> dict | None:
        """The manifest a Delta commit (a history entry) carries, None for a commit without one (not ours)."""
        raw = entry.get(MANIFEST_KEY)
        if not raw:
            return None
        table = self.table_name(feature)
        return load_manifest(raw, feature=feature, where=f"the manifest in commit {entry.get('version')} of {table}",
                             entry_fields=_ENTRY,
                             repair=f"restore the table to an earlier feature_pipelines commit (`RESTORE TABLE {table} TO "
                                    "VERSION AS OF n`), or drop it and its rows in "
                                    f"{self.table_name(METADATA_TABLE)} and re-materialize")

    def _manifest_row(self, manifest: dict, location: str) -> dict:
        return {
            "feature": manifest["name"], "version": manifest["version"], "delta_version": manifest["delta_version"],
            "revision": manifest["revision"], "parent_version": manifest["parent_version"],
            "table_name": self.table_name(manifest["name"]), "storage_location": location,
            "keys": json.dumps(manifest["keys"]), "timestamp_column": manifest["timestamp_column"],
            "columns": json.dumps(manifest["columns"]), "schema_hash": manifest["schema_hash"],
            "config_hash": manifest["config_hash"], "content_hash": manifest["content_hash"],
            "row_count": manifest["row_count"], "partition_count": len(manifest["partitions"]),
            "partitions": json.dumps(manifest["partitions"]), "info": json.dumps(manifest["info"]),
            "change_bump": manifest["change"]["bump"], "change_reason": manifest["change"]["reason"],
            "change": json.dumps(manifest["change"]),
            "created_at": datetime.fromisoformat(manifest["created_at"]), "updated_at": datetime.fromisoformat(manifest["updated_at"]),
            "recorded_at": datetime.now(timezone.utc), "format": manifest.get("format", FORMAT),
        }

    def _record(self, feature: str) -> None:
        """Record in `_feature_metadata` every committed version of `feature` it lacks (newest revision per version).

        Runs after each commit and from `repair()`; a compare-and-swap on the metadata table's log that
        never replaces a row with an older Delta version, so concurrent writers cannot regress it.
        """
        deltalake, CommitFailedError, DeltaError, _ = _lazy_deltalake()
        location = self._location(feature)
        if location is None or self._open(location) is None:
            return
        meta_location = self._ensure_delta(METADATA_TABLE, _METADATA_SCHEMA, ["feature"],
                                           "feature_pipelines: semantic version -> Delta version, per feature")
        for attempt in range(ATTEMPTS):
            meta, table = self._open(meta_location), self._open(location)
            rows = pl.scan_delta(meta).filter(pl.col("feature") == feature).select("version", "delta_version").collect()
            recorded = dict(zip(rows["version"].to_list(), rows["delta_version"].to_list()))
            after = max(recorded.values(), default=-1)
            newest: dict[str, dict] = {}
            for manifest in self._manifests_after(table, after, feature):
                if manifest["delta_version"] > recorded.get(manifest["version"], -1):
                    newest[manifest["version"]] = manifest  # ascending: the last one per version wins
            if not newest:
                return
            data = pa.Table.from_pylist([self._manifest_row(m, location) for m in newest.values()], schema=_METADATA_SCHEMA)
            predicate = f"feature = {_quote(feature)} AND version IN ({', '.join(_quote(v) for v in newest)})"
            try:
                deltalake.write_deltalake(meta, data, mode="overwrite", predicate=predicate, partition_by=["feature"],
                                          commit_properties=deltalake.CommitProperties(max_commit_retries=0))
                return
            except CommitFailedError:
                time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 10))
            except (DeltaError, OSError) as err:
                raise StoreError(
                    f"feature {feature!r}: the data is committed (Delta version {max(m['delta_version'] for m in newest.values())} "
                    f"of {self.table_name(feature)}) but recording it in {self.table_name(METADATA_TABLE)} failed: {err}; "
                    "readers see the previous version until the next write or `store.repair()` records it"
                ) from None
        raise StoreError(f"feature {feature!r}: could not update {self.table_name(METADATA_TABLE)} after {ATTEMPTS} attempts "
                         "(heavy contention?); the data is committed, `store.repair()` records it")

    def repair(self, feature: str | None = None) -> None:
        """Record commits that `_feature_metadata` lacks (after a writer died between its commit and its record)."""
        names = [check_identifier(feature, "feature name")] if feature else sorted(
            {t for t in self._metadata_rows()["feature"].to_list()})
        for name in names:
            self._record(name)

    # ---- reading the Delta log ----------------------------------------------------------------

    def _manifests_after(self, table, after: int, feature: str) -> list[dict]:
        """Manifests of this store's commits with Delta version > `after`, oldest first (from commitInfo)."""
        head = table.version()
        if head <= after:
            return []
        limit = head - after + 16
        entries = table.history(limit)
        manifests = [m for m in (self._manifest_of(e, feature) for e in entries) if m]
        if len(entries) >= limit and not any(m["delta_version"] <= after for m in manifests):
            manifests = [m for m in (self._manifest_of(e, feature) for e in table.history()) if m]  # a long gap: read the whole log
        return sorted((m for m in manifests if m["delta_version"] > after), key=lambda m: m["delta_version"])

    def _base(self, table, feature: str) -> dict | None:
        """The newest manifest committed in `table` (loaded at version h), checking nothing else changed the data since.

        Normally the newest commit carries it. Raises _Moved if the log moved on while it was read (retry),
        StoreError if someone else wrote data into the table.
        """
        head = table.version()
        for limit in (1, 64, None):
            entries = table.history(limit)  # newest first; read from storage, which may be ahead of `head`
            for index, entry in enumerate(entries):
                manifest = self._manifest_of(entry, feature)
                if manifest is None:
                    continue
                if manifest["delta_version"] > head or index != head - manifest["delta_version"]:
                    raise _Moved()
                self._check_harmless(feature, entries[:index])
                return manifest
            if limit is not None and len(entries) < limit:
                break
        if len(entries) > head + 1:
            raise _Moved()
        # No manifest in the log we can read: a new table, or old commit files cleaned up by log retention
        # after maintenance commits. Then the metadata table knows the newest version.
        recorded = self.latest(feature)
        if recorded is not None and recorded["delta_version"] <= head:
            self._check_harmless(feature, entries[: head - recorded["delta_version"]])
            return recorded
        if len(entries) < head + 1:
            raise StoreError(
                f"feature {feature!r}: the Delta log of {self.table_name(feature)} no longer holds the commits of "
                f"feature_pipelines and {METADATA_TABLE} has no version of it; drop the table and re-materialize"
            )
        self._check_harmless(feature, entries)
        return None

    def _check_harmless(self, feature: str, entries: list[dict]) -> None:
        foreign = [e for e in entries if e.get("operation") not in _HARMLESS_OPERATIONS]
        if foreign:
            ops = ", ".join(sorted({str(e.get("operation")) for e in foreign}))
            raise StoreError(
                f"feature {feature!r}: the Delta table {self.table_name(feature)} was changed outside feature_pipelines "
                f"({ops}); the store will not build a version on data it did not write. Restore the table to its last "
                "feature_pipelines commit (`RESTORE TABLE ... TO VERSION AS OF n`) or drop it and re-materialize"
            )

    # ---- reading -------------------------------------------------------------------------

    def features(self) -> list[str]:
        rows = self._metadata_rows()
        return sorted(set(rows["feature"].to_list()))

    def latest(self, feature: str) -> dict | None:
        """The newest version's manifest, or None if the feature was never written."""
        rows = self._metadata_rows(check_identifier(feature, "feature name"))
        if rows.is_empty():
            return None
        return self._row_to_manifest(rows.sort("delta_version").row(-1, named=True))

    def manifest(self, feature: str, version: str | None = None) -> dict:
        """Manifest of `version` (default: the newest); a StoreError lists the versions that exist."""
        latest = newest_or_raise(self, feature)
        if not wants_older(feature, version, latest):
            return latest
        rows = self._metadata_rows(feature).filter(pl.col("version") == version)
        if rows.is_empty() or version not in self.versions(feature):
            raise StoreError(f"feature {feature!r} has no version {version!r}; versions: {self.versions(feature)}")
        return self._row_to_manifest(rows.sort("delta_version").row(-1, named=True))

    def versions(self, feature: str) -> list[str]:
        """Committed versions, oldest first (follows parent links from the newest, like VersionedStore)."""
        rows = self._metadata_rows(check_identifier(feature, "feature name"))
        if rows.is_empty():
            return []
        parents = dict(zip(rows["version"].to_list(), rows["parent_version"].to_list()))
        out, version = [], rows.sort("delta_version")["version"][-1]
        while version and version not in out:
            out.append(version)
            version = parents.get(version)
        return out[::-1]

    def _partitions(self, feature: str, manifest: dict, partitions: list[str] | None) -> list[str]:
        entries = manifest["partitions"]
        if partitions is None:
            return sorted(entries)
        missing = [p for p in partitions if p not in entries]
        if missing:
            have = sorted(entries)
            span = f"{have[0]} … {have[-1]} ({len(have)} partitions)" if have else "none"
            raise StoreError(
                f"feature {feature!r} version {manifest['version']} has no partition(s) {missing[:5]}; materialized: {span}"
            )
        return list(partitions)

    def partition_files(self, feature: str, version: str | None = None, partitions: list[str] | None = None) -> list[str]:
        """URIs of the Delta data files holding `partitions` (default all) at the version's Delta version."""
        manifest = self.manifest(feature, version)
        keys = self._partitions(feature, manifest, partitions)
        if not keys:
            return []
        table = self._pinned(feature, manifest)
        return list(table.file_uris(file_pruning_predicate=[(PARTITION_COLUMN, "in", keys)]))

    def _pinned(self, feature: str, manifest: dict):
        location = self._location(feature)
        if location is None:
            raise StoreError(f"feature {feature!r} version {manifest['version']}: table {self.table_name(feature)} is not in "
                             f"Unity Catalog at {self.catalog_client.host} any more (dropped?); re-materialize it")
        table = self._open(location, manifest["delta_version"])
        if table is None:
            raise StoreError(f"feature {feature!r}: no Delta table at {location} (registered as {self.table_name(feature)})")
        return table

    def scan(self, feature: str, version: str | None = None, partitions: list[str] | None = None) -> pl.LazyFrame:
        """Lazy scan of a version: Delta time travel to its Delta version, partition filter pushed down."""
        manifest = self.manifest(feature, version)
        keys = self._partitions(feature, manifest, partitions)
        if not keys:
            return _empty_frame(manifest).lazy()
        location = self._location(feature)
        if location is None:
            self._pinned(feature, manifest)  # raises: dropped from UC
        try:
            frame = pl.scan_delta(location, version=manifest["delta_version"], storage_options=self._options(location))
            frame = frame.filter(pl.col(PARTITION_COLUMN).is_in(keys)) if len(keys) < len(manifest["partitions"]) else frame
            if len(keys) > 1:  # Delta lists files in no useful order: give rows in partition order, like the file stores
                frame = frame.sort(PARTITION_COLUMN, maintain_order=True)
            stored = frame.collect_schema()
        except Exception as err:  # deltalake/polars raise several types for a missing version or vacuumed log
            raise StoreError(
                f"feature {feature!r} version {manifest['version']} (Delta version {manifest['delta_version']} of "
                f"{self.table_name(feature)}) cannot be read: {err}. If the table was VACUUMed past that version, "
                "its files are gone: re-materialize, or keep delta.deletedFileRetentionDuration longer than your pins"
            ) from None
        columns = []
        for column in manifest["columns"]:
            want = _dtype(column["dtype"])
            expr = pl.col(column["name"])
            columns.append(expr.cast(want) if want is not None and stored.get(column["name"]) != want else expr)
        return frame.select(columns)

    def read(self, feature: str, version: str | None = None, partitions: list[str] | None = None,
             columns: list[str] | None = None) -> pl.DataFrame:
        frame = self.scan(feature, version, partitions)
        try:
            return (frame.select(columns) if columns else frame).collect()
        except (OSError, pl.exceptions.ComputeError) as err:
            raise StoreError(f"feature {feature!r}: reading {self.table_name(feature)} failed: {err}") from None

    # ---- writing -------------------------------------------------------------------------

    def write_partition(self, feature: str, partition: str, frame: pl.DataFrame, *, keys: list[str], timestamp: str,
                        config_hash: str, info: dict | None = None, lineage: dict | None = None,
                        allow_empty: bool = False) -> CommitResult:
        """Store one partition's frame and commit it atomically; see `write_partitions`."""
        (result,) = self.write_partitions(feature, {partition: frame}, keys=keys, timestamp=timestamp,
                                          config_hash=config_hash, info=info, lineage=lineage, allow_empty=allow_empty)
        return result

    def write_partitions(self, feature: str, frames: dict[str, pl.DataFrame], *, keys: list[str], timestamp: str,
                         config_hash: str, info: dict | None = None, lineage: dict | None = None,
                         allow_empty: bool = False) -> list[CommitResult]:
        """Store partition frames and commit them in ONE Delta transaction (one version change), like VersionedStore.

        Bad input (missing key/timestamp column, differing schemas, a `__partition` column, a dtype Delta
        cannot hold) raises StoreError before anything is written. Replacing a partition that holds rows with
        an empty frame in the same version is a DataError (nothing written) unless `allow_empty`.
        """
        check_identifier(feature, "feature name")
        if not frames:
            return []
        deltalake, CommitFailedError, DeltaError, _ = _lazy_deltalake()
        prepared: dict[str, _Prepared] = {}
        for partition, frame in frames.items():
            if not isinstance(partition, str) or not partition:
                raise StoreError(f"feature {feature!r}: partition keys must be non-empty strings, got {partition!r}")
            missing = [c for c in [*keys, timestamp] if c not in frame.columns]
            if missing:
                raise StoreError(f"feature {feature!r} partition {partition!r}: frame lacks key/timestamp column(s) {missing}")
            if PARTITION_COLUMN in frame.columns:
                raise StoreError(f"feature {feature!r} partition {partition!r}: column {PARTITION_COLUMN!r} is reserved "
                                 "for the partition key in Delta tables; rename it")
            prepared[partition] = _Prepared(frame, schema_of(frame), content_hash(frame))
        first = next(iter(prepared))
        schema = prepared[first].schema
        odd = [p for p, prep in prepared.items() if prep.schema != schema]
        if odd:
            raise StoreError(f"feature {feature!r}: partitions {odd[:3]} have a different schema from {first!r} in one write")
        stored = {p: _for_delta(prep.frame, feature).with_columns(pl.lit(p, pl.String).alias(PARTITION_COLUMN))
                  for p, prep in prepared.items()}
        try:
            arrow_schema = next(iter(stored.values())).to_arrow().schema
            deltalake.Schema.from_arrow(arrow_schema)
        except Exception as err:  # polars and deltalake raise several types for an unstorable dtype
            raise StoreError(f"feature {feature!r}: these columns cannot be stored in a Delta table: {err}") from None

        location = self._ensure_delta(feature, arrow_schema, [PARTITION_COLUMN], f"feature_pipelines feature {feature}",
                                      change_data_feed=self._change_data_feed)
        for attempt in range(ATTEMPTS):
            table = self._open(location)
            if table is None:
                raise StoreError(f"feature {feature!r}: the Delta table at {location} disappeared while writing")
            try:
                current = self._base(table, feature)
            except _Moved:
                time.sleep(random.uniform(0.001, 0.02))
                continue
            head = table.version()
            outcome, version, bump, reason = decide(current, {p: prep.digest for p, prep in prepared.items()}, schema, config_hash,
                                                    rows=None if allow_empty else {p: prep.frame.height for p, prep in prepared.items()})
            fresh = bump in ("initial", "major", "minor")
            stale_lineage = [p for p, (b, _) in outcome.items()
                             if b == "unchanged" and lineage and current["partitions"][p].get("lineage") != lineage]
            if bump == "unchanged" and not stale_lineage:
                self._record(feature)
                return [self._result(feature, p, current, "unchanged", outcome[p][1], current["partitions"][p], location)
                        for p in prepared]
            new = self._next_manifest(feature, current, version, bump, reason, outcome, prepared, keys, timestamp,
                                      config_hash, info, lineage, head + 1)
            changed = [p for p, (b, _) in outcome.items() if b != "unchanged"]
            data = pl.concat([stored[p] for p in changed]).to_arrow() if changed else stored[first].clear().to_arrow()
            commit = deltalake.CommitProperties(custom_metadata={MANIFEST_KEY: json.dumps(new, separators=(",", ":"))},
                                                max_commit_retries=0)
            try:
                if fresh:
                    deltalake.write_deltalake(table, data, mode="overwrite", schema_mode="overwrite",
                                              partition_by=[PARTITION_COLUMN], commit_properties=commit)
                elif changed:
                    predicate = f"{PARTITION_COLUMN} IN ({', '.join(_quote(p) for p in changed)})"
                    deltalake.write_deltalake(table, data, mode="overwrite", predicate=predicate,
                                              partition_by=[PARTITION_COLUMN], commit_properties=commit)
                else:  # only lineage changed: a commit with no data, carrying the new manifest
                    deltalake.write_deltalake(table, data, mode="append", partition_by=[PARTITION_COLUMN],
                                              commit_properties=commit)
            except CommitFailedError:
                time.sleep(random.uniform(0.005, 0.05) * min(attempt + 1, 10))
                continue
            except (DeltaError, OSError) as err:
                raise StoreError(f"feature {feature!r}: writing {_some(changed or list(prepared))} to "
                                 f"{self.table_name(feature)} failed: {err}; nothing was committed") from None
            self._record(feature)
            return [self._result(feature, p, new, *outcome[p], new["partitions"][p], location) for p in prepared]
        raise StoreError(f"feature {feature!r}: could not commit {_some(list(prepared))} after {ATTEMPTS} attempts (heavy contention?)")

    def _next_manifest(self, feature, current, version, bump, reason, outcome, prepared, keys, timestamp, config_hash,
                       info, lineage, delta_version) -> dict:
        now = _now()
        fresh = bump in ("initial", "major", "minor")
        partitions: dict = {} if fresh else dict(current["partitions"])
        replaced = {}
        for partition, prep in prepared.items():
            if outcome[partition][0] == "unchanged":
                partitions[partition] = {**partitions[partition], **({"lineage": lineage} if lineage else {})}
                continue
            if partition in partitions:
                replaced[partition] = f"{self.table_name(feature)}@v{partitions[partition]['delta_version']}"
            partitions[partition] = {"rows": prep.frame.height, "content_hash": prep.digest, "hash_format": HASH_FORMAT,
                                     "written_at": now, "delta_version": delta_version,
                                     **({"lineage": lineage} if lineage else {})}
        schema = prepared[next(iter(prepared))].schema
        new = next_manifest(feature, current, version, bump, reason, outcome, keys=keys, timestamp=timestamp, schema=schema,
                            config_hash=config_hash, info=info, partitions=partitions, replaced=replaced, now=now)
        new["delta_version"] = delta_version
        new["table"] = self.table_name(feature)
        return new

    def _result(self, feature: str, partition: str, manifest: dict, bump: str, reason: str, entry: dict,
                location: str) -> CommitResult:
        return commit_result(feature, partition, manifest, bump, reason, entry,
                             path=f"{self.table_name(feature)}@v{manifest['delta_version']}", uri=location)


__all__ = ["CatalogClient", "METADATA_TABLE", "PARTITION_COLUMN", "UnityCatalogStore"]
