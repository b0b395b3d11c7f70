"""Errors that the command-line tools report as one line, without a traceback."""

import re


def first_line(error: Exception) -> str:
    """The first line of an exception's message (TensorFlow's run to pages), or its type's name; without
    the op's decorations that TensorFlow adds (`{{function_node ...}} `, ` [Op:SaveV2]`)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\{\{function_node [^}]*\}\} | \[Op:\w+\]( name:.*)?$", "", line)


class Error(Exception):
    """A failure the user can fix; the message says what was wrong and how to fix it.

    `field` names the setting at fault (a config field, or a tool's option of that name):
    `str(error)` is "<field> <problem>", and the command line says "--<field> <problem>".
    Library text names any other setting as `name`, in backticks, never as a flag: the command
    line shows it as --name (`cli.as_flags`).
    """

    exit_code = 1

    def __init__(self, problem: str, field: str | None = None):
        super().__init__(f"{field} {problem}" if field else problem)
        self.field, self.problem = field, problem


class UsageError(Error):
    """The user asked for something invalid (a flag, a path)."""

    exit_code = 2


class DataError(Error):
    """Input data is missing, unreachable or malformed."""


class CheckpointError(Error):
    """A checkpoint folder is missing, incomplete, locked, unwritable or does not fit the model."""


class TrainingError(Error):
    """Training cannot go on (for example, the loss stopped being finite)."""


class BusyError(CheckpointError):
    """Another process is training in the run folder (it holds the folder's lock): busy, not broken."""
