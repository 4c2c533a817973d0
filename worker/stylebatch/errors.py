"""The error types a user (or a Python caller) ever sees: a one-line message and an exit code that
is a contract (stylebatch.contract): 2 means retrying cannot help, 75 means it can."""

from __future__ import annotations

from stylebatch.contract import EXIT_BAD_INPUT, EXIT_HUNG_UP, EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_TRANSIENT


class StylebatchError(Exception):
    """Bad input or a failed step, explained in one line. The CLI prints it without a traceback.

    Raised as is, it means bad input (exit code 2), and it is one: `StylebatchError("...")` makes a
    BadInput, so a caller's `except BadInput` catches every bad-input error, wherever it was raised.

    Its message never holds a SAS signature (logs.hide_signatures: `sig=REDACTED`), even where a
    blob URL with its SAS was given where no place goes (an extra argument, `--device https://...`):
    a caller may log or show it as it is."""

    exit_code = EXIT_BAD_INPUT

    def __new__(cls, *args, **kwargs):
        return super().__new__(BadInput if cls is StylebatchError else cls, *args, **kwargs)

    def __init__(self, *args) -> None:
        from stylebatch.logs import hide_signatures

        super().__init__(*(hide_signatures(a) if isinstance(a, str) else a for a in args))


class BadInput(StylebatchError):
    """The input, the settings or a place given cannot work: retrying the same request cannot help."""

    exit_code = EXIT_BAD_INPUT


class TransientError(StylebatchError):
    """Storage unreachable, a 5xx after the SDK's retries, a timeout, a token failure: retry later."""

    exit_code = EXIT_TRANSIENT


class Interrupted(StylebatchError):
    """Stopped by a signal (SIGINT: 130, SIGTERM: 143, SIGHUP: 129); the work dir can be resumed."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, message: str, exit_code: int = EXIT_INTERRUPTED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


__all__ = ["StylebatchError", "BadInput", "TransientError", "Interrupted",
           "EXIT_BAD_INPUT", "EXIT_TRANSIENT", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_HUNG_UP"]
