"""The one exception type the library raises for problems a user can fix."""


class ClayflowError(Exception):
    """A problem with the user's input, files or options.

    The message is one line that names the problem and says what to do; the CLI prints it
    as ``clayflow: error: <message>`` and exits non-zero, without a traceback.
    """


def parse_choice(choices, value, option: str):
    """``choices(value)`` for a str-valued Enum, or a ClayflowError listing the valid values."""
    try:
        return choices(value)
    except ValueError:
        valid = ", ".join(c.value for c in choices)
        raise ClayflowError(f"unknown {option} {value!r}; choose one of: {valid}") from None
