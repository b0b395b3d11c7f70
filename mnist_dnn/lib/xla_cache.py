"""XLA's persistent compilation cache, which must never make a run fail.

`startup.use_xla_cache` points XLA at a folder (one per CPU) through TF_XLA_FLAGS. XLA reads an
entry there when it compiles a program it has seen before, and writes one (through a temporary
`<entry>.pb<host>-<thread>-<pid>-<time>.tmp` renamed into place) after compiling a new one. A
damaged entry fails the compiled call itself: DataLossError (garbled), OutOfRangeError
(truncated), InvalidArgumentError (empty); so does a write onto a full disk
(ResourceExhaustedError), which leaves the temporary file behind. XLA reads its flags once per
process, so a process cannot turn the cache off once it has started. Hence:

- before TensorFlow starts (`prepare`): temporary files of this host's processes that are gone
  are removed, and a folder with less than MIN_FREE_BYTES free is used read-only;
- after a compiled call failed (`recover`): if the cache played a part, its damaged entries and
  this process's temporary files are removed, and the caller trains on without XLA.

Imports no TensorFlow (the start-up runs it before the import).
"""

import os
import re
import shutil
import socket

from mnist_dnn.lib import files

FOLDER_FLAG = "--tf_xla_persistent_cache_directory"
READ_ONLY_FLAG = "--tf_xla_persistent_cache_read_only"
MIN_FREE_BYTES = 64 << 20  # several entries of the largest models here (an MLP's is 0.4-10 MB)
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
