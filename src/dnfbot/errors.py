"""User-facing errors: the CLI prints them as one line (no traceback) and exits non-zero."""


class DnfbotError(Exception):
    """An error caused by the user's input or environment, with a message that says what to fix."""

    exit_code = 2


class InputError(DnfbotError):
    """Bad input file or field. Message names the file (and line/field) at fault."""


class IndexMissingError(DnfbotError):
    """No index where one was expected."""


class IndexDamagedError(IndexMissingError):
    """The live index is incomplete, truncated or unreadable. `sources` are the corpus paths it was built from,
    when its manifest still says (then it can be rebuilt without asking)."""

    def __init__(
        self, message: str, sources: list[str] | None = None, reason: str = "", build_name: str | None = None
    ):
        super().__init__(message)
        self.sources = sources
        self.reason = reason or message
        self.build_name = build_name  # the build found unreadable, when one was


class OutputError(DnfbotError):
    """A file or folder could not be written (disk full, permission, a path that is a folder or under a file).
    The message names the path; whatever was there before is left as it was."""
