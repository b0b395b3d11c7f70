"""Small files written atomically: a failed or killed write never leaves half a file."""

import json
import os


def nearest_existing(path: str) -> str:
    """`path` made absolute, or its closest ancestor that exists (what a write there would meet)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing


def write_text(path: str, text: str) -> None:
    write_with(path, lambda f: f.write(text.encode()))


def write_with(path: str, write) -> None:
    """Calls `write(binary_file)` on a temporary file, then renames it over `path`; on an error, removes it."""
    tmp = f"{path}.tmp-{os.getpid()}"  # one per process: two writers never share it
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, payload) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: str):
    with open(path) as f:
        return json.load(f)
