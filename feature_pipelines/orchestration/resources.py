"""Stores as Dagster resources: one configuration model for the Component, `build_defs`, profiles and the CLI.

Each class is a `dg.ConfigurableResource` (shown on the UI's resource page; secrets as `dg.EnvVar`,
which the UI shows by name, never by value) that builds one store. A profile's `offline_store:` /
`online_store:` mapping and a component's `offline_store:` / `online_store:` attributes are the
same thing: `kind` picks the class, the other keys are its fields. A value written `${VAR}` (or
`${VAR:-default}`) is read from the environment; in a secret field (`password`, `url`) it stays an
`EnvVar`, so neither the UI nor the run's logs ever hold the value. Relative paths resolve against
the project root (see `feature_pipelines.project`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
from pydantic import PrivateAttr, ValidationError

from feature_pipelines.errors import ProfileError
from feature_pipelines.project import ENV_VAR, expand, find_project


def resolved(value: Any) -> Any:
    """The value of a field that may be a `dg.EnvVar` (None when its variable is unset or empty)."""
    if isinstance(value, dg.EnvVar):
        return value.get_value() or None
    return None if value == "" else value


def mask_url(url: str) -> str:
    """`scheme://user:secret@host` → `scheme://user:****@host` (and `scheme://secret@host` → `scheme://****@host`)."""
    return re.sub(r"(://(?:[^:/@]*:)?)[^@/]+@", r"\1****@", str(url))


class _StoreResource(dg.ConfigurableResource):
    kind: ClassVar[str] = ""
    secret_fields: ClassVar[tuple[str, ...]] = ()
    required: ClassVar[tuple[str, ...]] = ()
    aliases: ClassVar[dict[str, str]] = {}  # profile key -> field name, where a key would shadow pydantic's names

    def value(self, name: str) -> Any:
        return resolved(getattr(self, name))

    def check(self) -> None:
        """Raise one ProfileError when a required setting is missing (an unset variable included): called at load time."""
        for name in self.required:
            if self.value(name) in (None, ""):
                raw = getattr(self, name)
                how = f"environment variable {raw.env_var_name}, which is not set" if isinstance(raw, dg.EnvVar) else "it is not set"
                raise ProfileError(f"{self.kind} store ({type(self).__name__}) needs `{name}`, but {how}")

    def masked(self) -> dict[str, Any]:
        """`kind` and the fields as given, for display: environment variables by name, credentials masked."""
        shown: dict[str, Any] = {"kind": self.kind}
        for name in type(self).model_fields:
            raw = getattr(self, name)
            if isinstance(raw, dg.EnvVar):
                raw = f"${{{raw.env_var_name}}}"
            elif name in self.secret_fields and raw:
                raw = mask_url(raw) if "://" in str(raw) else "****"
            shown[name] = raw
        return shown

    def settings(self) -> dict[str, Any]:
        """The resolved field values, as the store's constructor takes them."""
        return {name: self.value(name) for name in type(self).model_fields}


class OfflineStoreResource(_StoreResource):
    """Base of the offline-store resources: `store()` builds the versioned store once per resource."""

    _store: Any = PrivateAttr(default=None)

    def store(self):
        if self._store is None:
            self.check()
            self._store = self._build()
        return self._store

    def _build(self):  # pragma: no cover - every kind overrides it
        raise NotImplementedError


class LocalStoreResource(OfflineStoreResource):
    """Partition files and version manifests in a folder (relative paths: under the project root)."""

    kind: ClassVar[str] = "local"
    path: str = "feature_store"

    def _build(self):
        from feature_pipelines.store import LocalStore

        return LocalStore(find_project().resolve(self.value("path") or "feature_store"))


class S3StoreResource(OfflineStoreResource):
    """The versioned store in an S3 bucket; credentials from boto3's chain (AWS_* variables, AWS_PROFILE, roles)."""

    kind: ClassVar[str] = "s3"
    required: ClassVar[tuple[str, ...]] = ("bucket",)
    bucket: str
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None

    def _build(self):
        from feature_pipelines.store import S3Store

        values = self.settings()
        return S3Store(values.pop("bucket"), values.pop("prefix") or "", **values)


