"""Exception types: every user-facing failure is a one-line message naming what to do."""


class SmoothinfError(ValueError):
    """Base class of smoothinf's errors (a ValueError, so callers may catch either)."""


class DataError(SmoothinfError):
    """A data set is missing, corrupt, or has an unexpected format."""


class CheckpointError(SmoothinfError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit its architecture."""


class ConfigError(SmoothinfError):
    """A configuration value is unknown or out of range."""
