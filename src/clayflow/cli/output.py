"""Output that cannot fail the work: a closed pipe or a terminal that cannot show a character.

``clayflow train ... | head -1`` closes stdout after one line, and an ASCII-only terminal
cannot encode a non-ASCII path. Neither may turn a finished training run into a failure or
skip its plots: after ``guard_output_streams()`` characters the stream cannot encode are
written as backslash escapes, and once a reader has gone, further output to that stream is
dropped instead of raising ``BrokenPipeError``.
"""

from __future__ import annotations

import io
import os
import sys


class _DroppingStream(io.TextIOBase):
    """A text stream that forwards to ``stream`` until it reports a broken pipe, then drops."""

    def __init__(self, stream):
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except (BrokenPipeError, ConnectionResetError):
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (BrokenPipeError, ConnectionResetError):
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

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self):
        return getattr(self.stream, "encoding", "utf-8")


def guard_output_streams() -> None:
    """Make ``sys.stdout`` and ``sys.stderr`` safe for the rest of the process (idempotent)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, _DroppingStream):
            continue
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, io.UnsupportedOperation):
                pass
        setattr(sys, name, _DroppingStream(stream))
