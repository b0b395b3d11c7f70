"""What the entry points share: common flags, their output files, and one-line errors instead of tracebacks."""

import atexit
import contextlib
import dataclasses
import os
import pathlib
import re
import sys
from typing import NoReturn

from mnist_dnn.cli import startup

startup.interrupt_quietly()  # first: in a tool's process, Ctrl-C during the imports that follow is one line

from absl import app, flags, logging

from mnist_dnn.cli import command_line
from mnist_dnn.lib import files
from mnist_dnn.lib.config import build_config, env_idx_dir, flag_fields, value_type
from mnist_dnn.lib.errors import DataError, Error, UsageError

startup.define_onednn_flag()
_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_boolean, tuple: flags.DEFINE_list}


def define_config_flags(config_class, only: tuple[str, ...] | None = None, flag_values=flags.FLAGS,
                        tool: str | None = None) -> None:
    """Declares a flag for each field of `config_class` (or those named in `only`), from its default and help. The help
    shows them as shared flags, but a `tool`'s own fields (given its __name__) in its own group."""
    own = set(dataclasses.fields(config_class)) if tool else set()
    module = {"module_name": sys.argv[0] if tool == "__main__" else tool}  # as absl files a main module's flags
    for field, name in flag_fields(config_class):
        if only is None or name in only:
            default = field.default
            default = list(default) if isinstance(default, tuple) and default else (None if default == () else default)
            choices = {"enum_values": field.metadata["choices"]} if field.metadata.get("choices") else {}
            define = flags.DEFINE_enum if choices else _DEFINE[value_type(field.type)]
            define(name, default, help=field.metadata["help"], flag_values=flag_values, **choices,
                   **(module if field in own else {}))


def define_train_flags(train_config_class) -> None:
    """The training flags: TrainConfig's (`train_config_class`), and train's --result_file (sweep and search take them
    too)."""
    # absl.logging's --log_dir (for log files we never write) gives way to ours: the run's TensorBoard folder.
    if "log_dir" in flags.FLAGS:
        delattr(flags.FLAGS, "log_dir")
    define_config_flags(train_config_class)
    flags.DEFINE_string("result_file", None, "At the end, write the run's figures (steps, examples/s, best) as JSON "
                        "here; on an error, the error.", module_name="mnist_dnn.train")
    define_overwrite_flag("result_file")


def preset_settings(name: str, config_class) -> dict:
    """The flags of the shipped configs/NAME.cfg, read as the tools read them into `config_class`'s: by flag name (one
    that is not `config_class`'s as None, for the caller to refuse)."""
    if name not in command_line.preset_names():
        raise UsageError(f"no preset {name!r}; choose one of: {', '.join(command_line.preset_names())}")
    values = flags.FlagValues()
    define_config_flags(config_class, flag_values=values)
    others = values(["", *command_line.read_flagfiles([command_line.preset_flagfile(name)], values)], known_only=True)
    given = {flag: values[flag].value for flag in values if values[flag].present}
    return {**dict.fromkeys(arg.lstrip("-").partition("=")[0] for arg in others[1:]), **given}


def tool_settings(config_class, values=flags.FLAGS) -> dict:
    """A tool's settings by flag name: its flags as parsed, and --idx_dir (if it has one) else the environment's."""
    given = {name: values[name].value for _, name in flag_fields(config_class)}
    return {**given, "idx_dir": env_idx_dir(given["idx_dir"])} if "idx_dir" in given else given


def tool_config(config_class, values=flags.FLAGS):
    """The config a tool's main reads its flags into, and passes down; unflagged fields keep their defaults."""
    return config_from(config_class, tool_settings(config_class, values))


def config_from(config_class, given: dict):
    """A `config_class` from settings named as its flags (a tool's, or the Python API's keywords): another name is a
    UsageError; without `idx_dir`, the environment's (`env_idx_dir`)."""
    unknown = sorted(set(given) - {name for _, name in flag_fields(config_class)})
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not a setting of {config_class.__name__} (the settings are named as "
                         "the tool's flags: python -m mnist_dnn.train --help)")
    return build_config(config_class, {**given, "idx_dir": env_idx_dir(given.get("idx_dir"))})


def idx_dir(values):
    """The --idx_dir of the parsed `values`, or else the environment's (`env_idx_dir`)."""
    return env_idx_dir(values.idx_dir)


def as_flags(text: str, flag_values=flags.FLAGS) -> str:
    """The library's text as the command line says it: a setting it names as `name` is the flag --name."""
    return re.sub(r"`([a-z][a-z_]*)`", lambda m: f"--{m[1]}" if m[1] in flag_values else m[0], text)


