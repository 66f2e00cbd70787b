"""Errors raised to users: each names what was wrong and what was expected."""


class FeaturePipelinesError(Exception):
    """Base class of every error this package raises on purpose."""


class DefinitionError(FeaturePipelinesError, ValueError):
    """A feature, entity, source or validator definition is invalid."""


class DataError(FeaturePipelinesError, ValueError):
    """Source or feature data does not match what its definition expects."""


class StoreError(FeaturePipelinesError):
    """The offline store could not complete a read or a commit."""


class ProfileError(FeaturePipelinesError, ValueError):
    """A profile file is missing, malformed, or names an unset environment variable."""
