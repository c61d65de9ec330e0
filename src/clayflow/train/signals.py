"""Signals that stop a training run politely: Ctrl-C, ``kill``, ``timeout``, Slurm, ``docker stop``.

SIGINT (Ctrl-C), SIGTERM (``kill``, ``timeout``, Slurm preemption, ``docker stop``, systemd)
and SIGHUP (a closed terminal) set a flag that training checks between steps (and before the
first), so it saves a consistent checkpoint, prints how to resume, and exits with 128 + the
signal's number (130, 143, 129), as a process killed by that signal would report in a shell.
A second signal is not caught: it stops the process at once, as if clayflow had not been there.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """The first stop signal received while ``catching()``; ``None`` until one arrives."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    @contextmanager
    def catching(self):
        """Turn the stop signals into this flag for the duration of the block (main thread
        only: elsewhere Python cannot install handlers, and the signals keep their defaults)."""

        def handler(signum, frame):
            if self.signum is None:
                self.signum = signum
            for other, old in previous.items():  # a second signal acts at once, as without us
                signal.signal(other, old)

        previous = {}
        try:
            for signum in STOP_SIGNALS:
                previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread
            pass
        try:
            yield self
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
