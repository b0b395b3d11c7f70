"""Errors that the command-line tools report as one line, without a traceback."""


class UsageError(Exception):
    """The user asked for something invalid (a flag, a path); exit code 2."""

    exit_code = 2


class DataError(Exception):
    """Input data is missing, unreachable or malformed; exit code 1."""

    exit_code = 1


class CheckpointError(Exception):
    """A checkpoint folder is missing, incomplete or does not fit the model; exit code 1."""

    exit_code = 1
