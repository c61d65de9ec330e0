"""The ``clayflow`` command (the only package that uses argparse).

``main`` is the command's entry point. It imports nothing heavy itself, so a Ctrl-C in the
first seconds (while torch loads) ends with one line, not a traceback; and it makes the
output streams safe before any work starts (see ``clayflow.cli.output``).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run ``clayflow`` with ``argv`` (default: the command line); returns the exit code."""
    try:
        from clayflow.cli.output import guard_output_streams

        guard_output_streams()
        from clayflow.cli.main import main as run
    except KeyboardInterrupt:
        print("clayflow: error: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    return run(argv)
