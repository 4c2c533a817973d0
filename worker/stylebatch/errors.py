"""The one exception type a user ever sees: a one-line message and a non-zero exit."""


class StylebatchError(Exception):
    """Bad input or a failed step, explained in one line. The CLI prints it without a traceback."""

    exit_code = 2
