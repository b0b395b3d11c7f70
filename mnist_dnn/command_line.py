"""The command line before absl parses it: -h/--help, and --preset=NAME for a shipped flagfile."""

import os
import pathlib
import sys
import textwrap

from absl import flags

from mnist_dnn.lib.errors import UsageError

HELP_ARGS = ("-h", "--help", "-?", "--helpshort")
PRESET = "--preset"
SHARED_MODULE = "mnist_dnn.cli"
GENERAL_HELP = (
    ("--preset=NAME", "A shipped flagfile by name ({presets}); the same as --flagfile=<its file>. "
                      "Flags after it on the command line override it."),
    ("--flagfile=FILE", "Read flags from FILE, one --name=value a line (# starts a comment)."),
    ("--verbosity=1", "Also show TensorFlow's and TFDS's own log lines (or set MNIST_DNN_TF_LOGS=1)."),
    ("-h, --help", "This help."),
    ("--helpfull", "Every flag, TensorFlow's and absl's included."),
)
WIDTH = 100
MULTI_FLAG_NOTE = "; repeat this option to specify a list of values"  # absl's, said as "(repeatable)"


def configs_dir() -> pathlib.Path:
    """The shipped flagfiles: inside the installed package, or at the top of a checkout."""
    package = pathlib.Path(__file__).resolve().parent
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


def expand_presets(argv: list[str]) -> list[str]:
    """argv with each --preset=NAME (or --preset NAME) replaced, in place, by --flagfile=<its file>."""
    expanded, args = [argv[0]], iter(argv[1:])
    for arg in args:
        if arg == "--":
            expanded += [arg, *args]
        elif arg == PRESET:
            expanded.append(preset_flagfile(next(args, "")))
        elif arg.startswith(PRESET + "="):
            expanded.append(preset_flagfile(arg[len(PRESET) + 1:]))
        else:
            expanded.append(arg)
    return expanded


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


def _module_key(module) -> str:
    """The name absl files a module's flags under (sys.argv[0] for the main module)."""
    return sys.argv[0] if module.__name__ == "__main__" else module.__name__


def _tool_name(module) -> str:
    spec = getattr(module, "__spec__", None)
    return spec.name if module.__name__ == "__main__" and spec else module.__name__


def flag_groups(module, flag_values=flags.FLAGS) -> list[tuple[str, list[flags.Flag]]]:
    """(title, flags) for the tool's own flags, then those of the package's other modules it uses."""
    by_module = flag_values.flags_by_module_dict()
    own = _module_key(module)
    others = sorted(m for m in by_module if m.startswith("mnist_dnn.") and m not in (own, SHARED_MODULE))
    groups = [(f"{_tool_name(module)} flags", by_module.get(own, []))]
    groups += [(f"{m} flags", by_module[m]) for m in others]
    groups.append(("shared flags", by_module.get(SHARED_MODULE, [])))
    return [(title, sorted(fs, key=lambda f: f.name)) for title, fs in groups if fs]


def _program(module) -> str:
    if module.__name__ == "__main__":
        return f"python -m {_tool_name(module)}"
    return os.path.basename(sys.argv[0])


def help_text(module, positional_args: bool = False, flag_values=flags.FLAGS) -> str:
    """The tool's docstring, its usage line, and its flags grouped, each with its default."""
    usage = f"usage: {_program(module)} [flags]" + (" FILE..." if positional_args else "")
    parts = [(module.__doc__ or "").strip(), usage]
    for title, group in flag_groups(module, flag_values):
        parts.append(f"{title}:\n" + "\n".join(_describe(f) for f in group))
    general = [f"  {name}\n" + _indented(text.format(presets=", ".join(preset_names())))
               for name, text in GENERAL_HELP]
    parts.append("presets, flagfiles and help:\n" + "\n".join(general))
    return "\n\n".join(p for p in parts if p) + "\n"
