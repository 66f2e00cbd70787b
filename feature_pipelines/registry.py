"""Finds the project's features: every Feature and FeatureService defined at module level in a package."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

from feature_pipelines.errors import DefinitionError
from feature_pipelines.spec.feature import Feature, FeatureService


@dataclass
class Registry:
    """The features and services of one project, by name."""

    features: dict[str, Feature] = field(default_factory=dict)
    services: dict[str, FeatureService] = field(default_factory=dict)

    def add(self, item: Feature | FeatureService) -> None:
        table = self.features if isinstance(item, Feature) else self.services
        other = table.get(item.name)
        if other is not None and other is not item:
            raise DefinitionError(f"two definitions are named {item.name!r}; names must be unique in a project")
        table[item.name] = item

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


def load_registry(package: str = "feature_pipelines.defs") -> Registry:
    """Import every module of `package` and collect its Features and FeatureServices."""
    registry = Registry()
    root = importlib.import_module(package)
    modules = [root] + [
        importlib.import_module(f"{package}.{info.name}")
        for info in pkgutil.iter_modules(root.__path__)
        if not info.name.startswith("_")
    ]
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, (Feature, FeatureService)):
                registry.add(value)
    return registry
