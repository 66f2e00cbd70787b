"""Profiles: `<profiles folder>/<name>.yaml` says where data lives in one environment (dev, staging, prod, ...).

The CLI's and training code's way to pick an environment; each store mapping resolves to the same
Dagster resource classes a code location uses (`feature_pipelines.orchestration.resources`)::

    offline_store: {kind: s3, bucket: ${FEATURE_STORE_BUCKET}, prefix: feature_store}
    online_store: {kind: redis, url: ${REDIS_URL}, key_prefix: fp}

Selected by `--profile`, else `FEATURE_PIPELINES_PROFILE`, else `dev`; a profile may also be a path to
a YAML file. The profiles folder is the project's (`[tool.feature_pipelines] profiles`, default `env/`
under the project root), or `$FEATURE_PIPELINES_ENV_DIR`. Without a `dev.yaml`, `dev` means the
embedded defaults: `./feature_store` and `./online_store.sqlite` under the project root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from feature_pipelines.errors import ProfileError
from feature_pipelines.project import find_project

DEFAULT = "dev"
SECTIONS = ("offline_store", "online_store")


def env_dir() -> Path:
    """The folder profiles are read from."""
    configured = os.environ.get("FEATURE_PIPELINES_ENV_DIR")
    return Path(configured).resolve() if configured else find_project().profiles_dir


@dataclass(frozen=True)
class Profile:
    """A resolved profile: its name, its file (None for the built-in `dev`) and its two store resources."""

    name: str
    path: Path | None
    offline: object = field(repr=False)  # OfflineStoreResource
    online: object = field(repr=False)  # OnlineStoreResource

    def offline_store(self):
        """The offline store this profile selects (built once per profile)."""
        return self.offline.store()

    def online_store(self):
        """A new connection to the online store this profile selects; the caller closes it."""
        return self.online.open()

    def masked(self) -> dict:
        """The settings for display: environment variables by name, credentials masked."""
        return {"offline_store": self.offline.masked(), "online_store": self.online.masked()}

    def __repr__(self) -> str:
        return f"Profile({self.name!r}, {str(self.path) if self.path else 'built-in'})"


def load_profile(name: str | None = None) -> Profile:
    """The profile `name` (else $FEATURE_PIPELINES_PROFILE, else dev), its stores resolved and checked."""
    from feature_pipelines.orchestration.resources import resource_from_settings

    name = name or os.environ.get("FEATURE_PIPELINES_PROFILE") or DEFAULT
    folder = env_dir()
    path = Path(name) if name.endswith((".yaml", ".yml")) else folder / f"{name}.yaml"
    if not path.is_file():
        if name == DEFAULT:
            root = find_project().root
            return Profile(DEFAULT, None, resource_from_settings(None, "offline_store", "profile 'dev'", root),
                           resource_from_settings(None, "online_store", "profile 'dev'", root))
        available = sorted(p.stem for p in folder.glob("*.y*ml")) if folder.is_dir() else []
        raise ProfileError(f"profile {name!r} not found at {path}; available profiles: {', '.join(available) or 'none'} "
                           f"(plus the built-in {DEFAULT!r})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ProfileError(f"profile {name!r} ({path}) is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {name!r} ({path}) must be a mapping of settings")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ProfileError(f"profile {name!r} ({path}) has unknown section(s) {unknown}; it takes: {', '.join(SECTIONS)}")
    path = path.resolve()
    # Relative paths: under the project root for the project's own profiles, else beside the profiles folder.
    root = find_project().root if path.parent == find_project().profiles_dir.resolve() else path.parent.parent
    where = f"profile {Path(name).stem!r} ({path})"
    return Profile(Path(name).stem, path, *(resource_from_settings(raw.get(s), s, where, root) for s in SECTIONS))
