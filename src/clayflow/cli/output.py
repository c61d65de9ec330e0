"""Output that cannot fail the work: a closed pipe or a terminal that cannot show a character.

``clayflow train ... | head -1`` closes stdout after one line, ``> /dev/full`` or a closed
terminal make every write fail, ``2>&-`` leaves no stderr at all, and an ASCII-only terminal
cannot encode a non-ASCII path. None of these may turn a finished training run into a failure
or skip its plots: after ``guard_output_streams()`` characters the stream cannot encode are
written as backslash escapes, a missing stream is a null one, and once writing to a stream
has failed (a gone reader, a full or vanished device), further output to it is dropped.
"""

from __future__ import annotations

import io
import os
import sys


class _DroppingStream(io.TextIOBase):
    """A text stream that forwards to ``stream`` until a write fails, then drops what follows."""

    def __init__(self, stream):
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except OSError:
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except OSError:
                self._break()

    def _break(self) -> None:
        """Point the file descriptor at /dev/null, so the interpreter's final flush of the
        real stream cannot fail either."""
        self.broken = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, io.UnsupportedOperation):
            pass

    def isatty(self) -> bool:
        return not self.broken and self.stream.isatty()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


def guard_output_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` safe for the rest of the process (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, _DroppingStream):
            continue
        if stream is None:  # started with the descriptor closed (2>&-)
            stream = _null_stream(1 if name == "stdout" else 2)
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, io.UnsupportedOperation):
                pass
        setattr(sys, name, _DroppingStream(stream))


def _null_stream(fd: int):
    """A text stream on /dev/null placed at descriptor ``fd`` when ``fd`` is closed, so that no
    file opened later (a checkpoint) can take that number and receive what C code prints there."""
    try:
        os.fstat(fd)
    except OSError:  # closed: put /dev/null there
        null = os.open(os.devnull, os.O_WRONLY)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        return os.fdopen(fd, "w")
    return open(os.devnull, "w")
