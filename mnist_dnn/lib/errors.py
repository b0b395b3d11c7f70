"""Errors that the command-line tools report as one line, without a traceback."""


def first_line(error: Exception) -> str:
    """The first line of an exception's message (TensorFlow's run to pages), or its type's name."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class Error(Exception):
    """A failure the user can fix; the message says what was wrong and how to fix it."""

    exit_code = 1


class UsageError(Error):
    """The user asked for something invalid (a flag, a path)."""

    exit_code = 2


class DataError(Error):
    """Input data is missing, unreachable or malformed."""


class CheckpointError(Error):
    """A checkpoint folder is missing, incomplete, locked, unwritable or does not fit the model."""


class TrainingError(Error):
    """Training cannot go on (for example, the loss stopped being finite)."""
