"""Exported models: the serving signatures, LiteRT files, numbered versions, atomic writes.

An export is a numbered version folder, `<export_dir>/<version>/`, the layout TensorFlow
Serving watches: a SavedModel, or a LiteRT file (`model.tflite`, `model_int8.tflite`). A
version is written to a hidden temporary folder beside it and renamed into place, so a server
never sees half of one.
"""

import glob
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from mnist_dnn.lib import files
from mnist_dnn.lib.core import data, images, litert
from mnist_dnn.lib.config import BYTES_SIGNATURE, EXPORT_FORMATS, FLAT_SIGNATURE, SERVING_SIGNATURE
from mnist_dnn.lib.errors import Error, UsageError
from mnist_dnn.lib.core.run_dir import CONFIG_FILE, RunDir

FORMATS = EXPORT_FORMATS
MAX_VERSION = 2**63 - 1  # TensorFlow Serving reads versions as 64-bit integers
IMAGES = tf.TensorSpec([None, data.IMAGE_SIZE, data.IMAGE_SIZE, 1], tf.uint8, name="images")
FLAT_IMAGES = tf.TensorSpec([None, data.NUM_PIXELS], tf.float32, name="images")
INVALID_PIXELS = f"{FLAT_SIGNATURE} takes pixels from 0 to 1; some are NaN, infinite or outside that range"