def message(error: Error, flag_values=flags.FLAGS) -> str:
    """The error's one line; the settings it names are named as their flags."""
    if error.field:
        return f"--{error.field} {as_flags(error.problem, flag_values)}"
    return as_flags(str(error), flag_values)


def say(line: str) -> None:
    """The library's lines for the user, as a tool shows them: warnings on stderr, the rest on stdout."""
    print(as_flags(line), file=sys.stderr if line.startswith("warning: ") else sys.stdout, flush=True)


def define_overwrite_flag(output_flag: str) -> None:
    flags.DEFINE_boolean("overwrite", False, f"Replace an existing --{output_flag} file that this tool did not write "
                         "(by default refused; an earlier output of the tool is replaced).")


# Where a tool may write its output file (train --result_file, evaluate --metrics_file, predict --rest_request). An
# output file is the tool's own. It must not go inside a run folder or an export (their files are the other tools'
# bookkeeping), nor be a file the same command reads or writes otherwise. An existing file is replaced only if it is
# an output of the same kind (a JSON object with that output's keys, as the tool writes it), or with --overwrite.
# What marks a run folder (lib/core/run_dir.py's layout) and an export (lib/core/export_dir.py's), read without TensorFlow:
RUN_CONFIG = "model_config.json"
CHECKPOINT_INDEX = re.compile(r"model\.ckpt-\d+\.index$")
SAVED_MODEL = "saved_model.pb"
EXPORTED_FILES = (".tflite", ".keras", ".onnx")  # a LiteRT file, a Keras model, an ONNX model
MAX_OWN_FILE_BYTES = 10 * 2**20  # a larger file is no output of ours: not read to find out


def check_output_file(flag: str, path: str, kinds: tuple[tuple[str, ...], ...], overwrite: bool = False,
                      inputs: tuple[str, ...] = (), written: tuple[str, ...] = ()) -> None:
    """Refuses (UsageError naming `flag`), before any work is done, an output path in a folder that does not exist, or
    that would replace or mix with files not the tool's. `kinds`: the top-level keys of each form of this output's JSON
    (an existing file with all the keys of one form is the tool's own); `overwrite`: the --overwrite flag. `inputs`:
    files the command reads; `written`: folders it writes into besides the output file."""
    files.check_link(flag, path, "pass another file")  # (not "its folder does not exist")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"{path}: its folder does not exist or is not writable; pass a file in an existing folder",
                         field=flag)
    files.refuse(flag, files.special_file_problem(path), "pass the path of a regular file")
    target = os.path.realpath(path)
    for other in inputs:
        if os.path.exists(other) and os.path.realpath(other) == target:
            raise UsageError(f"{path} is also an input of this command; pass another file", field=flag)
    for folder in written:
        if os.path.commonpath([target, os.path.realpath(folder)]) == os.path.realpath(folder):
            raise UsageError(f"{path} is inside {folder}, which this command writes; pass a file elsewhere", field=flag)
    enclosing = _enclosing_folder(target)
    if enclosing:
        folder, kind = enclosing
        raise UsageError(f"{path} is inside {kind}, {folder}, whose files are the tools' own; pass a file "
                         "elsewhere", field=flag)
    if os.path.isfile(target) and not overwrite and not _is_output(target, kinds):
        raise UsageError(f"{path} exists and is not a file this tool wrote; pass another file, or --overwrite "
                         "to replace it", field=flag)


def _enclosing_folder(path: str) -> tuple[str, str] | None:
    """(folder, "a run folder" or "an export") of the nearest such folder that holds `path`, if any."""
    for folder in map(str, pathlib.Path(path).parents):
        kind = _folder_kind(folder)
        if kind:
            return folder, kind
    return None


def _folder_kind(folder: str) -> str | None:
    names = _names(folder)
    if RUN_CONFIG in names or any(CHECKPOINT_INDEX.match(name) for name in names):
        return "a run folder"
    if _is_version(folder, names) or any(name.isdigit() and _is_version(os.path.join(folder, name))
                                         for name in names):
        return "an export"
    return None


def _is_version(folder: str, names: list[str] | None = None) -> bool:
    """A SavedModel folder, or a numbered folder holding a LiteRT file, a Keras model or an ONNX model."""
    names = _names(folder) if names is None else names
    return SAVED_MODEL in names or (os.path.basename(folder).isdigit()
                                     and any(name.endswith(EXPORTED_FILES) for name in names))


