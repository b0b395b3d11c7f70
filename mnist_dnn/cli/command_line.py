"""The command line before absl parses it: -h/--help, and --preset=NAME for a shipped flagfile."""

import os
import pathlib
import sys
import textwrap

from absl import flags

from mnist_dnn.lib import files
from mnist_dnn.lib.errors import UsageError

HELP_ARGS = ("-h", "--help", "-?", "--helpshort")
PRESET = "--preset"
PRESET_TOOLS = ("train", "sweep", "search")  # the tools that take training flags
SHARED_MODULE = "mnist_dnn.cli.app"
GENERAL_HELP = (
    (PRESET + "=NAME", "A shipped flagfile by name ({presets}). Its flags are defaults: every flag "
                       "typed, before or after it (in a flagfile too), overrides them."),
    ("--flagfile=FILE", "Read flags from FILE, one --name=value a line (# starts a comment)."),
    ("--verbosity=1", "Also show TensorFlow's and TFDS's own log lines (or set MNIST_DNN_TF_LOGS=1)."),
    ("-h, --help", "This help."),
    ("--helpfull", "Every flag, TensorFlow's and absl's included."),
)
WIDTH = 100
MAX_FLAGFILE_BYTES = 1 << 20  # flags, one a line: a larger file is no flagfile
MULTI_FLAG_NOTE = "; repeat this option to specify a list of values"  # absl's, said as "(repeatable)"


def configs_dir() -> pathlib.Path:
    """The shipped flagfiles: inside the installed package, or at the top of a checkout."""
    package = pathlib.Path(__file__).resolve().parent.parent  # mnist_dnn/, above cli/
    for folder in (package / "configs", package.parent / "configs"):
        if folder.is_dir():
            return folder
    return package / "configs"


def preset_names() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.cfg"))


def preset_flagfile(name: str) -> str:
    path = configs_dir() / f"{name}.cfg"
    if not name or not path.is_file():
        raise UsageError(f"--preset={name} is not a shipped config; choose one of: {', '.join(preset_names())} "
                         f"(or --flagfile=PATH for a file of your own)")
    return f"--flagfile={path}"


def expand_presets(argv: list[str], flag_values=flags.FLAGS, refused_by: str = "") -> list[str]:
    """argv with flagfiles read in and the flags of each --preset=NAME first: a preset only sets defaults. Wherever
    --preset=NAME (or --preset NAME) stands, on the command line or in a flagfile, its flags go before every flag typed,
    so whatever the user typed wins (a repeatable flag such as --grid adds to the preset's). A tool that takes no
    training flags names itself in `refused_by`: a preset is then a UsageError. Raises flags.Error for a flagfile that
    cannot be read."""
    args = read_flagfiles(argv[1:], flag_values)
    end = args.index("--") if "--" in args else len(args)
    names, typed, options = [], [], iter(args[:end])
    for arg in options:
        if arg == PRESET:
            names.append(next(options, ""))
        elif arg.startswith(PRESET + "="):
            names.append(arg[len(PRESET) + 1:])
        else:
            typed.append(arg)
    if names and refused_by:
        raise UsageError(f"--preset={names[0]} is a set of training flags, for {', '.join(PRESET_TOOLS[:-1])} and "
                         f"{PRESET_TOOLS[-1]} only; {refused_by} takes none: drop it (its flags: --help)")
    presets = [a for name in names for a in read_flagfiles([preset_flagfile(name)], flag_values)]
    return [argv[0], *presets, *typed, *args[end:]]


def read_flagfiles(args: list[str], flag_values=flags.FLAGS) -> list[str]:
    """`args` with absl's reading of the flagfiles they name, each checked first (`check_flagfiles`)."""
    check_flagfiles(args)
    return flag_values.read_flags_from_files(args)


