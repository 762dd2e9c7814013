"""Running a function in a forked child whose peak memory is measured: a memory regression then
fails one test instead of exhausting the machine."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable


def in_child(func: Callable[[], object]) -> tuple[int, str, int]:
    """``func()`` in a forked child: (wait status, text returned or error raised, peak RSS growth in bytes)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            text = f"returned {func()}"
        except BaseException as exc:  # everything is reported to the parent
            text = f"{type(exc).__name__}: {exc}"
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        os.write(write_end, f"{grown}|{text}".encode()[:50_000])
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        grown, _, text = fh.read().decode().partition("|")
    return os.waitpid(pid, 0)[1], text, int(grown or 0)
