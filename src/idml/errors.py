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
