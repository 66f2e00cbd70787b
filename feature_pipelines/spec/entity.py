"""Entities: what a feature row is about, named by one or more join keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from feature_pipelines.errors import DefinitionError
from feature_pipelines.spec.names import check_identifier


@dataclass(frozen=True)
class Entity:
    """A thing features describe, e.g. a customer, keyed by `join_key` or composite `join_keys`.

    With `from_columns`, a key is not read from the source but computed as a stable surrogate key
    (see `feature_pipelines.keys`) from identifying columns, so PII never needs to be stored:
    a list when there is one key, or a dict {key: [columns]} for composite entities.
    """

    name: str
    join_key: str | None = None
    join_keys: tuple[str, ...] | list[str] | None = None
    from_columns: list[str] | dict[str, list[str]] | None = None
    description: str = ""
    derived: dict[str, tuple[str, ...]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_identifier(self.name, "entity name")
        if (self.join_key is None) == (self.join_keys is None):
            raise DefinitionError(f"entity {self.name!r}: give exactly one of join_key= or join_keys=")
        keys = (self.join_key,) if self.join_key is not None else tuple(self.join_keys or ())
        if not keys:
            raise DefinitionError(f"entity {self.name!r}: join_keys must not be empty")
        for key in keys:
            check_identifier(key, f"join key of entity {self.name!r}")
        if len(set(keys)) != len(keys):
            raise DefinitionError(f"entity {self.name!r}: join keys {keys} repeat a name")
        object.__setattr__(self, "join_keys", keys)
        derived: dict[str, tuple[str, ...]] = {}
        if isinstance(self.from_columns, dict):
            derived = {k: tuple(v) for k, v in self.from_columns.items()}
        elif self.from_columns is not None:
            if len(keys) != 1:
                raise DefinitionError(
                    f"entity {self.name!r} has several keys {keys}: give from_columns as a dict {{key: [columns]}}"
                )
            derived = {keys[0]: tuple(self.from_columns)}
        for key, cols in derived.items():
            if key not in keys:
                raise DefinitionError(f"entity {self.name!r}: from_columns names {key!r}, which is not one of its keys {keys}")
            if not cols or not all(isinstance(c, str) and c for c in cols):
                raise DefinitionError(f"entity {self.name!r}: from_columns for {key!r} must be a non-empty list of column names")
        object.__setattr__(self, "derived", derived)

    @classmethod
    def composite(cls, name: str, *entities: "Entity", description: str = "") -> "Entity":
        """An entity keyed by the keys of several others, e.g. customer × merchant; surrogate keys carry over."""
        keys = [k for e in entities for k in e.join_keys]
        derived = {k: list(v) for e in entities for k, v in e.derived.items()}
        return cls(name, join_keys=keys, from_columns=derived or None, description=description)