def _names(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:  # not a folder, or not readable: nothing of ours to protect there
        return []


def _is_output(path: str, kinds: tuple[tuple[str, ...], ...]) -> bool:
    """Whether the file holds a JSON object with the keys of one of `kinds`: an earlier output of the tool."""
    try:
        content = files.read_json(path, MAX_OWN_FILE_BYTES)
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and any(all(key in content for key in keys) for keys in kinds)


def write_output(path: str, content: str | dict) -> None:
    """Writes a tool's output file (refused or not by `check_output_file` before the work): text, or else JSON."""
    (files.write_text if isinstance(content, str) else files.write_json)(path, content)


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _report(UsageError(str(e)))


def _report(error: Error) -> NoReturn:
    print(f"error: {message(error)}", file=sys.stderr)
    sys.exit(error.exit_code)


def _command_line(main, positional_args: bool, presets: bool) -> list[str]:
    """sys.argv with flagfiles read and presets expanded; -h/--help prints the tool's help and exits 0."""
    tool = sys.modules[main.__module__]
    if command_line.wants_help(sys.argv):
        print(command_line.help_text(tool, positional_args, presets=presets), end="")
        sys.exit(0)
    try:
        return command_line.expand_presets(sys.argv, refused_by="" if presets else command_line.tool_name(tool))
    except flags.Error as e:
        _report(UsageError(str(e)))
    except Error as e:
        _report(e)


def run(main, positional_args: bool = False, presets: bool = False) -> None:
    """`absl.app.run` that reports user and data errors as one line and a non-zero exit. Arguments other than flags are
    refused unless `positional_args` (then `main` gets them in `argv[1:]`). `-h`/`--help` print the tool's own help (its
    module docstring and flags). With `presets` (the tools that take training flags), `--preset=NAME` gives the shipped
    configs/NAME.cfg's flags as defaults (`command_line.expand_presets`); without, it is refused. TensorFlow is imported
    first, quietly (`startup.quiet_tensorflow`); the tools import the library in `main`."""

    def report_errors(argv):
        try:
            startup.end_of_start_up()
            import tensorflow_datasets as tfds  # (imported here: after the quiet start-up)

            tfds.disable_progress_bar()  # the tools print their own progress
            if not flags.FLAGS["verbosity"].present:
                logging.set_verbosity(logging.WARNING)  # TFDS's INFO lines drown the progress
            if len(argv) > 1 and not positional_args:
                raise UsageError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
            return main(argv)
        except Error as e:
            _report(e)
        except KeyboardInterrupt:  # Ctrl-C before training started (training itself saves and stops)
            print(startup.INTERRUPTED, file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # the reader of the output left (`tool | head -1`)
            _output_dropped()
        except Exception as e:  # a write onto a full disk, wherever it happens (a summary writer, an output file)
            problem = files.no_space_problem(e)
            if problem is None:
                raise
            _report(DataError(problem))

    try:
        argv = _command_line(main, positional_args, presets)
    except BrokenPipeError:  # `tool --help | head -1`
        _output_dropped()
    startup.quiet_tensorflow(argv)
    try:
        app.run(report_errors, argv=argv, flags_parser=_parse_flags)
    except SystemExit as e:
        if _in_process_calls:
            raise
        _end_process(e.code)


_in_process_calls = []


@contextlib.contextmanager
def in_process():
    """Tools run in this block end with SystemExit, as `absl.app.run` does, and leave the process alive."""
    _in_process_calls.append(True)
    try:
        yield
    finally:
        _in_process_calls.pop()


# As a Unix tool killed by SIGPIPE: the shell's status 128 + 13.
EXIT_BROKEN_PIPE = 141


def _output_dropped() -> NoReturn:
    """Ends quietly, as Unix tools do, when the reader of stdout has gone: no traceback, no error line."""
    if not _in_process_calls:  # what is still buffered goes nowhere, so that the exit's flush cannot fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(EXIT_BROKEN_PIPE)


def _end_process(code) -> NoReturn:
    """Ends the process now, without Python's teardown of TensorFlow's modules (over a second here). That teardown does
    nothing a finished command needs: its files are closed, its checkpoints and summaries written. The exit handlers
    still run (AutoGraph deletes its temporary source files in one), and output is flushed."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # noqa: SLF001 (the handlers `sys.exit` would run; no public name)
    logging.flush()
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # the reader left after the tool's last line was buffered
        code = EXIT_BROKEN_PIPE
    sys.stderr.flush()
    os._exit(code or 0)
