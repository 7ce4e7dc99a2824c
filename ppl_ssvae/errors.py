"""Errors a user can fix; the CLI prints them as one line without a traceback."""


class UserError(ValueError):
    """Bad input or configuration: the message names the problem and the fix."""


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are missing or unreadable."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is left untouched."""
