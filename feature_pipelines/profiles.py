"""Profiles: `env/<name>.yaml` says where data lives for one environment (dev, staging, prod, ...).

Selected by `--profile`, else `FEATURE_PIPELINES_PROFILE`, else `dev`. A profile may also be given as
a path to a YAML file. `${VAR}` and `${VAR:-default}` are replaced from the environment; an unset
variable without a default is an error naming it. Relative paths are relative to the project root
(the folder holding `env/`), so they mean the same from any working directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from feature_pipelines.errors import ProfileError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_WORDS = ("password", "secret", "token", "key", "credential")


def env_dir() -> Path:
    configured = os.environ.get("FEATURE_PIPELINES_ENV_DIR")
    if configured:
        return Path(configured).resolve()
    for candidate in (Path.cwd() / "env", PROJECT_ROOT / "env"):
        if candidate.is_dir():
            return candidate
    return PROJECT_ROOT / "env"


@dataclass(frozen=True)
class Profile:
    """A resolved profile: its name, file and settings with variables substituted."""

    name: str
    path: Path
    settings: dict

    @property
    def root(self) -> Path:
        return self.path.parent.parent

    def offline_store(self):
        """Build the offline store this profile selects: `local` (the default), `s3`, `gcs` or `unity_catalog`.

        ```yaml
        offline_store: {kind: local, path: ./feature_store}
        offline_store: {kind: s3, bucket: my-features, prefix: feature_store, region: eu-west-1, endpoint_url: ...}
        offline_store: {kind: gcs, bucket: my-features, prefix: feature_store, project: my-project, endpoint: ...}
        offline_store: {kind: unity_catalog, catalog: ml, schema: features, host: https://....databricks.com, storage_root: s3://...,
                        warehouse_id: ...}   # a SQL warehouse registers new tables on Databricks
        ```

        Credentials never go in a profile: S3 uses boto3's chain (AWS_* variables, AWS_PROFILE, roles),
        GCS Application Default Credentials. Empty values (an unset `${VAR:-}`) count as not given.
        """
        from feature_pipelines.store import GCSStore, LocalStore, S3Store

        cfg = dict(self.settings.get("offline_store") or {"kind": "local"})
        kind = cfg.pop("kind", "local")
        where = f"profile {self.name!r} ({self.path}): offline_store"
        if kind == "local":
            path = Path(cfg.pop("path", None) or "./feature_store")
            if cfg:
                raise ProfileError(f"{where} has unknown setting(s) {sorted(cfg)}; kind 'local' takes: path")
            return LocalStore(path if path.is_absolute() else self.root / path)
        if kind in ("s3", "gcs"):
            allowed = ("bucket", "prefix", "region", "endpoint_url") if kind == "s3" else ("bucket", "prefix", "project", "endpoint")
            extra = sorted(k for k in cfg if k not in allowed)
            if extra:
                raise ProfileError(f"{where} has unknown setting(s) {extra}; kind {kind!r} takes: {', '.join(allowed)} "
                                   "(credentials come from the environment, never from the profile)")
            values = {k: (None if v in (None, "") else str(v)) for k, v in cfg.items()}
            if not values.get("bucket"):
                raise ProfileError(f"{where} kind {kind!r} needs `bucket`: the bare bucket name, e.g. `bucket: my-features`")
            values["prefix"] = values.get("prefix") or ""
            return S3Store(**values) if kind == "s3" else GCSStore(**values)
        if kind == "unity_catalog":
            from feature_pipelines.store.unity import UnityCatalogStore

            allowed = ("catalog", "schema", "host", "storage_root", "warehouse_id")
            extra = sorted(k for k in cfg if k not in allowed)
            if extra:
                raise ProfileError(f"{where} has unknown setting(s) {extra}; kind 'unity_catalog' takes: {', '.join(allowed)} "
                                   "(the token comes from DATABRICKS_TOKEN, never from the profile)")
            values = {k: (None if v in (None, "") else str(v)) for k, v in cfg.items()}
            if not values.get("catalog"):
                raise ProfileError(f"{where} kind 'unity_catalog' needs `catalog`, e.g. `catalog: ml`")
            return UnityCatalogStore(values.pop("catalog"), values.pop("schema", None) or "features", **values)
        raise ProfileError(f"{where} kind {kind!r} is not supported; expected 'local', 's3', 'gcs' or 'unity_catalog'")

    def online_store(self):
        """Build the online store this profile selects: `sqlite` (embedded, the default), `redis` or `databricks`."""
        cfg = dict(self.settings.get("online_store") or {"kind": "sqlite"})
        kind = cfg.pop("kind", "sqlite")
        where = f"profile {self.name!r} ({self.path}): online_store"
        if kind == "sqlite":
            from feature_pipelines.online import SQLiteOnlineStore

            path = Path(cfg.pop("path", "./online_store.sqlite"))
            _no_extra(cfg, where)
            return SQLiteOnlineStore(path if path.is_absolute() else self.root / path)
        if kind == "redis":
            from feature_pipelines.online import RedisOnlineStore

            allowed = {"url", "host", "port", "db", "password", "ssl", "key_prefix"}
            _no_extra({k: v for k, v in cfg.items() if k not in allowed}, where)
            if not cfg.get("password"):
                cfg.pop("password", None)  # `${REDIS_PASSWORD:-}` unset: no AUTH
            return RedisOnlineStore(**cfg)
        if kind == "databricks":
            from feature_pipelines.online.databricks import DatabricksOnlineStore

            return DatabricksOnlineStore.from_profile(cfg)
        raise ProfileError(f"{where} kind {kind!r} is not supported; expected 'sqlite', 'redis' or 'databricks'")

    def masked(self) -> dict:
        """Settings with secret-looking values masked, for display."""
        return _mask(self.settings)


def load_profile(name: str | None = None) -> Profile:
    name = name or os.environ.get("FEATURE_PIPELINES_PROFILE") or "dev"
    path = Path(name) if name.endswith((".yaml", ".yml")) else env_dir() / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in env_dir().glob("*.yaml"))
        raise ProfileError(f"profile {name!r} not found at {path}; available profiles: {', '.join(available) or 'none'}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"profile {name!r} ({path}) is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {name!r} ({path}) must be a mapping of settings")
    return Profile(Path(name).stem, path.resolve(), _interpolate(raw, path))


def _interpolate(value, path: Path):
    if isinstance(value, dict):
        return {k: _interpolate(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path) for v in value]
    if isinstance(value, str):

        def sub(match: re.Match) -> str:
            var, default = match.group(1), match.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            raise ProfileError(f"profile {path} needs environment variable {var}, which is not set")

        return _VAR.sub(sub, value)
    return value


def _no_extra(cfg: dict, where: str) -> None:
    if cfg:
        raise ProfileError(f"{where} has unknown setting(s) {sorted(cfg)}")


def _mask(value, key: str = ""):
    if isinstance(value, dict):
        return {k: _mask(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, key) for v in value]
    if isinstance(value, str) and any(w in key.lower() for w in _SECRET_WORDS) and value:
        return "****"
    if isinstance(value, str):
        return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1****@", value)
    return value
