"""The export folder's layout: numbered versions, what each holds, writing one atomically, finding the model.

An export is a numbered version folder, `<export_dir>/<version>/`, the layout TensorFlow Serving watches: a SavedModel,
a LiteRT file (`model.tflite`, `model_int8.tflite`), a Keras model (`model.keras`) or an ONNX model (`model.onnx`). A
version is written to a hidden temporary folder beside it and renamed into place, so a server never sees half of one."""

import glob
import os
import shutil

import tensorflow as tf

from mnist_dnn.lib import files
from mnist_dnn.lib.errors import Error, UsageError, first_line
from mnist_dnn.lib.core.run_dir import CONFIG_FILE, RunDir

MAX_VERSION = 2**63 - 1  # TensorFlow Serving reads versions as 64-bit integers
LITERT_FILE_NAMES = {"none": "model.tflite", "int8": "model_int8.tflite"}
KERAS_FILE_NAME = "model.keras"
ONNX_FILE_NAME = "model.onnx"
FILE_FORMATS = {".tflite": "litert", ".keras": "keras", ".onnx": "onnx"}  # a version of one file: its extension
NAMES = {"saved_model": "SavedModel", "litert": "LiteRT", "keras": "Keras", "onnx": "ONNX"}


def versions(export_dir: str) -> list[int]:
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir) if name.isascii() and name.isdigit())


def model_files(folder: str) -> list[str]:
    return sorted(path for extension in FILE_FORMATS for path in glob.glob(os.path.join(glob.escape(folder), "*" + extension)))


def version_format(folder: str) -> str | None:
    """What a version folder holds: "saved_model", "litert", "keras", "onnx" or None."""
    if tf.saved_model.contains_saved_model(folder):
        return "saved_model"
    found = model_files(folder)
    return FILE_FORMATS[os.path.splitext(found[0])[1]] if found else None


def exported_model(folder: str) -> str | None:
    """What `folder` holds if it is an export, in words ("SavedModel versions 1, 2", "a SavedModel"); else None."""
    if not os.path.isdir(folder):
        return None
    kind = version_format(folder)
    if kind:
        return {"saved_model": "a SavedModel", "litert": "a LiteRT file", "keras": "a Keras model", "onnx": "an ONNX model"}[kind]
    held = {}
    for version in versions(folder):
        kind = version_format(os.path.join(folder, str(version)))
        if kind:
            held.setdefault(kind, []).append(str(version))
    return " and ".join(f"{NAMES[kind]} versions {', '.join(numbers)}" for kind, numbers in held.items()) or None


def check_export_dir(export_dir: str) -> None:
    """Refuses an export_dir that is, or lies under, a file or a symbolic link that leads nowhere, and a
    training run's folder (TensorFlow Serving would watch its checkpoints, and its trainer prune beside versions)."""
    files.check_folder("export_dir", export_dir)
    if RunDir(export_dir).is_run():
        raise UsageError(f"`export_dir` {export_dir} is a training run's folder (checkpoints, {CONFIG_FILE}), not an "
                         "export folder; give the exports a folder of their own, e.g. `export_dir`=exports/mnist")


def _check_one_format(export_dir: str, export_format: str) -> None:
    """TensorFlow Serving serves the highest version: a folder must hold one format."""
    held = {version_format(os.path.join(export_dir, str(v))) for v in versions(export_dir)} - {None, export_format}
    if held:
        other = held.pop()
        raise UsageError(f"`export_dir` {export_dir} holds {other} versions; give {export_format} exports their own "
                         f"folder (e.g. `export_dir`={export_dir.rstrip('/')}_{export_format})")


def version_path(export_dir: str, version: int | None = None, export_format: str = "saved_model") -> str:
    """The folder a new export will go to; refuses an existing version, a bad number or a bad export_dir."""
    check_export_dir(export_dir)
    _check_one_format(export_dir, export_format)
    if version is None:
        version = max(versions(export_dir), default=0) + 1
    elif not 0 < version <= MAX_VERSION:
        raise UsageError(f"`version` must be a positive integer of at most {MAX_VERSION} "
                         f"(TensorFlow Serving reads 64-bit versions), got {version}")
    path = os.path.join(export_dir, str(version))
    if os.path.lexists(path):
        raise UsageError(f"{path} already exists; pass another `version` or remove it (versions are never overwritten)")
    return path


def write_version(export_dir: str, version: int | None, export_format: str, write) -> str:
    """Calls `write(folder)` on a hidden temporary folder, then renames it into the version's place."""
    path = version_path(export_dir, version, export_format)
    created = not os.path.lexists(export_dir)
    files.remove_leftover_folders(export_dir)  # of exports that were killed
    try:
        os.makedirs(export_dir, exist_ok=True)
        files.write_folder(path, write)  # the rename fails rather than replace a version written meanwhile
    except (OSError, tf.errors.OpError) as e:  # TensorFlow's file writes raise its own errors (a full disk too)
        if created:
            shutil.rmtree(export_dir, ignore_errors=True)  # the folder this export made, empty again
        raise Error(f"cannot write the export {path}: {_reason(e)}; nothing was left behind") from None
    return path


def _reason(error: Exception) -> str:
    if isinstance(error, tf.errors.OpError):  # "<file>; No space left on device"
        return first_line(error).rsplit("; ", 1)[-1]
    return error.strerror or str(error)


# --- Finding an exported model ------------------------------------------------------------


def model_in(folder: str) -> str | None:
    """The SavedModel folder itself, or its one model file (.tflite, .keras, .onnx); None if it holds neither."""
    if tf.saved_model.contains_saved_model(folder):
        return folder
    found = model_files(folder)
    if len(found) > 1:
        raise UsageError(f"{folder} holds {len(found)} model files; pass one of them as `model_dir`")
    return found[0] if found else None


def resolve_model(model_dir: str) -> str:
    """A SavedModel folder or a model file: as given, or the one in the highest numbered version."""
    files.check_link("model_dir", model_dir, "point it at an exported model")
    if os.path.isfile(model_dir):
        return model_dir  # a model file; checked when loaded
    found = model_in(model_dir) if os.path.isdir(model_dir) else None
    if found:
        return found
    numbered = versions(model_dir)
    if numbered:
        latest = os.path.join(model_dir, str(numbered[-1]))
        found = model_in(latest)
        if found:
            return found
        raise UsageError(f"`model_dir` {model_dir}: its latest version {latest} holds neither a SavedModel nor a "
                         ".tflite, .keras or .onnx file")
    raise UsageError(f"`model_dir` {model_dir} is neither a SavedModel, a .tflite, .keras or .onnx file nor a folder "
                     "of numbered versions")
