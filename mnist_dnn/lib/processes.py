"""This process and its children: a child that dies with its parent, signal handlers set for a while, and the
lines that TensorFlow's C++ code (and LiteRT's) writes straight to file descriptor 2.

No Python logger sees those lines, so keeping them off the terminal means pointing descriptor 2 at a temporary file
for the call: the quiet start-up (the import's CUDA and CPU notices), int8 conversion (`fully_quantize: 0,
inference_type: 6, ...`), LiteRT's first run (`INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`). If the call
fails, what it wrote is shown.
"""

import contextlib
import os
import signal
import sys
import tempfile

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def die_with_parent() -> None:
    """In a child: get SIGTERM when the parent dies, even by SIGKILL (Linux only; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def signals_to(handler, signals=STOP_SIGNALS):
    """`handler(signum, frame)` takes `signals` inside the block; the previous handlers come back after it."""
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def captured_stderr():
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


def import_tensorflow(quiet: bool):
    """TensorFlow, imported and its devices probed (the probe prints `failed call to cuInit` where there is no GPU);
    with `quiet`, inside `captured_stderr()`: these lines ignore TF_CPP_MIN_LOG_LEVEL."""
    with captured_stderr() if quiet else contextlib.nullcontext():
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


def quiet_unless_logging():
    """`captured_stderr()` where TensorFlow's C++ logs are off (TF_CPP_MIN_LOG_LEVEL 2 or 3, as the tools
    set it by default); elsewhere (a program that keeps them, `--verbosity=1`) the lines stay."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() in ("2", "3"):
        return captured_stderr()
    return contextlib.nullcontext()
