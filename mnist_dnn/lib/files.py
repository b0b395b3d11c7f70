"""Files and folders written atomically (a failed or killed write never leaves half of one); inputs read with a cap."""

import contextlib
import errno
import json
import os
import re
import shutil
import stat

from mnist_dnn.lib.errors import UsageError


def nearest_existing(path: str) -> str:
    """`path` made absolute, or its closest ancestor that exists (what a write there would meet). A symbolic link counts
    as existing even where it leads nowhere (a loop, a missing target): creating a folder in its place fails."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    return existing


def folder_problem(folder: str) -> str | None:
    """Why `folder` cannot be used, or created, as a writable folder; None if it can. Creates nothing."""
    existing = nearest_existing(folder)
    where = "" if existing == os.path.abspath(folder) else f" (at {existing})"
    if os.path.isdir(existing):  # a folder, or a link to one
        return None if os.access(existing, os.W_OK | os.X_OK) else f"{folder} is not writable{where}"
    if not os.path.exists(existing):  # a link that leads nowhere
        return f"{broken_link(folder)}, not a folder"
    return f"{folder} is a file, not a folder" if not where else f"{folder} is under a file{where}"


def broken_link(path: str) -> str | None:
    """"<path> is a loop of symbolic links" (or a link to a missing target), when `path` is or lies
    under such a link; None otherwise. For the messages of paths that would read as missing."""
    existing = nearest_existing(path)
    if os.path.exists(existing):
        return None
    where = "" if existing == os.path.abspath(path) else f" (at {existing})"
    return f"{path} is {_broken_link(existing)}{where}"


def refuse(field: str, problem: str | None, fix: str) -> None:
    """If there is a `problem` (found by the checks here), a UsageError naming the setting `field`: "problem; fix"."""
    if problem:
        raise UsageError(f"{problem}; {fix}", field=field)


def check_link(field: str, path: str, fix: str) -> None:
    refuse(field, broken_link(path), fix)


def check_folder(field: str, folder: str) -> None:
    refuse(field, folder_problem(folder), "pass another folder")


def special_file_problem(path: str) -> str | None:
    """"<path> is a FIFO" (a folder, device, socket, or a link to one) when something other than a
    regular file exists at `path`: a write there must not replace it. None otherwise."""
    try:
        mode = os.stat(path).st_mode
    except OSError:  # nothing there, or a link that leads nowhere (check_link's case)
        return None
    return None if stat.S_ISREG(mode) else f"{path} {_not_regular(path, mode)}"


def _not_regular(path: str, mode: int) -> str:
    link = " a symbolic link to" if os.path.islink(path) else ""
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return f"is{link} {next((name for test, name in kinds if test(mode)), 'a special file')}, not a regular file"


def _broken_link(path: str) -> str:
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a loop of symbolic links"
    return f"a symbolic link to the missing {os.readlink(path)}"


def write_text(path: str, text: str) -> None:
    write_with(path, lambda f: f.write(text.encode()))


def write_with(path: str, write) -> None:
    """Calls `write(binary_file)` on a temporary file, then renames it over `path`; on an error, removes it. Refuses
    (OSError) to replace anything but a regular file: a device or FIFO at `path` stays."""
    problem = special_file_problem(path)
    if problem:
        raise OSError(errno.EEXIST, problem)
    tmp = f"{path}.tmp-{os.getpid()}"  # one per process: two writers never share it
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):  # name the file meant, not its temporary
            e.filename = path
        raise


def no_space_problem(error: BaseException) -> str | None:
    """"no space left on device in <folder> (writing <file>)" when `error` is a write onto a full disk: an
    OSError ENOSPC or EDQUOT, or TensorFlow's "<file>; No space left on device". None for any other error."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        path = error.filename
    else:
        match = re.search(r"(\S+); No space left on device", str(error))
        if not match:
            return None
        path = match[1]
    where = f" in {os.path.dirname(os.path.abspath(path))} (writing {os.path.basename(path)})" if path else ""
    return f"no space left on device{where}; free some space there, then run the command again"


def write_folder(path: str, write) -> None:
    """Calls `write(folder)` on a hidden temporary folder beside `path`, then renames it to `path`. The rename fails
    (OSError) rather than replace a folder with files that appeared meanwhile (an empty one it replaces, as rename(2)
    does). A crash's leftover is a hidden `.tmp-` folder beside `path`, never a half-written `path`."""
    parent, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(parent, f".tmp-{name}-{os.getpid()}")
    try:
        write(tmp)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename


def process_is_gone(pid: int) -> bool:
    """Whether no process `pid` runs on this machine (a process of another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_leftover_folders(parent: str) -> list[str]:
    """Removes the hidden `.tmp-<name>-<pid>` folders of `write_folder` in `parent` whose process is gone. A killed
    write leaves one; a running write's own is kept. Nothing else is touched."""
    removed = []
    names = os.listdir(parent) if os.path.isdir(parent) else []
    for name in names:
        match = re.fullmatch(r"\.tmp-.+-(\d+)", name)
        path = os.path.join(parent, name)
        if match and os.path.isdir(path) and not os.path.islink(path) and process_is_gone(int(match[1])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_json(path: str, payload) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: str, max_bytes: int = 64 << 20):  # (the tools' own files, of a few KB)
    return json.loads(read_input(path, max_bytes))


def read_input(path: str, max_bytes: int, to_raise_it: str = "") -> bytes:
    """The bytes of `path`, which must be a regular file of at most `max_bytes`; OSError otherwise. Whatever is at
    `path` is checked before it is opened (a FIFO blocks an open and a read; a device such as /dev/zero never ends one),
    opened without blocking and checked again (it may have been replaced meanwhile), then read up to its size.
    `to_raise_it` ends the message of a file over the cap (e.g. "raise `max_image_bytes`")."""
    _check_input(path, os.stat(path), max_bytes, to_raise_it)
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY), "rb") as f:
        size = _check_input(path, os.fstat(f.fileno()), max_bytes, to_raise_it)
        contents = f.read(size + 1)  # a byte more than its size: a file that grows is still being written
    if len(contents) > size:
        raise OSError(errno.EAGAIN, "grew while it was read: it is still being written; try again when it is whole")
    return contents


def _check_input(path: str, status: os.stat_result, max_bytes: int, to_raise_it: str) -> int:
    if not stat.S_ISREG(status.st_mode):
        raise OSError(errno.EINVAL, f"{_not_regular(path, status.st_mode)}; pass a regular file")
    if status.st_size > max_bytes:
        raise OSError(errno.EFBIG, f"is {status.st_size:,} bytes, over the cap of {max_bytes:,}"
                      + (f"; {to_raise_it}" if to_raise_it else ""))
    return status.st_size


@contextlib.contextmanager
def folder_lock(folder: str, on_wait=None):
    """Yields whether this process holds `folder` (an flock on the folder itself) for the block; with `on_wait`,
    calls it and waits for a held folder instead. The lock dies with its process (a killed holder never leaves it
    locked) and, unlike a lock file, cannot be deleted from under its holder."""
    import fcntl  # (here: a module-level import would stop the tools importing on Windows)

    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is None:
                yield False
                return
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(handle)
