"""What every bad input must produce, checked the same way by every test: one line, no traceback."""

from __future__ import annotations

import pytest


def one_line_message(info: pytest.ExceptionInfo, *fragments: str) -> str:
    """The raised error's message: one non-empty line holding every fragment."""
    message = str(info.value)
    assert message and "\n" not in message, repr(message)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def one_error_line(err: str, *fragments: str, code: int | None = None, expected_code: int = 2,
                   prefix: str = "") -> str:
    """The one line a command printed on stderr (with exit status ``expected_code`` when ``code`` is
    given), starting with ``prefix``, holding every fragment and no traceback."""
    if code is not None:
        assert code == expected_code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(prefix), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]