class GCSStoreResource(OfflineStoreResource):
    """The versioned store in a GCS bucket; credentials from Application Default Credentials."""

    kind: ClassVar[str] = "gcs"
    required: ClassVar[tuple[str, ...]] = ("bucket",)
    bucket: str
    prefix: str = ""
    project: str | None = None
    endpoint: str | None = None

    def _build(self):
        from feature_pipelines.store import GCSStore

        values = self.settings()
        return GCSStore(values.pop("bucket"), values.pop("prefix") or "", **values)


class UnityCatalogStoreResource(OfflineStoreResource):
    """Delta tables `catalog.schema.<feature>` in Unity Catalog; the token comes from DATABRICKS_TOKEN."""

    kind: ClassVar[str] = "unity_catalog"
    required: ClassVar[tuple[str, ...]] = ("catalog",)
    aliases: ClassVar[dict[str, str]] = {"schema": "schema_name"}
    catalog: str
    schema_name: str = "features"
    host: str | None = None
    storage_root: str | None = None
    warehouse_id: str | None = None

    def _build(self):
        from feature_pipelines.store.unity import UnityCatalogStore

        values = self.settings()
        return UnityCatalogStore(values.pop("catalog"), values.pop("schema_name") or "features", **values)


class OnlineStoreResource(_StoreResource):
    """Base of the online-store resources: `open()` connects a new store; the caller closes it."""

    def open(self):
        self.check()
        return self._open()

    def _open(self):  # pragma: no cover - every kind overrides it
        raise NotImplementedError


class SQLiteOnlineStoreResource(OnlineStoreResource):
    """The embedded online store: one SQLite file (relative paths: under the project root)."""

    kind: ClassVar[str] = "sqlite"
    path: str = "online_store.sqlite"

    def _open(self):
        from feature_pipelines.online import SQLiteOnlineStore

        return SQLiteOnlineStore(find_project().resolve(self.value("path") or "online_store.sqlite"))


class RedisOnlineStoreResource(OnlineStoreResource):
    """Redis by `url` (`redis://host:6379/0`, `rediss://` for TLS) or host/port/db; password from the environment."""

    kind: ClassVar[str] = "redis"
    secret_fields: ClassVar[tuple[str, ...]] = ("url", "password")
    url: str | None = None
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str | None = None
    ssl: bool = False
    key_prefix: str = "fp"

    def _open(self):
        from feature_pipelines.online import RedisOnlineStore

        values = self.settings()
        return RedisOnlineStore(values.pop("url"), **values)


class PostgresOnlineStoreResource(OnlineStoreResource):
    """PostgreSQL (Databricks Lakebase included) by `conninfo` (`postgresql://user@host:5432/db` or `host=... dbname=...`);
    the password from `password` (an environment variable) or PGPASSWORD; a bounded connection pool."""

    kind: ClassVar[str] = "postgres"
    secret_fields: ClassVar[tuple[str, ...]] = ("conninfo", "password")
    aliases: ClassVar[dict[str, str]] = {"schema": "schema_name"}
    conninfo: str = ""
    password: str | None = None
    table: str = "fp_online"
    schema_name: str | None = None
    max_connections: int = 10

    def _open(self):
        from feature_pipelines.online import PostgresOnlineStore

        values = self.settings()
        return PostgresOnlineStore(values.pop("conninfo") or "", schema=values.pop("schema_name"), **values)


class DynamoDBOnlineStoreResource(OnlineStoreResource):
    """A DynamoDB table (created on first write if missing, on-demand billing); credentials from boto3's chain."""

    kind: ClassVar[str] = "dynamodb"
    required: ClassVar[tuple[str, ...]] = ("table",)
    table: str
    region: str | None = None
    endpoint_url: str | None = None
    create_table: bool = True
    consistent_reads: bool = False

    def _open(self):
        from feature_pipelines.online import DynamoDBOnlineStore

        values = self.settings()
        return DynamoDBOnlineStore(values.pop("table"), **values)


class DatabricksOnlineStoreResource(OnlineStoreResource):
    """Databricks online tables synced from the Unity Catalog feature tables (`sync_mode`: snapshot, triggered, continuous)."""

    kind: ClassVar[str] = "databricks"
    required: ClassVar[tuple[str, ...]] = ("catalog",)
    aliases: ClassVar[dict[str, str]] = {"schema": "schema_name"}
    catalog: str
    schema_name: str = "features"
    sync_mode: str = "triggered"
    online_catalog: str | None = None
    online_schema: str | None = None
    online_suffix: str | None = None
    host: str | None = None

    def _open(self):
        from feature_pipelines.online.databricks import DatabricksOnlineStore

        values = {k: v for k, v in self.settings().items() if v is not None}
        values["schema"] = values.pop("schema_name")
        return DatabricksOnlineStore.from_profile(values)


