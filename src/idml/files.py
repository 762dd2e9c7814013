"""The one way idml creates or replaces a file: atomically, and never through a symbolic link.

Every file a run or a command writes (checkpoints, ``metrics.csv``, ``config.yaml``, figures,
exported models) goes through :func:`atomic_write`:

- the new content goes to a temporary file in the same folder, created exclusively (``O_EXCL``
  with ``O_NOFOLLOW``: a name planted there in advance, or a link, makes the creation fail), then
  flushed, fsynced and renamed over the target, and the folder is fsynced: a crash or a full disk
  at any moment leaves either the old file or the new one, never a mix;
- a target that is a symbolic link is refused with one line. Run folders can sit in a shared
  ``--output_dir``: a link planted as ``runs/x/config.yaml`` must not make idml overwrite the file
  it points to (the rename would replace the link, not the target, but silently doing so hides the
  plant; refusing says so).

:func:`open_for_lock` opens a lock file the same way (``O_NOFOLLOW``),
:func:`remove_stale_temps` deletes the temporary files of a write that was killed, and
:func:`open_to_read` opens a file to read with one-line errors.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from idml.errors import IdmlError, describe, one_line

TEMP_SUFFIX = ".tmp"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _file_mode() -> int:
    """The permissions a plain ``open(path, "w")`` would give (honouring the umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _reason(exc: BaseException) -> str:
    """Why a write failed: the OSError behind it ("No space left on device") when there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return one_line(exc)


def refuse_link(path: Path, fix: str = "remove it") -> None:
    """Refuse, with one line, to write to ``path`` when it is a symbolic link (``fix``: what to do)."""
    if path.is_symlink():
        raise IdmlError(f"refusing to write {path}: it is a symbolic link (to {describe(os.readlink(path))}); idml "
                        f"never writes through links, which someone else may have planted: {fix}")


def free_name(path: Path, tag: str = "") -> Path:
    """``<path>.<tag>1`` (or 2, 3, ...): the first such name that nothing, not even a dangling link, holds."""
    n = 1
    while os.path.lexists(path.with_name(f"{path.name}.{tag}{n}")):
        n += 1
    return path.with_name(f"{path.name}.{tag}{n}")


def _temp_file(path: Path) -> tuple[int, Path]:
    """A new, exclusively created temporary file beside ``path`` (its descriptor and name)."""
    for attempt in range(100):
        tmp = path.with_name(f".{path.name[:120]}.{os.getpid()}.{attempt}{TEMP_SUFFIX}")  # fits NAME_MAX
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, _file_mode()), tmp
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, f"no free temporary name beside {path}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Replace ``path`` by what ``write`` writes to a binary file handle (see the module docstring).

    A failed write (full disk, lost permission, an error in ``write``) removes the temporary file
    and raises a one-line :class:`IdmlError`; the previous file is untouched. Returns ``path``.
    """
    path = Path(path)
    refuse_link(path)
    tmp = None
    try:
        fd, tmp = _temp_file(path)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError, ValueError) as exc:  # torch.save reports failed writes as RuntimeError
        raise IdmlError(f"cannot write {path}: {_reason(exc)}; the previous file, if any, is intact") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of UTF-8 text (newlines written as given)."""
    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


class NotRegularFile(OSError):
    """A name that leads to something other than a regular file (a folder, a named pipe, a device)."""


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file (links followed, as any reader
    does), else :class:`NotRegularFile`; the one way idml opens a file it reads whole.

    Opened without blocking and checked before a byte is read: a named pipe called ``m.onnx`` or
    ``x.JPEG`` would otherwise make the reader wait forever, and a device would be read without end.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL,
                                 "a folder" if stat.S_ISDIR(mode) else "a named pipe or a device")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_to_read(path: str | Path, what: str) -> BinaryIO:
    """``path`` opened for binary reading (:func:`open_regular`); a missing file, a folder, a pipe
    or an unreadable one is one line calling it ``what`` ("checkpoint", "model")."""
    try:
        return open_regular(path)
    except FileNotFoundError as exc:
        raise IdmlError(f"{what} {path} does not exist") from exc
    except NotRegularFile as exc:
        raise IdmlError(f"{what} {path} is {exc.strerror}, not a {what} file") from exc
    except OSError as exc:
        raise IdmlError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def open_for_lock(path: Path) -> int:
    """A read-write descriptor of the lock file ``path`` (created if missing), refusing a link.

    The lock is the one file idml writes in place (its owner's pid), so more than a symbolic link
    is refused: a hard link planted under its name would have idml overwrite the other file, and a
    named pipe or a device is no lock file.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0), 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_link(path)
        raise
    info = os.fstat(fd)
    problem = ("it is not a regular file" if not stat.S_ISREG(info.st_mode) else
               f"it is a hard link (the file has {info.st_nlink} names)" if info.st_nlink > 1 else None)
    if problem is None:
        return fd
    os.close(fd)
    raise IdmlError(f"refusing to write {path}: {problem}; idml never writes through links, which someone else "
                    "may have planted: remove it")


def remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files that writes killed in ``folder`` left behind (``.<name>.*.tmp``).

    Call it only on a folder this process has locked: a live writer's temporary file looks the same.
    """
    for stale in folder.glob(f".*{TEMP_SUFFIX}"):
        if stale.is_file() and not stale.is_symlink():
            stale.unlink(missing_ok=True)
