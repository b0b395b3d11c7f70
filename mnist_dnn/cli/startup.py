"""The tools' start-up (run by `cli.run`; importing this module changes nothing): TensorFlow imported quietly, and a
persistent XLA cache for this CPU. Importing TensorFlow writes 6-7 lines to descriptor 2 (CUDA probing, CPU notices,
`failed call to cuInit`) that no variable silences: the import runs with descriptor 2 on a temporary file, shown if it
fails, and kept with `--verbosity=1`, `MNIST_DNN_TF_LOGS=1` or `TF_CPP_MIN_LOG_LEVEL` 0 or 1. XLA keys its cache by the
program, not the CPU nor its own version, and runs an entry compiled for another CPU (which can end in SIGILL): hence
one cache folder per instruction set and TensorFlow version."""

import atexit
import hashlib
import importlib.metadata
import os
import platform
import signal
import sys

from mnist_dnn.lib import onednn, processes, xla_cache

TF_LOGS_ENV = "MNIST_DNN_TF_LOGS"
XLA_CACHE_ENV = "MNIST_DNN_XLA_CACHE"
XLA_CACHE_MB_ENV = "MNIST_DNN_XLA_CACHE_MB"
XLA_CACHE_MB = 512  # the cap by default (MiB): several hundred of the MLPs' entries (0.2-1.8 MB each)
INTERRUPTED = "error: interrupted (Ctrl-C) before any work was saved; run the command again"


def is_tool_process(main_module: str | None, argv0: str) -> bool:
    """Whether the process runs a tool: `python -m mnist_dnn.NAME` (`main_module`), or a `mnist-dnn-*` script."""
    return (main_module or "").rpartition(".")[0] == "mnist_dnn" or os.path.basename(argv0).startswith("mnist-dnn-")


def interrupt_quietly() -> None:
    """In a tool's own process (`cli.app` calls it as it is imported): Ctrl-C while it starts (its imports, TensorFlow's)
    is one line and exit 130, not a traceback, written to a copy of the real stderr (fd 2 may be the quiet start-up's
    file). Nothing is on disk yet. `end_of_start_up` hands Ctrl-C back; in a program or a test it does nothing."""
    main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if not is_tool_process(main_spec and main_spec.name, sys.argv[0] if sys.argv else ""):
        return
    try:
        stderr = os.dup(2)
    except OSError:  # started with descriptor 2 closed
        stderr = None

    def interrupted(signum, frame):
        if stderr is not None:
            os.write(stderr, (INTERRUPTED + "\n").encode())
        os._exit(130)

    _start_up_handlers.append(interrupted)
    signal.signal(signal.SIGINT, interrupted)


_start_up_handlers = []


def end_of_start_up() -> None:
    """Ctrl-C raises KeyboardInterrupt again (the tools' main handles it), if `interrupt_quietly` took it."""
    if signal.getsignal(signal.SIGINT) in _start_up_handlers:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def define_onednn_flag() -> None:
    """--onednn, which `quiet_tensorflow` reads from the command line before absl parses it."""
    from absl import flags  # (here: importing this module imports nothing more)

    flags.DEFINE_enum("onednn", "auto", onednn.CHOICES, "TensorFlow's oneDNN CPU kernels: on, off, or auto (on for "
                      "x86-64 CPUs with AVX2, where they were measured faster; else TensorFlow's default). Set before "
                      "TensorFlow starts; an exported TF_ENABLE_ONEDNN_OPTS wins over auto.", module_name="mnist_dnn.cli")


def _flag_value(argv: list[str], names: tuple[str, ...]) -> str | None:
    """The last value of a flag (--name=value or --name value) on the command line, read before absl parses it."""
    found = None
    for i, arg in enumerate(argv):
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in names:
            found = value if has_value else (argv[i + 1] if i + 1 < len(argv) else "")
    return found


def wants_tf_logs(argv: list[str], environ) -> bool:
    """Whether the user asked for TensorFlow's own log lines."""
    if environ.get(TF_LOGS_ENV, "").strip() not in ("", "0"):
        return True
    if environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("0", "1"):
        return True
    try:
        return int(_flag_value(argv[1:], ("verbosity", "v"))) >= 1  # absl's --verbosity (-v)
    except (TypeError, ValueError):
        return False