OFFLINE_KINDS: dict[str, type[OfflineStoreResource]] = {
    cls.kind: cls for cls in (LocalStoreResource, S3StoreResource, GCSStoreResource, UnityCatalogStoreResource)
}
ONLINE_KINDS: dict[str, type[OnlineStoreResource]] = {
    cls.kind: cls for cls in (SQLiteOnlineStoreResource, RedisOnlineStoreResource, PostgresOnlineStoreResource,
                              DynamoDBOnlineStoreResource, DatabricksOnlineStoreResource)
}


def resource_from_settings(settings: dict | None, role: str, where: str, root: Path | None = None):
    """The resource a `{kind: ..., <field>: ...}` mapping describes (a profile's or a component's store).

    `role` is 'offline_store' or 'online_store'. Unknown kinds and fields, wrong types and unset
    variables are one ProfileError naming `where`, the setting and what is expected.
    """
    kinds = OFFLINE_KINDS if role == "offline_store" else ONLINE_KINDS
    default = "local" if role == "offline_store" else "sqlite"
    if settings is not None and not isinstance(settings, dict):
        raise ProfileError(f"{where}: {role} must be a mapping like {{kind: {default}, ...}}, got {settings!r}")
    cfg = dict(settings or {"kind": default})
    kind = cfg.pop("kind", default)
    cls = kinds.get(kind)
    if cls is None:
        raise ProfileError(f"{where}: {role} kind {kind!r} is not supported; expected one of {', '.join(map(repr, kinds))}")
    fields = cls.model_fields
    values: dict[str, Any] = {}
    for key, raw in cfg.items():
        name = cls.aliases.get(key, key)
        if name not in fields:
            takes = ", ".join(k for k in [*cls.aliases, *fields] if k not in cls.aliases.values())
            raise ProfileError(f"{where}: {role} kind {kind!r} has unknown setting {key!r}; it takes: {takes} "
                               "(credentials come from the environment, never from settings)")
        value = _from_env(raw, secret=name in cls.secret_fields, where=f"{where}: {role}.{key}")
        if value is None or value == "":
            continue
        if name == "path" and not isinstance(value, dg.EnvVar) and root is not None:
            value = str(Path(root) / value) if not Path(str(value)).expanduser().is_absolute() else str(value)
        values[name] = value
    missing = [name for name in cls.required if name not in values]
    if missing:
        raise ProfileError(f"{where}: {role} kind {kind!r} needs `{missing[0]}`, which is not set "
                           f"(e.g. `{missing[0]}: my-{missing[0].replace('_', '-')}`)")
    if "path" in fields and "path" not in values and root is not None:
        values["path"] = str(Path(root) / fields["path"].default)
    try:
        resource = cls(**values)
    except (ValidationError, dg.DagsterInvalidConfigError, TypeError) as err:
        raise ProfileError(f"{where}: {role} kind {kind!r} settings are invalid: {_first_error(err)}") from None
    return resource


def _from_env(raw: Any, *, secret: bool, where: str) -> Any:
    """`${VAR}` / `${VAR:-default}` from the environment; a secret that is one whole `${VAR}` stays a `dg.EnvVar`."""
    if not isinstance(raw, str):
        return raw
    whole = ENV_VAR.fullmatch(raw.strip())
    if secret and whole and os.environ.get(whole.group(1)):
        return dg.EnvVar(whole.group(1))
    return expand(raw, where)


def _first_error(err: Exception) -> str:
    """The first problem, without the offending value (it may be a secret)."""
    if isinstance(err, ValidationError) and err.errors():
        first = err.errors()[0]
        return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(err).splitlines()[0]


__all__ = [
    "DatabricksOnlineStoreResource", "DynamoDBOnlineStoreResource", "GCSStoreResource", "PostgresOnlineStoreResource", "LocalStoreResource", "OFFLINE_KINDS", "ONLINE_KINDS",
    "OfflineStoreResource", "OnlineStoreResource", "RedisOnlineStoreResource", "S3StoreResource", "SQLiteOnlineStoreResource",
    "UnityCatalogStoreResource", "resolved", "resource_from_settings",
]
