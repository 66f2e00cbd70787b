"""Finds a project's features: every Feature and FeatureService defined at module level in a package,
its sub-packages included."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType

from feature_pipelines.errors import DefinitionError
from feature_pipelines.spec.feature import Feature, FeatureService


@dataclass
class Registry:
    """The features and services of one project, by name, with the module each was found in."""

    features: dict[str, Feature] = field(default_factory=dict)
    services: dict[str, FeatureService] = field(default_factory=dict)
    modules: dict[str, str] = field(default_factory=dict)  # name -> module it was first found in

    def add(self, item: Feature | FeatureService, module: str = "") -> None:
        table = self.features if isinstance(item, Feature) else self.services
        other = table.get(item.name)
        if other is not None and other is not item:
            here, there = self.modules.get(item.name, "?"), module or "?"
            raise DefinitionError(
                f"two {'features' if isinstance(item, Feature) else 'feature services'} are named {item.name!r}: "
                f"one in {here}, one in {there}; names must be unique in a project"
            )
        if other is None:
            table[item.name] = item
            self.modules.setdefault(item.name, module)

    def feature(self, name: str) -> Feature:
        try:
            return self.features[name]
        except KeyError:
            raise DefinitionError(f"unknown feature {name!r}; features: {', '.join(sorted(self.features)) or 'none'}") from None

    def select(self, names: list[str] | None = None, tags: list[str] | None = None) -> list[Feature]:
        """Features by name and/or tag ('key' or 'key=value'); all when neither is given."""
        chosen = [self.feature(n) for n in names] if names else list(self.features.values())
        for tag in tags or []:
            key, _, value = tag.partition("=")
            chosen = [f for f in chosen if key in f.tags and (not value or f.tags[key] == value)]
        return chosen

    @classmethod
    def of(cls, items) -> Registry:
        """A registry of the given Features and FeatureServices (services' features included)."""
        registry = cls()
        for item in items:
            registry.add(item, "")
            if isinstance(item, FeatureService):
                for ref in item.features:
                    if isinstance(ref, Feature):
                        registry.add(ref, "")
        return registry


def _modules(root: ModuleType) -> list[ModuleType]:
    """`root` and every module under it (sub-packages too), skipping names that start with '_'."""
    found = [root]
    if hasattr(root, "__path__"):
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{root.__name__}."):
            if any(part.startswith("_") for part in info.name.split(".")[len(root.__name__.split(".")):]):
                continue
            found.append(importlib.import_module(info.name))
    return found


def load_registry(package: str | ModuleType) -> Registry:
    """Import every module of `package` (recursively) and collect its Features and FeatureServices.

    A definition imported into several modules is one definition; two different definitions with
    one name are an error naming both modules.
    """
    try:
        root = importlib.import_module(package) if isinstance(package, str) else package
    except ModuleNotFoundError as err:
        raise DefinitionError(
            f"features package {package!r} cannot be imported ({err}); check `package` in [tool.feature_pipelines] "
            "or the component's defs.yaml, and that the project is installed or run from its folder"
        ) from None
    registry = Registry()
    for module in _modules(root):
        for value in vars(module).values():
            if isinstance(value, (Feature, FeatureService)):
                registry.add(value, _home(value, module))
    return registry


def _home(item: Feature | FeatureService, found_in: ModuleType) -> str:
    """The module that defined `item` (its transform's module for a Feature), else where it was found."""
    transform = getattr(item, "transform", None)
    return getattr(transform, "__module__", None) or found_in.__name__


def project_registry() -> Registry:
    """The features of the project around the working directory (`[tool.feature_pipelines] package`)."""
    from feature_pipelines.project import find_project

    project = find_project()
    project.make_importable()
    return load_registry(project.features_package())
