"""TensorFlow imported without its C++ start-up chatter on the terminal.

Importing TensorFlow 2.21 writes 6-7 lines to file descriptor 2 (CUDA probing, CPU
instruction notices, a `failed call to cuInit` on machines without a GPU) that no
environment variable silences, so the first import (and the device probe that prints
the cuInit line) runs with descriptor 2 pointed at a temporary file. The lines come
back with `--verbosity=1` (or higher) on the command line or `MNIST_DNN_TF_LOGS=1`; if
the import fails, everything it printed is shown.
"""

import contextlib
import os
import sys
import tempfile

TF_LOGS_ENV = "MNIST_DNN_TF_LOGS"


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


def import_tensorflow() -> None:
    """Imports TensorFlow (and probes its devices) quietly, unless TensorFlow's logs are wanted."""
    if "tensorflow" in sys.modules:
        return
    if wants_tf_logs(sys.argv, os.environ):
        import tensorflow  # noqa: F401
        return
    # Later C++ lines below ERROR (XLA's start-up notices, say) stay off too.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_captured():
        import tensorflow as tf
        tf.config.list_physical_devices()  # prints the cuInit error where there is no GPU
