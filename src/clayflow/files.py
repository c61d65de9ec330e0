"""Crash-safe file writing shared by checkpoints, run files and CLI outputs."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from clayflow.errors import first_line

PROBE_BYTES = 1 << 16  # written past a failed write's data to ask the disk what is wrong
LOW_SPACE_BYTES = 1 << 20  # less than this free beside a failed write: the disk is full


class WriteError(OSError):
    """A write that failed with a ``RuntimeError`` (torch's zip writer raises ``RuntimeError:
    ... unexpected pos ...`` on a full disk), as an ``OSError`` so that every
    caller handles it as the write failure it is. ``errno``/``strerror`` say the cause when it
    can be told (``ENOSPC``: "No space left on device"); the original error is its ``__cause__``.
    """

    def __str__(self) -> str:
        return f"{self.strerror}: {self.filename}" if self.filename else str(self.strerror)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over
    ``path``: readers see the old file or the new one, never half of one.

    The file gets the mode of the file it replaces, or ``0o666 & ~umask`` when new (as
    ``open`` would give it). A failed write is an ``OSError`` (a ``WriteError`` when ``write``
    raised a ``RuntimeError``, as torch's zip writer does on a full disk); other exceptions
    (bugs, ``KeyboardInterrupt``) pass through unchanged, and the temporary file is removed.
    """
    path = Path(path)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        try:
            with os.fdopen(fd, "wb") as file:
                _chmod(file.fileno(), tmp, mode)
                write(file)
                file.flush()
                os.fsync(file.fileno())
        except RuntimeError as exc:  # torch's zip writer on a full disk; other types are bugs
            raise _write_error(exc, path, tmp) from exc
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_regular_text(path: str | os.PathLike, encoding: str = "utf-8") -> str:
    """The text of ``path`` if it is a regular file; a FIFO, device or directory raises
    ``IsADirectoryError``-like ``OSError`` (``EINVAL``) at once instead of blocking a read for
    ever. Opened without blocking, so even a FIFO with no writer cannot hang the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return file.read().decode(encoding)


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux's
    ``/proc/self/status``); else set and restored at once, as ``os.umask`` only allows."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The permissions a file written to ``path`` gets: those of the file it replaces, or
    what ``open`` would give a new file."""
    try:
        st = os.stat(path)
    except OSError:
        return 0o666 & ~current_umask()
    if stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode) & 0o777
    return 0o666 & ~current_umask()


def _chmod(fd: int, tmp: str, mode: int) -> None:
    """Best effort: a filesystem without Unix modes (FAT, some network shares) refuses the
    change, and the data matters more than its mode there."""
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:  # Windows before Python 3.13
            os.chmod(tmp, mode)
    except OSError:
        pass


def _write_error(exc: Exception, path: Path, tmp: str) -> WriteError:
    """``exc``, raised by a writer, as a ``WriteError`` naming its cause where it can be told:
    the errno of an ``OSError`` behind it, of a write to the same file now, or a full disk."""
    code = _errno_behind(exc) or _probe_errno(tmp) or _full_disk_errno(path.parent)
    if code:
        return WriteError(code, os.strerror(code), str(path))
    return WriteError(None, f"{type(exc).__name__}: {first_line(exc)}", str(path))


def _errno_behind(exc: BaseException) -> int | None:
    """The errno of an ``OSError`` that ``exc`` was raised from or while handling."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno
        cause = cause.__cause__ or cause.__context__
    return None


def _probe_errno(tmp: str) -> int | None:
    """Append a little to the temporary file (deleted afterwards anyway): if the disk refuses
    it too (full, over quota, read-only, failing), its errno is the cause."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND)
    except OSError:  # the temporary file is gone: nothing to ask
        return None
    try:
        chunk = bytes(PROBE_BYTES)
        while chunk:
            written = os.write(fd, chunk)
            if written <= 0:
                break
            chunk = chunk[written:]
        os.fsync(fd)
    except OSError as exc:
        return exc.errno
    finally:
        os.close(fd)
    return None


def _full_disk_errno(directory: Path) -> int | None:
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # no statvfs on Windows
        return None
    return errno.ENOSPC if st.f_bavail * st.f_frsize < LOW_SPACE_BYTES else None
