"""The exception types the library raises for problems a user can fix."""

from __future__ import annotations


class ClayflowError(Exception):
    """A problem with the user's input, files or options.

    The message is one line that names the problem and says what to do; the CLI prints it
    as ``clayflow: error: <message>`` and exits with ``exit_code``, without a traceback.
    """

    exit_code = 1  # a runtime problem
    printed_elsewhere = False  # another process of a distributed run printed the line


class UsageError(ClayflowError):
    """A problem with the options (flags, config values, names of models or datasets): the
    CLI exits 2, as for a command-line usage error, rather than 1 for a runtime problem."""

    exit_code = 2


class RankZeroError(ClayflowError):
    """Rank 0's error, raised on the other processes of a distributed run: the same exit
    code, and the line is printed once, by rank 0."""

    printed_elsewhere = True

    def __init__(self, line: str, exit_code: int):
        super().__init__(line)
        self.exit_code = exit_code


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_choice(choices, value, option: str):
    """``choices(value)`` for a str-valued Enum, or a ClayflowError listing the valid values."""
    try:
        return choices(value)
    except ValueError:
        valid = ", ".join(c.value for c in choices)
        raise UsageError(f"unknown {option} {value!r}; choose one of: {valid}") from None