def cache_key(cpuinfo: str = "/proc/cpuinfo", tensorflow: str | None = None) -> str | None:
    """A name for this processor's instruction set (from /proc/cpuinfo's flags, a superset of the LLVM features XLA
    compiles for) and the installed TensorFlow's version (`tensorflow` unless given; read without importing it), or
    None where either cannot be read."""
    flags = onednn.cpu_flags_line(cpuinfo)
    if flags is None:
        return None
    try:
        tensorflow = tensorflow or importlib.metadata.version("tensorflow")
    except importlib.metadata.PackageNotFoundError:
        return None
    return f"{platform.machine()}-{hashlib.sha256(flags.encode()).hexdigest()[:12]}-tf{tensorflow}"


def xla_cache_folder(environ, key: str | None) -> str | None:
    """<$MNIST_DNN_XLA_CACHE or ~/.cache/mnist_dnn/xla>/<key>; None with `off`, or for an unknown CPU."""
    chosen = environ.get(XLA_CACHE_ENV)
    if key is None or chosen is not None and chosen.strip().lower() in ("", "0", "off"):
        return None
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(chosen or os.path.join(cache_home, "mnist_dnn", "xla"), key)


def xla_cache_cap(environ) -> int:
    """The cache root's cap in bytes: $MNIST_DNN_XLA_CACHE_MB MiB, or XLA_CACHE_MB (warned if not a number)."""
    chosen = environ.get(XLA_CACHE_MB_ENV, "").strip()
    if chosen and not chosen.isdecimal():
        print(f"warning: {XLA_CACHE_MB_ENV}={chosen} is not a whole number of MB; the XLA cache keeps "
              f"{XLA_CACHE_MB} MB", file=sys.stderr)
    return (int(chosen) if chosen.isdecimal() else XLA_CACHE_MB) << 20


def use_xla_cache(environ=os.environ, key: str | None = None) -> None:
    """Adds XLA's persistent cache to TF_XLA_FLAGS, unless one is set; none (with a warning if the user chose
    it) in a folder XLA could not write (`xla_cache.prepare`). The cache's root is kept within its cap now and when
    the process ends (`xla_cache.evict`)."""
    folder = xla_cache_folder(environ, key or cache_key())
    flags = environ.get("TF_XLA_FLAGS", "")
    if not folder or xla_cache.FOLDER_FLAG in flags:
        return
    cache_flags = xla_cache.prepare(folder)
    if cache_flags is None:
        if environ.get(XLA_CACHE_ENV) is not None:
            print(f"warning: {XLA_CACHE_ENV}={environ[XLA_CACHE_ENV]} is not a folder that can be written; "
                  "compiling without the cache", file=sys.stderr)
        return
    environ["TF_XLA_FLAGS"] = f"{flags} {cache_flags}".strip()
    root, cap, used = os.path.dirname(folder), xla_cache_cap(environ), xla_cache.watch(folder)
    xla_cache.evict(root, cap)
    atexit.register(lambda: xla_cache.evict(root, cap, used()))


def quiet_tensorflow(argv: list[str], environ=os.environ) -> None:
    """The XLA cache and oneDNN's switch (--onednn), then TensorFlow imported (and its devices probed) quietly. Unless
    its logs are wanted, TensorFlow's later C++ lines stay off too (TF_CPP_MIN_LOG_LEVEL=3): XLA's notices, and the two
    ERROR lines every hit of the persistent cache logs. Real errors are Python exceptions."""
    use_xla_cache(environ)
    if "tensorflow" not in sys.modules:
        choice = _flag_value(argv[1:], ("onednn",))
        onednn.choose(choice if choice in onednn.CHOICES else "auto", environ)  # absl refuses a bad one
    if wants_tf_logs(argv, environ):
        import tensorflow  # noqa: F401
        return
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if "tensorflow" not in sys.modules:
        processes.import_tensorflow(quiet=True)
