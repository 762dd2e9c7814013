"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class IdmlError(Exception):
    """A problem the user can fix (bad flag, missing data, unusable checkpoint...)."""


class ConfigError(IdmlError, ValueError):
    """An impossible or inconsistent setting."""


class DataError(IdmlError):
    """Missing, corrupt or malformed data."""


class NonFiniteLossError(IdmlError):
    """The training loss became NaN or infinite: the run stops before saving anything from it."""


class RunStopped(Exception):
    """The run stopped cleanly on a signal after checkpointing; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(exc: BaseException) -> str:
    """The user-facing line of ``exc``.

    A DataLoader worker's exception reaches the main process re-raised with the worker's whole
    traceback in its message; the line that matters is the original message, at its end.
    """
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) <= 1:
        return text or type(exc).__name__
    last = lines[-1]
    _, sep, message = last.partition(f"{type(exc).__name__}: ")
    return message if sep else last
