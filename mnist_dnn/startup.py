"""TensorFlow imported without its C++ start-up chatter on the terminal.

Importing TensorFlow 2.21 writes 6-7 lines to file descriptor 2 (CUDA probing, CPU
instruction notices, a `failed call to cuInit` on machines without a GPU) that no
environment variable silences, so the first import (and the device probe that prints
the cuInit line) runs with descriptor 2 pointed at a temporary file. The lines come
back with `--verbosity=1` (or higher) on the command line or `MNIST_DNN_TF_LOGS=1`; if
the import fails, everything it printed is shown.

Before the import it also points XLA's persistent compilation cache at a folder of this
machine (`use_xla_cache`): the training loop compiles in seconds, and a later run of the
same model loads the compiled program instead.
"""

import contextlib
import hashlib
import os
import sys
import tempfile

from mnist_dnn.lib import files

TF_LOGS_ENV = "MNIST_DNN_TF_LOGS"
XLA_CACHE_ENV = "MNIST_DNN_XLA_CACHE"
_XLA_CACHE_FLAG = "--tf_xla_persistent_cache_directory"


def _verbosity(argv: list[str]) -> int | None:
    """The value of absl's --verbosity (-v) on the command line, read before absl parses it."""
    for i, arg in enumerate(argv):
        if not arg.startswith("-"):
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in ("verbosity", "v"):
            continue
        if not has_value:
            value = argv[i + 1] if i + 1 < len(argv) else ""
        try:
            return int(value)
        except ValueError:
            return None
    return None


def wants_tf_logs(argv: list[str], environ) -> bool:
    """Whether the user asked for TensorFlow's own log lines."""
    if environ.get(TF_LOGS_ENV, "").strip() not in ("", "0"):
        return True
    verbosity = _verbosity(argv[1:])
    return verbosity is not None and verbosity >= 1


@contextlib.contextmanager
def _stderr_captured():
    """Points file descriptor 2 at a temporary file; on an exception, replays what it holds."""
    if sys.stderr is None:  # started with descriptor 2 closed: nothing to keep quiet
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _this_cpu() -> str:
    """A short name for this processor's instruction set: a program compiled for one CPU may not run on another."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


def xla_cache_folder(environ) -> str | None:
    """$MNIST_DNN_XLA_CACHE (`off`: none), else ~/.cache/mnist_dnn/xla/<this CPU>."""
    chosen = environ.get(XLA_CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "0", "off") else chosen
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "mnist_dnn", "xla", _this_cpu())


def _can_hold(folder: str) -> bool:
    """Whether `folder` is, or can be created as, a writable folder (checked without creating it)."""
    existing = files.nearest_existing(folder)
    return os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK)


def use_xla_cache(environ=os.environ) -> None:
    """Adds XLA's persistent cache to TF_XLA_FLAGS (read when XLA first compiles), unless one is set.

    A folder XLA could not write would fail every compilation: then there is no cache (with a
    warning if the user chose that folder).
    """
    folder = xla_cache_folder(environ)
    flags = environ.get("TF_XLA_FLAGS", "")
    if not folder or _XLA_CACHE_FLAG in flags:
        return
    if not _can_hold(folder):
        if environ.get(XLA_CACHE_ENV) is not None:
            print(f"warning: {XLA_CACHE_ENV}={folder} is not a folder that can be written; compiling without "
                  "the cache", file=sys.stderr)
        return
    environ["TF_XLA_FLAGS"] = f"{flags} {_XLA_CACHE_FLAG}={folder}".strip()


def import_tensorflow() -> None:
    """Imports TensorFlow (and probes its devices) quietly, unless TensorFlow's logs are wanted."""
    use_xla_cache()
    if "tensorflow" in sys.modules:
        return
    if wants_tf_logs(sys.argv, os.environ):
        import tensorflow  # noqa: F401
        return
    # Later C++ log lines stay off too: XLA's start-up notices, and the parse error that every
    # hit of XLA's persistent cache logs (it tries the file as text before binary). Real
    # errors still reach the user, as Python exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_captured():
        import tensorflow as tf
        tf.config.list_physical_devices()  # prints the cuInit error where there is no GPU
