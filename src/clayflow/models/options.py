"""Checks of the size options that every model builder shares."""

from __future__ import annotations

from clayflow.errors import UsageError

MIN_SIZES = {"layers": 1, "hidden": 1, "depth": 0, "scales": 1, "blocks": 1}


def check_sizes(**values) -> None:
    """Each size option must be an integer >= its ``MIN_SIZES`` entry, else a UsageError.

    >>> check_sizes(hidden=0)
    Traceback (most recent call last):
    clayflow.errors.UsageError: --hidden must be an integer >= 1, got 0
    """
    for name, value in values.items():
        least = MIN_SIZES[name]
        if int(value) != value or value < least:
            raise UsageError(f"--{name} must be an integer >= {least}, got {value}")


def check_dropout(dropout: float) -> None:
    """A dropout probability must be in [0, 1), else a UsageError."""
    if not 0 <= dropout < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {dropout}")
