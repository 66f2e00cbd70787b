"""The names a feature set adds to a code location, under one optional prefix.

With prefix `fraud`: asset keys `fraud/<feature>`, jobs `fraud__<feature>_job`, the publish job
`fraud__publish_online`, the sensor `fraud__online_publish_sensor` and the resource keys
`fraud__feature_store` (IO manager), `fraud__offline_store` and `fraud__online_store`. Without a
prefix the names are the bare ones, as in this repository's example. Check names are scoped by
their asset, so they need no prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dagster as dg

from feature_pipelines.errors import DefinitionError

_PREFIX = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Names:
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix and not _PREFIX.match(self.prefix):
            raise DefinitionError(f"prefix {self.prefix!r} is not valid: expected letters, digits and '_', not starting with a digit")

    def _name(self, name: str) -> str:
        return f"{self.prefix}__{name}" if self.prefix else name

    def asset_key(self, feature: str) -> dg.AssetKey:
        return dg.AssetKey([self.prefix, feature] if self.prefix else [feature])

    def job(self, feature: str) -> str:
        return self._name(f"{feature}_job")

    @property
    def publish_job(self) -> str:
        return self._name("publish_online")

    @property
    def sensor(self) -> str:
        return self._name("online_publish_sensor")

    @property
    def io_manager(self) -> str:
        return self._name("feature_store")

    @property
    def offline_store(self) -> str:
        return self._name("offline_store")

    @property
    def online_store(self) -> str:
        return self._name("online_store")
