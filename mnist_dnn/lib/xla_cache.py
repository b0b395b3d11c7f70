"""XLA's persistent compilation cache: bounded, shared safely, never failing a run (imports no TensorFlow).

XLA reads an entry of its folder (`startup.use_xla_cache`'s, one per CPU and TensorFlow version) for a program it has
seen, and writes one through a temporary `<entry>.pb<host>-<thread>-<pid>-<time>.tmp` renamed into place. A damaged
entry fails the compiled call: DataLossError (garbled), OutOfRangeError (truncated), InvalidArgumentError (empty); so
does a write onto a full disk (ResourceExhaustedError), leaving the temporary file. XLA reads its flags once per
process. Hence: before TensorFlow starts (`prepare`), dead processes' temporary files go, and a folder short of
MIN_FREE_BYTES is only read; when a tool starts and ends (`evict`), the least recently used entries of the whole root
go until it fits its cap (`watch` tells what was used); after a failed call (`recover`), if the cache played a part,
its damaged entries and this process's temporary files go, and the caller trains on without XLA.
"""

import contextlib
import ctypes
import glob
import itertools
import os
import re
import shutil
import socket

from mnist_dnn.lib import files

FOLDER_FLAG = "--tf_xla_persistent_cache_directory"
READ_ONLY_FLAG = "--tf_xla_persistent_cache_read_only"
MIN_FREE_BYTES = 64 << 20  # several entries of the largest models here (an MLP's is 0.4-10 MB)
ENTRY = "xla_compile_cache__*.pb"  # XLA's entries (its default prefix); never its temporary files
_IN_OPEN = 0x20  # inotify's event for a file opened; its events end with the file's name, NUL-terminated:
_OPENED_ENTRY = re.compile(rb"xla_compile_cache__[^\0/]*\.pb(?=\0)")
_TEMPORARY = re.compile(r"\.pb(?P<host>.+)-[0-9a-f]+-(?P<pid>\d+)-[0-9a-f]+\.tmp$")


def prepare(folder: str) -> str | None:
    """Tidies `folder` before XLA uses it; returns the flags that point XLA at it, or None for a folder XLA could not
    write, which would fail every compilation."""
    if files.folder_problem(folder):
        return None
    _remove(_temporary_files(folder, files.process_is_gone))
    flags = f"{FOLDER_FLAG}={folder}"
    short_of_space = shutil.disk_usage(files.nearest_existing(folder)).free < MIN_FREE_BYTES
    return f"{flags} {READ_ONLY_FLAG}=true" if short_of_space else flags


def evict(root: str, cap_bytes: int, used: list[str] = ()) -> list[str]:
    """Removes the least recently used entries of the folders in `root` until they hold `cap_bytes` or less. An
    entry's modification time is its last use: XLA's write, or now for the `used` entries. Only whole entries go, each
    by one unlink: a process reading one keeps its open file; one about to read it compiles afresh (or, in the instant
    between XLA's check and its read, `recover` warns). One that cannot be stamped or removed (another user's) stays."""
    for path in used:
        with contextlib.suppress(OSError):
            os.utime(path)
    entries = []
    for path in glob.glob(os.path.join(glob.escape(root), "*", ENTRY)):
        with contextlib.suppress(OSError):  # (evicted by another process meanwhile)
            status = os.stat(path)
            entries.append((status.st_mtime_ns, path, status.st_size))
    newest_first = sorted(entries, reverse=True)
    kept = list(itertools.takewhile(lambda total: total <= cap_bytes, itertools.accumulate(e[2] for e in newest_first)))
    return _remove([path for _, path, _ in newest_first[len(kept):]])


def watch(folder: str):
    """A function that lists the entries of `folder` opened (by any process) since this call, through Linux's inotify:
    access times cannot tell (`noatime` keeps none, `relatime` one a day). It lists none where inotify is out of
    instances or the folder is not there yet."""
    libc = ctypes.CDLL(None, use_errno=True)
    descriptor = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if descriptor < 0 or libc.inotify_add_watch(descriptor, os.fsencode(folder), _IN_OPEN) < 0:
        return list  # (a descriptor without a watch is closed when the process ends, as one with)

    def opened() -> list[str]:
        events = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(descriptor, 1 << 16):
                events += chunk
        return [os.path.join(folder, os.fsdecode(name)) for name in sorted(set(_OPENED_ENTRY.findall(events)))]

    return opened


def recover(error: Exception, tf_xla_flags: str) -> str | None:
    """After a compiled call failed with `error`: what the cache did wrong, or None if it played no part. Removes the
    damaged entries (named by the error, empty, or not protocol-buffer bytes) and this process's temporary files."""
    folder = (re.search(re.escape(FOLDER_FLAG) + r"=(\S+)", tf_xla_flags) or [None, None])[1]
    if not folder or not os.path.isdir(folder):
        return None
    text = str(error)
    removed = _remove([*_damaged_entries(folder, text), *_temporary_files(folder, lambda pid: pid == os.getpid())])
    if not removed and folder not in text:
        return None
    kind = "no space left on device" if "No space left" in text or type(error).__name__ == "ResourceExhaustedError" \
        else f"{type(error).__name__}"
    return (f"XLA's compilation cache {folder} failed ({kind}); removed {len(removed)} damaged or unfinished "
            "file(s). This run goes on without XLA; the next one rebuilds the cache")


def _temporary_files(folder: str, whose) -> list[str]:
    """XLA's temporary files in `folder` written on this host by a process `whose(pid)` selects."""
    found = [(path, _TEMPORARY.search(os.path.basename(path)))
             for path in glob.glob(os.path.join(glob.escape(folder), "*.tmp"))]
    return [path for path, match in found if match and match["host"] == socket.gethostname() and whose(int(match["pid"]))]


def _damaged_entries(folder: str, error_text: str) -> list[str]:
    from google.protobuf import empty_pb2, message  # (protobuf comes with TensorFlow)

    damaged = []
    for path in glob.glob(os.path.join(glob.escape(folder), "*.pb")):
        try:
            with open(path, "rb") as f:
                content = f.read()
            empty_pb2.Empty().ParseFromString(content)  # checks the wire format, keeps every field as unknown
        except (OSError, message.DecodeError):
            damaged.append(path)
            continue
        if not content or path in error_text:
            damaged.append(path)
    return damaged


def _remove(paths: list[str]) -> list[str]:
    removed = []
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)
            removed.append(path)
    return removed
