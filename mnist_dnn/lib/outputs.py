"""Where a tool may write its output file (train --result_file, evaluate --metrics_file, predict --rest_request). An
output file is the tool's own. It must not go inside a run folder or an export (their files are the other tools'
bookkeeping), nor be a file the same command reads or writes otherwise. An existing file is replaced only if it is an
output of the same kind (a JSON object with that output's keys, as the tool writes it), or if the user says so
(`overwrite`)."""

import json
import os
import re

from mnist_dnn.lib import files
from mnist_dnn.lib.errors import UsageError

# What marks a run folder (lib/core/run_dir.py's layout) and an export (lib/core/export_dir.py's), read without TensorFlow.
RUN_CONFIG = "model_config.json"
CHECKPOINT_INDEX = re.compile(r"model\.ckpt-\d+\.index$")
SAVED_MODEL = "saved_model.pb"
EXPORTED_FILES = (".tflite", ".keras", ".onnx")  # a LiteRT file, a Keras model, an ONNX model
MAX_OWN_FILE_BYTES = 10 * 2**20  # a larger file is no output of ours: not read to find out


def check_output_file(flag: str, path: str, kinds: tuple[tuple[str, ...], ...], overwrite: bool = False,
                      inputs: tuple[str, ...] = (), written: tuple[str, ...] = ()) -> None:
    """Refuses (UsageError naming `flag`) an output path that would replace or mix with files not the tool's. `kinds`:
    the top-level keys of each form of this output's JSON (an existing file with all the keys of one form is the tool's
    own). `inputs`: files the command reads; `written`: folders it writes into besides the output file."""
    files.check_link(flag, path, "pass another file")
    files.check_plain_target(flag, path)
    target = os.path.realpath(path)
    for other in inputs:
        if os.path.exists(other) and os.path.realpath(other) == target:
            raise UsageError(f"{path} is also an input of this command; pass another file", field=flag)
    for folder in written:
        if os.path.commonpath([target, os.path.realpath(folder)]) == os.path.realpath(folder):
            raise UsageError(f"{path} is inside {folder}, which this command writes; pass a file elsewhere", field=flag)
    enclosing = _enclosing_folder(target)
    if enclosing:
        folder, kind = enclosing
        raise UsageError(f"{path} is inside {kind}, {folder}, whose files are the tools' own; pass a file "
                         "elsewhere", field=flag)
    if os.path.isfile(target) and not overwrite and not _is_output(target, kinds):
        raise UsageError(f"{path} exists and is not a file this tool wrote; pass another file, or --overwrite "
                         "to replace it", field=flag)


def _enclosing_folder(path: str) -> tuple[str, str] | None:
    """(folder, "a run folder" or "an export") of the nearest such folder that holds `path`, if any."""
    folder = os.path.dirname(path)
    while True:
        kind = _folder_kind(folder)
        if kind:
            return folder, kind
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _folder_kind(folder: str) -> str | None:
    names = _names(folder)
    if RUN_CONFIG in names or any(CHECKPOINT_INDEX.match(name) for name in names):
        return "a run folder"
    if _is_version(folder, names) or any(name.isdigit() and _is_version(os.path.join(folder, name))
                                         for name in names):
        return "an export"
    return None


def _is_version(folder: str, names: list[str] | None = None) -> bool:
    """A SavedModel folder, or a numbered folder holding a LiteRT file, a Keras model or an ONNX model."""
    names = _names(folder) if names is None else names
    return SAVED_MODEL in names or (os.path.basename(folder).isdigit()
                                     and any(name.endswith(EXPORTED_FILES) for name in names))


def _names(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:  # not a folder, or not readable: nothing of ours to protect there
        return []


def _is_output(path: str, kinds: tuple[tuple[str, ...], ...]) -> bool:
    """Whether the file holds a JSON object with the keys of one of `kinds`: an earlier output of the tool."""
    try:
        content = json.loads(files.read_input(path, MAX_OWN_FILE_BYTES))
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and any(all(key in content for key in keys) for keys in kinds)
