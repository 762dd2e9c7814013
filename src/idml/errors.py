"""User-facing errors: the CLI prints their message on one line and exits with status 2."""

import os
import signal
import threading

#: How the usual control characters are shown (the others as \xNN or \uNNNN).
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class IdmlError(Exception):
    """A problem the user can fix (bad flag, missing data, unusable checkpoint...)."""


class ConfigError(IdmlError, ValueError):
    """An impossible or inconsistent setting."""


class DataError(IdmlError):
    """Missing, corrupt or malformed data."""


class AgreedError(IdmlError):
    """One rank's failure, raised on every rank so that none waits for the others; rank 0 prints it."""


class NonFiniteLossError(IdmlError):
    """The training loss became NaN or infinite: the run stops before saving anything from it."""


class RunStopped(Exception):
    """The run stopped cleanly on a signal after checkpointing; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(exc: BaseException) -> str:
    """The user-facing line of ``exc``: the first non-empty line of its message.

    A DataLoader worker's exception reaches the main process re-raised with the worker's whole
    traceback in its message; there the line that matters is the original message, at its end.
    """
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if not any(line.startswith(("Traceback (most recent call last)", "Original Traceback")) for line in lines):
        if isinstance(exc, IdmlError):
            return printable(text)  # idml's own message: a line break in it came from a file name
        return printable(lines[0])
    _, sep, message = lines[-1].partition(f"{type(exc).__name__}: ")
    return printable(message if sep else lines[-1])


#: Characters of a text value quoted in a message (a value from a file can be of any size).
QUOTE_LIMIT = 60


def describe(value: object) -> str:
    """A short, one-line description of any value, for messages: a bounded quote of text, the
    number for a number, the type and size of anything else.

    ``repr`` is never called on a container: a deeply nested or self-referencing value (a YAML alias
    bomb, a pickle's nested lists) would take unbounded time and memory to print, or raise
    RecursionError; Python refuses to print integers of more than 4300 digits.
    """
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**30 else "an integer of more than 30 digits"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str | bytes):
        quoted = repr(value[:QUOTE_LIMIT])
        return f"{quoted}... ({len(value)} characters)" if len(value) > QUOTE_LIMIT else quoted
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):  # a tensor or an array, without importing either
        return f"a {type(value).__name__} of {value.dtype} with shape {tuple(shape)}"
    if isinstance(value, list | tuple) and len(value) <= 8 and all(
            v is None or isinstance(v, bool | int | float) for v in value):
        return "[" + ", ".join(describe(v) for v in value) + "]"
    if isinstance(value, list | tuple | dict | set):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def listing(words: list[str]) -> str:
    """``["a", "b", "c"]`` as "a, b and c" (for messages)."""
    return " and ".join([", ".join(words[:-1]), words[-1]]) if len(words) > 1 else "".join(words)


def printable(text: str) -> str:
    """``text`` with its control and invisible characters escaped, so that it prints on one line.

    File names may hold a newline, a carriage return, terminal escape sequences or bytes that are
    not UTF-8 (Python decodes those to lone surrogates, which ``print`` cannot encode): shown raw,
    they would forge lines in a table or an error message. Other characters, accents included,
    are kept as they are.
    """
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    return "".join(out)


def exit_without_interruption() -> None:
    """A DDP worker on its way out with an error ignores SIGTERM from now on.

    torchrun sends SIGTERM to every worker as soon as one has exited; the others are already
    exiting with the same error and should end with their own status (2), not be killed.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
