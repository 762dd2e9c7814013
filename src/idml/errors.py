"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class IdmlError(Exception):
    """A problem the user can fix (bad flag, missing data, unusable checkpoint...)."""


class ConfigError(IdmlError, ValueError):
    """An impossible or inconsistent setting."""


class DataError(IdmlError):
    """Missing, corrupt or malformed data."""
