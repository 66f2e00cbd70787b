"""Finding the user's project: its root folder, its features package and its profiles folder.

A project is the nearest folder, walking up from the working directory (as `dg` does), whose
`pyproject.toml` has a `[tool.feature_pipelines]` table (or a `[tool.dg]` one, or is the first
`pyproject.toml` found)::

    [tool.feature_pipelines]
    package = "my_project.features"   # where the Features and FeatureServices live (searched recursively)
    profiles = "env"                   # folder of <profile>.yaml files, relative to the project root

Relative paths in profiles, store settings and sources resolve against the project root, never the
installed library, so they mean the same from any working directory inside the project.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from feature_pipelines.errors import ProfileError

ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
PROJECT_DIR_ENV = "FEATURE_PIPELINES_PROJECT_DIR"
PACKAGE_ENV = "FEATURE_PIPELINES_PACKAGE"


@dataclass(frozen=True)
class Project:
    """Where a project lives and what it declares in `[tool.feature_pipelines]`."""

    root: Path
    package: str | None = None
    profiles: str = "env"

    @property
    def profiles_dir(self) -> Path:
        return self.root / self.profiles

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        """`path` itself when absolute, else under the project root."""
        path = Path(path).expanduser()
        return path if path.is_absolute() else self.root / path

    def make_importable(self) -> None:
        """Put the project's source folder on sys.path, as `dg` runs a project from its folder, so its
        features package imports even when the project itself is not installed."""
        folder = self.root / "src" if (self.root / "src").is_dir() else self.root
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))

    def features_package(self) -> str:
        """The configured features package, or one error saying how to configure it."""
        if self.package:
            return self.package
        raise ProfileError(
            f"no features package configured for the project at {self.root}: add\n"
            f"  [tool.feature_pipelines]\n  package = \"your_project.features\"\n"
            f"to {self.root / 'pyproject.toml'}, or pass --module your_project.features"
        )


def find_project(start: str | os.PathLike[str] | None = None) -> Project:
    """The project around `start` ($FEATURE_PIPELINES_PROJECT_DIR, else the working directory).

    `$FEATURE_PIPELINES_PACKAGE` overrides the configured package. With no pyproject.toml above,
    the project is the working directory itself (no package configured).
    """
    where = Path(start or os.environ.get(PROJECT_DIR_ENV) or Path.cwd()).resolve()
    project = _find(where)
    override = os.environ.get(PACKAGE_ENV)
    if override:
        project = Project(project.root, override, project.profiles)
    return project


@lru_cache(maxsize=32)
def _find(where: Path) -> Project:
    first: Path | None = None
    for folder in (where, *where.parents):
        pyproject = folder / "pyproject.toml"
        if not pyproject.is_file():
            continue
        try:
            tool = tomllib.loads(pyproject.read_text()).get("tool", {})
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ProfileError(f"{pyproject} cannot be read as TOML: {err}") from None
        ours = tool.get("feature_pipelines")
        if ours is not None:
            if not isinstance(ours, dict):
                raise ProfileError(f"{pyproject}: [tool.feature_pipelines] must be a table")
            unknown = sorted(set(ours) - {"package", "profiles"})
            if unknown:
                raise ProfileError(f"{pyproject}: [tool.feature_pipelines] has unknown key(s) {unknown}; it takes: package, profiles")
            return Project(folder, ours.get("package") or None, ours.get("profiles") or "env")
        if "dg" in tool:
            return Project(folder)
        first = first or folder
    return Project(first or where)


def project_root() -> Path:
    """The root of the project around the working directory."""
    return find_project().root


def expand(text: str, where: str) -> str:
    """`${VAR}` and `${VAR:-default}` replaced from the environment; an unset variable without a default
    is one ProfileError naming it and `where` it was needed."""

    def sub(match: re.Match) -> str:
        var, default = match.group(1), match.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        raise ProfileError(f"{where} needs environment variable {var}, which is not set")

    return ENV_VAR.sub(sub, text)
