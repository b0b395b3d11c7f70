"""XLA's persistent compilation cache: bounded, shared safely, and never a reason for a run to fail.

`startup.use_xla_cache` points XLA at a folder of its root (one per CPU and TensorFlow version)
through TF_XLA_FLAGS. XLA reads an entry there when it compiles a program it has seen before,
and writes one (through a temporary `<entry>.pb<host>-<thread>-<pid>-<time>.tmp` renamed into
place) after compiling a new one. A damaged entry fails the compiled call itself: DataLossError
(garbled), OutOfRangeError (truncated), InvalidArgumentError (empty); so does a write onto a full
disk (ResourceExhaustedError), which leaves the temporary file behind. XLA reads its flags once
per process, so a process cannot turn the cache off once it has started. Hence:

- before TensorFlow starts (`prepare`): temporary files of this host's processes that are gone
  are removed, and a folder with less than MIN_FREE_BYTES free is used read-only;
- when a tool starts and when it ends (`evict`): the least recently used entries of the whole
  root are removed until it holds no more than the cap (`watch` tells which entries were used);
- after a compiled call failed (`recover`): if the cache played a part, its damaged entries and
  this process's temporary files are removed, and the caller trains on without XLA.

Imports no TensorFlow (the start-up runs it before the import).
"""

import contextlib
import ctypes
import fnmatch
import glob
import os
import re
import shutil
import socket
import struct

from mnist_dnn.lib import files

FOLDER_FLAG = "--tf_xla_persistent_cache_directory"
READ_ONLY_FLAG = "--tf_xla_persistent_cache_read_only"
MIN_FREE_BYTES = 64 << 20  # several entries of the largest models here (an MLP's is 0.4-10 MB)
ENTRY = "xla_compile_cache__*.pb"  # XLA's entries (its default prefix); never its temporary files
_IN_OPEN = 0x20  # inotify's event for a file opened
_TEMPORARY = re.compile(r"\.pb(?P<host>.+)-[0-9a-f]+-(?P<pid>\d+)-[0-9a-f]+\.tmp$")


def folder_of(tf_xla_flags: str) -> str | None:
    """The cache folder that TF_XLA_FLAGS names, if any."""
    match = re.search(re.escape(FOLDER_FLAG) + r"=(\S+)", tf_xla_flags)
    return match[1] if match else None


def prepare(folder: str) -> str:
    """Tidies `folder` before XLA uses it; returns the flags that point XLA at it."""
    _remove(_temporary_files(folder, files.process_is_gone))
    flags = f"{FOLDER_FLAG}={folder}"
    return f"{flags} {READ_ONLY_FLAG}=true" if _free_bytes(folder) < MIN_FREE_BYTES else flags


def evict(root: str, cap_bytes: int, used: list[str] = ()) -> list[str]:
    """Removes the least recently used entries of the folders in `root` until they hold `cap_bytes` or less.

    An entry's modification time is when it was last used: when XLA wrote it, or when it was
    opened, for the `used` entries (stamped now). Only whole entries are removed, each by one
    unlink: a process that is reading one keeps its open file, and one that looks for it then
    compiles the program afresh (in the instant between XLA's check and its read, `recover`
    turns the failed read into a warning). Another process evicting at once changes nothing.
    """
    for path in used:
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
    entries = []
    for path in glob.glob(os.path.join(glob.escape(root), "*", ENTRY)):
        with contextlib.suppress(FileNotFoundError):  # (evicted by another process meanwhile)
            status = os.stat(path)
            entries.append((status.st_mtime_ns, path, status.st_size))
    excess, total = [], sum(size for _, _, size in entries)
    for _, path, size in sorted(entries):
        if total <= cap_bytes:
            break
        excess.append(path)
        total -= size
    return _remove(excess)


def watch(folder: str):
    """A function that lists the entries of `folder` opened (by any process) since this call, through inotify.

    Access times cannot tell: a disk mounted `noatime` keeps none, and `relatime` one a day. Where
    inotify is missing or out of instances, or the folder is not there yet, it lists nothing.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        descriptor = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError):  # (no inotify: not Linux)
        return list
    if descriptor < 0:
        return list
    if libc.inotify_add_watch(descriptor, os.fsencode(folder), _IN_OPEN) < 0:
        os.close(descriptor)
        return list

    def opened() -> list[str]:
        names = set()
        with contextlib.suppress(BlockingIOError):
            while events := os.read(descriptor, 1 << 16):
                offset = 0
                while offset < len(events):  # struct inotify_event: wd, mask, cookie, len, then the name
                    length = struct.unpack_from("I", events, offset + 12)[0]
                    names.add(os.fsdecode(events[offset + 16:offset + 16 + length].rstrip(b"\0")))
                    offset += 16 + length
        return [os.path.join(folder, name) for name in sorted(names) if fnmatch.fnmatch(name, ENTRY)]

    return opened


def recover(error: Exception, tf_xla_flags: str) -> str | None:
    """After a compiled call failed with `error`: what the cache did wrong, or None if it played no part.

    Removes the entries that are damaged (named by the error, empty, or not protocol-buffer
    bytes) and this process's temporary files, so that the next run compiles them afresh.
    """
    folder = folder_of(tf_xla_flags)
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


def _free_bytes(folder: str) -> int:
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return shutil.disk_usage(existing).free


def _temporary_files(folder: str, whose) -> list[str]:
    """XLA's temporary files in `folder` written on this host by a process `whose(pid)` selects."""
    found = []
    for name in _names(folder):
        match = _TEMPORARY.search(name)
        if match and match["host"] == socket.gethostname() and whose(int(match["pid"])):
            found.append(os.path.join(folder, name))
    return found


def _damaged_entries(folder: str, error_text: str) -> list[str]:
    from google.protobuf import empty_pb2, message  # (protobuf comes with TensorFlow)

    damaged = []
    for name in _names(folder):
        path = os.path.join(folder, name)
        if not name.endswith(".pb"):
            continue
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


def _names(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _remove(paths: list[str]) -> list[str]:
    removed = []
    for path in paths:
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
