"""Small files written atomically: a failed or killed write never leaves half a file."""

import json
import os


def write_text(path: str, text: str) -> None:
    """Writes through a temporary file, then renames it over `path`."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, payload) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def read_json(path: str):
    with open(path) as f:
        return json.load(f)
