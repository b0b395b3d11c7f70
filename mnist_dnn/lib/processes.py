"""Processes and signals: a child that dies with its parent, and signal handlers set for a while."""

import contextlib
import signal

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
