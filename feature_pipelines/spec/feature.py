"""The declarative feature definition: what to compute, from which events, at which grain."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable, Mapping, Sequence

import polars as pl

from feature_pipelines.errors import DefinitionError
from feature_pipelines.spec.durations import parse_duration
from feature_pipelines.spec.entity import Entity
from feature_pipelines.spec.granularity import Granularity, granularity, parse_start
from feature_pipelines.spec.metrics import Latest, Rolling
from feature_pipelines.spec.names import check_identifier
from feature_pipelines.spec.source import Source
from feature_pipelines.spec.validators import Validator

FEATURE_TIMESTAMP = "feature_timestamp"
Transform = Callable[[pl.LazyFrame], pl.LazyFrame]


@dataclass(frozen=True, eq=False)
class Feature:
    """One feature: per entity, values computed from `source` for every `granularity` interval since `start`.

    * With `Rolling` metrics a row stamped t (an interval's end) aggregates events in [t - window, t).
      Each interval has a row for every entity with at least one event in
      [interval start - longest window, interval end): the longest window of this interval or of the
      previous one. So the interval in which an entity's windows empty carries count 0 and nulls, and a
      point-in-time read after it sees "no activity", never a stale value.
    * With `Latest` the newest event's columns, written for entities active in the interval.
    * With no metrics, the (transformed) source rows of the interval, stamped with their own time.

    `transform` (a function LazyFrame -> LazyFrame) runs on the source rows before anything else.
    `validators` map a column to rules; a column of the output is checked on the output rows, any
    other column on the source rows of the interval. `ttl` says how long a value stays valid when
    read point-in-time or online.
    """

    name: str
    entities: Sequence[Entity]
    source: Source
    granularity: str = "daily"
    start: str | datetime = "2024-01-01"
    end: str | datetime | None = None
    timestamp: str | None = None
    transform: Transform | None = None
    metrics: Sequence[Rolling | Latest] = ()
    validators: Mapping[str, Sequence[Validator]] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    owner: str | None = None
    ttl: str | timedelta | None = None
    online: bool = False
    group: str = "features"
    freshness: str | timedelta | None = None

    def __post_init__(self) -> None:
        check_identifier(self.name, "feature name")
        check_identifier(self.group, f"group of feature {self.name!r}")
        if not self.entities or not all(isinstance(e, Entity) for e in self.entities):
            raise DefinitionError(f"feature {self.name!r}: entities must be a non-empty list of Entity")
        if not isinstance(self.source, Source):
            raise DefinitionError(f"feature {self.name!r}: source must be a Source, got {type(self.source).__name__}")
        object.__setattr__(self, "entities", tuple(self.entities))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "timestamp", self.timestamp or self.source.timestamp)
        self.grain  # validates the name
        start = parse_start(self.start)
        if self.grain.floor(start) != start:
            raise DefinitionError(f"feature {self.name!r}: start {start.isoformat()} is not the start of a {self.granularity} interval")
        object.__setattr__(self, "start", start)
        if self.end is not None:
            object.__setattr__(self, "end", parse_start(self.end))
        if self.ttl is not None:
            parse_duration(self.ttl, what=f"ttl of feature {self.name!r}")
        if self.freshness is not None:
            parse_duration(self.freshness, what=f"freshness of feature {self.name!r}")
        kinds = {type(m) for m in self.metrics}
        if not kinds <= {Rolling, Latest}:
            raise DefinitionError(f"feature {self.name!r}: metrics must be Rolling(...) or Latest(...)")
        if len(kinds) > 1:
            raise DefinitionError(f"feature {self.name!r}: mix of Rolling and Latest metrics; define them as two features")
        names = list(self.join_keys) + [FEATURE_TIMESTAMP] + self.metric_columns
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DefinitionError(f"feature {self.name!r}: output columns {dupes} are produced twice")
        for column, rules in self.validators.items():
            if isinstance(rules, Validator) or not all(isinstance(r, Validator) for r in rules):
                raise DefinitionError(
                    f"feature {self.name!r}: validators[{column!r}] must be a list of validators, e.g. [not_null()]"
                )
        for key, value in self.tags.items():
            check_identifier(key, f"tag key of feature {self.name!r}")
            if not isinstance(value, str) or len(value) > 63:
                raise DefinitionError(f"feature {self.name!r}: tag {key!r} must have a string value of at most 63 characters")

    @property
    def grain(self) -> Granularity:
        return granularity(self.granularity)

    @property
    def join_keys(self) -> list[str]:
        keys: list[str] = []
        for entity in self.entities:
            keys += [k for k in entity.join_keys if k not in keys]
        return keys

    @property
    def derived_keys(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for entity in self.entities:
            out.update(entity.derived)
        return out

    @property
    def rolling(self) -> list[Rolling]:
        return [m for m in self.metrics if isinstance(m, Rolling)]

    @property
    def latest(self) -> list[Latest]:
        return [m for m in self.metrics if isinstance(m, Latest)]

    @property
    def kind(self) -> str:
        """'rolling', 'latest' or 'rows' (no metrics)."""
        return "rolling" if self.rolling else "latest" if self.latest else "rows"

    @property
    def lookback_us(self) -> int:
        """How far before an interval's start its computation reads: the longest window."""
        return max((w for m in self.rolling for w in m.window_us), default=0)

    @property
    def metric_columns(self) -> list[str]:
        cols = [out for m in self.rolling for *_, out in m.outputs()]
        if self.latest:
            cols += [out for m in self.latest for _, out in m.outputs()] + ["latest_event_timestamp"]
        return cols

    @property
    def freshness_us(self) -> int:
        """How old the newest materialization may get before the feature is stale: `freshness`, else two
        intervals of its granularity (the interval that is open now, plus one to compute the closed one)."""
        if self.freshness is not None:
            return parse_duration(self.freshness)
        interval = {"hourly": 3_600, "daily": 86_400, "weekly": 7 * 86_400, "monthly": 31 * 86_400}[self.granularity]
        return 2 * interval * 1_000_000

    @property
    def ttl_us(self) -> int | None:
        return None if self.ttl is None else parse_duration(self.ttl)

    def config(self) -> dict:
        """Everything that decides the feature's data, as plain JSON; hashed into `config_hash`."""
        return {
            "name": self.name,
            "keys": self.join_keys,
            "derived_keys": {k: list(v) for k, v in sorted(self.derived_keys.items())},
            "source": {"path": self.source.path, "format": self.source.format},
            "timestamp": self.timestamp,
            "granularity": self.granularity,
            "start": self.start.isoformat(),
            "metrics": [m.config() for m in self.metrics],
            "transform": _transform_fingerprint(self.transform),
        }

    @property
    def config_hash(self) -> str:
        blob = json.dumps(self.config(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _transform_fingerprint(fn: Transform | None) -> str | None:
    """A transform is identified by its source text, so editing it makes a new config (a MINOR version)."""
    if fn is None:
        return None
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        text = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def feature(**kwargs) -> Callable[[Transform], Feature]:
    """Decorator form of `Feature`: the function is the transform and its name the feature's name.

    >>> @feature(entities=[customer], source=transactions, metrics=[Rolling(["7d"], {"amount": ["sum"]})])
    ... def customer_spend(events: pl.LazyFrame) -> pl.LazyFrame:
    ...     return events.filter(pl.col("status") == "approved")
    """

    def wrap(fn: Transform) -> Feature:
        return Feature(name=kwargs.pop("name", fn.__name__), transform=fn, description=kwargs.pop("description", (fn.__doc__ or "").strip()), **kwargs)

    return wrap


@dataclass(frozen=True)
class FeatureService:
    """A named set of features one model consumes; items are Features, names, or 'name:column' selections."""

    name: str
    features: Sequence[Feature | str]
    description: str = ""

    def __post_init__(self) -> None:
        check_identifier(self.name, "feature service name")
        if not self.features:
            raise DefinitionError(f"feature service {self.name!r} lists no features")

    @property
    def references(self) -> list[str]:
        return [f.name if isinstance(f, Feature) else f for f in self.features]
