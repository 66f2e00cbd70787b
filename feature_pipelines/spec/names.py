"""Name rules shared by every spec: names become paths, asset keys and column names, so they must be safe."""

import re

from feature_pipelines.errors import DefinitionError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def check_identifier(value: object, what: str) -> str:
    """Return `value` if it is a safe identifier (letters, digits, underscore; no dots, slashes or spaces)."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise DefinitionError(
            f"{what} {value!r} is not a safe identifier: expected letters, digits and '_' "
            "(starting with a letter or '_', at most 128 characters), e.g. 'customer_spend'"
        )
    return value
