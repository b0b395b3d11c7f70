"""Processes: a child that dies with its parent."""

import signal


def die_with_parent() -> None:
    """In a child: get SIGTERM when the parent dies, even by SIGKILL (Linux only; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