def check_flagfiles(args: list[str], reading: tuple[str, ...] = ()) -> None:
    """Refuses (UsageError) a flagfile that `args` name, or that one names in turn, unless it is a regular
    text file of at most MAX_FLAGFILE_BYTES: absl reads whatever it is given whole (a FIFO blocks it,
    /dev/zero never ends, a binary file is a traceback)."""
    for arg, following in zip(args, [*args[1:], ""]):
        if arg == "--":
            return
        path = following if arg in ("--flagfile", "-flagfile") else arg.partition("=")[2].strip() \
            if arg.startswith(("--flagfile=", "-flagfile=")) else ""
        path = os.path.expanduser(path)
        if path and path not in reading:
            check_flagfiles([line.strip() for line in flagfile_text(path).splitlines()], (*reading, path))


def flagfile_text(path: str) -> str:
    """The text of the flagfile (or preset) `path`: a regular UTF-8 file of at most MAX_FLAGFILE_BYTES; UsageError otherwise."""
    try:
        text = files.read_input(path, MAX_FLAGFILE_BYTES, "split it: a flagfile may name others (--flagfile=FILE)")
        if b"\0" in text:
            raise UnicodeError("a NUL byte")
        return text.decode()
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}{'' if ';' in e.strerror else '; check the path'}", "flagfile") from None
    except UnicodeError:
        raise UsageError(f"{path}: is not a text file (UTF-8); pass a file of flags, one --name=value a line",
                         "flagfile") from None


def wants_help(argv: list[str]) -> bool:
    options = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    return any(arg in HELP_ARGS for arg in options)


def _default(flag: flags.Flag) -> str:
    value = flag.default
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _describe(flag: flags.Flag) -> str:
    name = f"--[no]{flag.name}" if isinstance(flag, flags.BooleanFlag) else f"--{flag.name}"
    if isinstance(flag, flags.MultiFlag):
        name += " (repeatable)"
    return f"  {name} (default: {_default(flag)})\n{_indented(flag.help or '')}"


def _indented(text: str) -> str:
    text = " ".join(text.split()).replace(MULTI_FLAG_NOTE, "")
    return textwrap.fill(text, WIDTH, initial_indent="      ", subsequent_indent="      ")


def tool_name(module) -> str:
    spec = getattr(module, "__spec__", None)
    return spec.name if module.__name__ == "__main__" and spec else module.__name__


def flag_groups(module, flag_values=flags.FLAGS) -> list[tuple[str, list[flags.Flag]]]:
    """(title, flags) for the tool's own flags, then those of the package's other modules it uses."""
    by_module = flag_values.flags_by_module_dict()
    own = sys.argv[0] if module.__name__ == "__main__" else module.__name__  # as absl files the module's flags
    others = sorted(m for m in by_module if m.startswith("mnist_dnn.") and m not in (own, SHARED_MODULE))
    groups = [(f"{tool_name(module)} flags", by_module.get(own, []))]
    groups += [(f"{m} flags", by_module[m]) for m in others]
    groups.append(("shared flags", by_module.get(SHARED_MODULE, [])))
    return [(title, sorted(fs, key=lambda f: f.name)) for title, fs in groups if fs]


def help_text(module, positional_args: bool = False, flag_values=flags.FLAGS, presets: bool = True) -> str:
    """The tool's docstring, its usage line, and its flags grouped, each with its default (and --preset if `presets`)."""
    program = f"python -m {tool_name(module)}" if module.__name__ == "__main__" else os.path.basename(sys.argv[0])
    usage = f"usage: {program} [flags]" + (" FILE..." if positional_args else "")
    parts = [(module.__doc__ or "").strip(), usage]
    for title, group in flag_groups(module, flag_values):
        parts.append(f"{title}:\n" + "\n".join(_describe(f) for f in group))
    general = [f"  {name}\n" + _indented(text.format(presets=", ".join(preset_names())))
               for name, text in GENERAL_HELP if presets or not name.startswith(PRESET)]
    parts.append(f"{'presets, ' if presets else ''}flagfiles and help:\n" + "\n".join(general))
    return "\n\n".join(p for p in parts if p) + "\n"
