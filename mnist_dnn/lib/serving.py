"""SavedModels for TensorFlow Serving: the serving signatures and numbered versions.

An export is a numbered version folder, `<export_dir>/<version>/`, the layout TensorFlow
Serving watches. A version is written to a hidden temporary folder beside it and renamed
into place, so a server never sees half of one.
"""

import os
import shutil

import keras
import tensorflow as tf

from mnist_dnn.lib import data
from mnist_dnn.lib.errors import UsageError

SERVING_SIGNATURE = "serving_default"
FLAT_SIGNATURE = "predict_flat"


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

    @tf.function(input_signature=[tf.TensorSpec([None, data.IMAGE_SIZE, data.IMAGE_SIZE, 1], tf.uint8, name="images")])
    def serve_images(self, images):
        """Raw pixels 0..255, as MNIST stores them: scaled and flattened as in training."""
        flat = tf.reshape(data.to_float(images), [-1, data.NUM_PIXELS])
        return self._outputs(flat)

    @tf.function(input_signature=[tf.TensorSpec([None, data.NUM_PIXELS], tf.float32, name="images")])
    def serve_flat(self, images):
        """Already flattened float pixels in [0, 1]."""
        return self._outputs(images)

    def _outputs(self, images):
        logits = self.model(images, training=False)
        return {"probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1, output_type=tf.int64)}

    def signatures(self) -> dict:
        return {SERVING_SIGNATURE: self.serve_images, FLAT_SIGNATURE: self.serve_flat}


def versions(export_dir: str) -> list[int]:
    """The numbered versions already in `export_dir`, ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir) if name.isascii() and name.isdigit())


def version_path(export_dir: str, version: int | None = None) -> str:
    """The folder a new export will go to; refuses an existing version or a bad number."""
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise UsageError(f"--export_dir {export_dir} is a file, not a folder")
    if version is None:
        version = max(versions(export_dir), default=0) + 1
    elif version <= 0:
        raise UsageError(f"--version must be a positive integer, got {version}")
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise UsageError(f"{path} already exists; pass another --version or remove it (versions are never overwritten)")
    return path


def export_model(model: keras.Model, export_dir: str, version: int | None = None) -> str:
    """Writes the model as SavedModel version `version` (default: the next free) of `export_dir`.

    Returns the version folder. Written beside it first, then renamed into place.
    """
    path = version_path(export_dir, version)
    tmp = os.path.join(export_dir, f".tmp-{os.path.basename(path)}-{os.getpid()}")
    os.makedirs(export_dir, exist_ok=True)
    module = ServingModule(model)
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        try:
            os.rename(tmp, path)  # fails rather than replace a version written meanwhile
        except OSError as e:
            raise UsageError(f"cannot move the export into {path}: {e.strerror}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after a rename; a crash's leftovers are hidden
    return path


def resolve_model_dir(model_dir: str) -> str:
    """A SavedModel folder as given, or else the highest numbered version inside it."""
    if tf.saved_model.contains_saved_model(model_dir):
        return model_dir
    numbered = versions(model_dir)
    if numbered:
        latest = os.path.join(model_dir, str(numbered[-1]))
        if tf.saved_model.contains_saved_model(latest):
            return latest
        raise UsageError(f"--model_dir {model_dir}: its latest version {latest} is not a SavedModel")
    raise UsageError(f"--model_dir {model_dir} is neither a SavedModel nor a folder of numbered versions")
