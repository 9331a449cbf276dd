"""User-facing errors: the CLI prints them as one line (no traceback) and exits non-zero."""


class DnfbotError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""

    exit_code = 2


class InputError(DnfbotError):
    """Bad input file or field. Message names the file (and line/field) at fault."""


class IndexMissingError(DnfbotError):
    """No index where one was expected."""
