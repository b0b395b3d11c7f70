"""What the entry points share: common flags and one-line errors instead of tracebacks."""

import os
import sys
from typing import NoReturn

from absl import app, flags, logging

from mnist_dnn import command_line
from mnist_dnn.lib import checkpoints, data
from mnist_dnn.lib.errors import Error, UsageError


def define_data_flags() -> None:
    flags.DEFINE_string("data_dir", None, "TFDS data folder (default: TFDS's own, ~/tensorflow_datasets).")
    flags.DEFINE_string("idx_dir", None, f"Offline: folder with the four MNIST IDX files (.gz or plain), "
                        f"imported once into --data_dir. Default: ${data.IDX_DIR_ENV}.")


def define_ckpt_dir_flag() -> None:
    flags.DEFINE_string("ckpt_dir", "checkpoints", "Folder of the run's checkpoints and model_config.json.")


def define_restore_flags() -> None:
    """Flags of the tools that read a trained checkpoint."""
    define_ckpt_dir_flag()
    flags.DEFINE_string("checkpoint", None, "A given checkpoint (e.g. checkpoints/model.ckpt-1000) instead of the latest.")
    flags.DEFINE_enum("which", "latest", checkpoints.WHICH,
                      "Without --checkpoint: the latest checkpoint of --ckpt_dir, or the best by validation "
                      "accuracy (ckpt_dir/best/).")


def idx_dir(values) -> str | None:
    """--idx_dir, or else the MNIST_DNN_IDX_DIR environment variable."""
    return values.idx_dir or os.environ.get(data.IDX_DIR_ENV) or None


def parse_int_list(name: str, values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise UsageError(f"--{name} must be comma-separated integers such as 256,128; got {','.join(values)}") from None


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _report(error: Error) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)


def _command_line(main, positional_args: bool) -> list[str]:
    """sys.argv with presets expanded; -h/--help prints the tool's help and exits 0."""
    tool = sys.modules[main.__module__]
    if command_line.wants_help(sys.argv):
        print(command_line.help_text(tool, positional_args), end="")
        sys.exit(0)
    try:
        return command_line.expand_presets(sys.argv)
    except Error as e:
        _report(e)


def run(main, positional_args: bool = False) -> None:
    """`absl.app.run` that reports user and data errors as one line and a non-zero exit.

    Arguments other than flags are refused unless `positional_args` (then `main` gets them
    in `argv[1:]`). `-h`/`--help` print the tool's own help (its module docstring and flags);
    `--preset=NAME` stands for `--flagfile=<the shipped configs/NAME.cfg>`.
    """

    def guarded_main(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # TFDS's INFO lines drown the progress
        if len(argv) > 1 and not positional_args:
            raise UsageError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
        return main(argv)

    def report_errors(argv):
        try:
            return guarded_main(argv)
        except Error as e:
            _report(e)

    app.run(report_errors, argv=_command_line(main, positional_args), flags_parser=_parse_flags)