class ServingModule(tf.Module):
    """The model with its serving signatures: preprocessing happens inside the graph."""

    def __init__(self, model: keras.Model):
        super().__init__(name="mnist_serving")
        self.model = model
        # Keras 3 variables wrap a tf.Variable that the SavedModel does not track through the
        # model: tf.saved_model.load still works, but TF1-style loaders (TensorFlow Serving,
        # `saved_model_cli run`) fail with "Could not find variable". Tracking the wrapped
        # variables themselves (as keras.export.ExportArchive does) fixes that; the weights
        # are then stored twice in variables/ (through the model and here), a few hundred KB.
        self.tf_variables = [variable.value for variable in model.variables]

    # A signature function does not check its inputs against the declared shape (a [2, 14, 28, 1]
    # batch came out as one answer): tf.ensure_shape fails the call instead.
    @tf.function(input_signature=[IMAGES])
    def serve_images(self, images):
        """Raw pixels 0..255, as MNIST stores them: scaled and flattened as in training."""
        images = tf.ensure_shape(images, IMAGES.shape)
        return self.outputs(self.flatten(data.to_float(images)))

    @staticmethod
    def flatten(images):
        """[N, 28, 28, 1] as [N, 784]. Not [-1, 784]: the LiteRT converter drops tf.ensure_shape, and
        this reshape still fails on most wrong shapes (a [2, 14, 28, 1] batch has 784 values, not 2 x 784)."""
        return tf.reshape(images, [tf.shape(images)[0], data.NUM_PIXELS])

    @tf.function(input_signature=[FLAT_IMAGES])
    def serve_flat(self, images):
        """Already flattened float pixels in [0, 1]; any other value (NaN included) fails the call."""
        images = tf.ensure_shape(images, FLAT_IMAGES.shape)
        valid = tf.reduce_all((images >= 0.0) & (images <= 1.0))  # False for NaN too
        with tf.control_dependencies([tf.debugging.Assert(valid, [INVALID_PIXELS])]):
            return self.outputs(tf.identity(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        """Encoded PNG, JPEG, BMP or GIF files, decoded and brought to MNIST's form as `predict` does."""
        return self.serve_images(images.decode_digits(image_bytes))

    def outputs(self, images):
        logits = self.model(images, training=False)
        return {"probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1, output_type=tf.int64)}

    def signatures(self) -> dict:
        return {SERVING_SIGNATURE: self.serve_images, FLAT_SIGNATURE: self.serve_flat, BYTES_SIGNATURE: self.serve_bytes}


# --- Numbered versions --------------------------------------------------------------------


def versions(export_dir: str) -> list[int]:
    """The numbered versions already in `export_dir`, ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir) if name.isascii() and name.isdigit())


def version_format(folder: str) -> str | None:
    """What a version folder holds: "saved_model", "litert" or None."""
    if tf.saved_model.contains_saved_model(folder):
        return "saved_model"
    return "litert" if glob.glob(os.path.join(folder, "*" + litert.EXTENSION)) else None


def exported_model(folder: str) -> str | None:
    """What `folder` holds if it is an export, in words ("SavedModel versions 1, 2", "a SavedModel"); else None."""
    if not os.path.isdir(folder):
        return None
    if tf.saved_model.contains_saved_model(folder):
        return "a SavedModel"
    if glob.glob(os.path.join(glob.escape(folder), "*" + litert.EXTENSION)):
        return "a LiteRT file"
    held = {}
    for version in versions(folder):
        kind = version_format(os.path.join(folder, str(version)))
        if kind:
            held.setdefault(kind, []).append(str(version))
    names = {"saved_model": "SavedModel", "litert": "LiteRT"}
    return " and ".join(f"{names[kind]} versions {', '.join(numbers)}" for kind, numbers in held.items()) or None


def check_export_dir(export_dir: str) -> None:
    """Refuses an export_dir that is, or lies under, a file or a symbolic link that leads nowhere, and a
    training run's folder (TensorFlow Serving would watch its checkpoints, and its trainer prune beside versions)."""
    files.check_folder("export_dir", export_dir)
    if RunDir(export_dir).is_run():
        raise UsageError(f"`export_dir` {export_dir} is a training run's folder (checkpoints, {CONFIG_FILE}), not an "
                         "export folder; give the exports a folder of their own, e.g. `export_dir`=exports/mnist")


def _check_one_format(export_dir: str, export_format: str) -> None:
    """TensorFlow Serving serves the highest version: a folder must not mix SavedModels and LiteRT files."""
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


def _write_version(export_dir: str, version: int | None, export_format: str, write) -> str:
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
        return error.message.rsplit("; ", 1)[-1]
    return error.strerror or str(error)


def export_model(model: keras.Model, export_dir: str, version: int | None = None) -> str:
    """Writes the model as SavedModel version `version` (default: the next free) of `export_dir`.

    Returns the version folder.
    """
    module = ServingModule(model)
    return _write_version(export_dir, version, "saved_model",
                          lambda folder: tf.saved_model.save(module, folder, signatures=module.signatures()))


def export_litert(model: keras.Model, export_dir: str, version: int | None = None, quantize: str = "none",
                  representative: np.ndarray | None = None) -> str:
    """Writes the model as a LiteRT file in version `version` of `export_dir`; returns the file's path.

    `quantize="int8"`: full-integer quantization calibrated on `representative` uint8 images.
    """
    version_path(export_dir, version, "litert")  # refuse before converting
    flatbuffer = litert.convert(ServingModule(model), quantize, representative)

    def write(folder):
        os.makedirs(folder)
        with open(os.path.join(folder, litert.FILE_NAMES[quantize]), "wb") as f:
            f.write(flatbuffer)

    return os.path.join(_write_version(export_dir, version, "litert", write), litert.FILE_NAMES[quantize])


# --- Finding an exported model ------------------------------------------------------------


def _model_in(folder: str) -> str | None:
    """The SavedModel folder itself, or its one LiteRT file; None if it holds neither."""
    if tf.saved_model.contains_saved_model(folder):
        return folder
    found = sorted(glob.glob(os.path.join(folder, "*" + litert.EXTENSION)))
    if len(found) > 1:
        raise UsageError(f"{folder} holds {len(found)} LiteRT files; pass one of them as `model_dir`")
    return found[0] if found else None


def resolve_model(model_dir: str) -> str:
    """A SavedModel folder or a LiteRT file: as given, or the one in the highest numbered version."""
    files.check_link("model_dir", model_dir, "point it at an exported model")
    if os.path.isfile(model_dir):
        return model_dir  # a LiteRT file; checked when loaded
    found = _model_in(model_dir) if os.path.isdir(model_dir) else None
    if found:
        return found
    numbered = versions(model_dir)
    if numbered:
        latest = os.path.join(model_dir, str(numbered[-1]))
        found = _model_in(latest)
        if found:
            return found
        raise UsageError(f"`model_dir` {model_dir}: its latest version {latest} holds neither a SavedModel nor a .tflite file")
    raise UsageError(f"`model_dir` {model_dir} is neither a SavedModel, a .tflite file nor a folder of numbered versions")
