"""Classifying image files with an exported SavedModel, as a client of the server would.

The image is brought to MNIST's form here (28x28 grayscale, light digit on a dark
background); the SavedModel's `serving_default` signature does the rest (scaling,
flattening) in its graph.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from mnist_dnn.lib import data, serving
from mnist_dnn.lib.errors import DataError, UsageError


@dataclasses.dataclass(frozen=True)
class Prediction:
    digit: int
    probability: float
    runner_up: int
    runner_up_probability: float


def read_image(path: str) -> np.ndarray:
    """A PNG, JPEG, BMP or GIF (its first frame) of any size as MNIST pixels: uint8 [28, 28, 1]."""
    try:
        with open(path, "rb") as f:
            contents = f.read()
    except OSError as e:
        raise DataError(e.strerror or str(e)) from None
    try:
        image = tf.io.decode_image(contents, expand_animations=False)
    except tf.errors.InvalidArgumentError:
        raise DataError("not an image TensorFlow can decode (PNG, JPEG, BMP or GIF)") from None
    return to_mnist(image).numpy()


def to_mnist(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, C] to [28, 28, 1]: grayscale, light on dark, resized."""
    image = tf.cast(image, tf.float32)
    if image.shape[-1] in (2, 4):  # an alpha channel: the image as a viewer shows it, on white
        color, alpha = image[..., :-1], image[..., -1:] / 255.0
        image = color * alpha + 255.0 * (1.0 - alpha)
    if image.shape[-1] == 3:
        image = tf.image.rgb_to_grayscale(image)
    border = tf.concat([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
    if tf.reduce_mean(border) > 127:  # a dark digit on a light background: MNIST's are light on dark
        image = 255.0 - image
    image = tf.image.resize(image, [data.IMAGE_SIZE, data.IMAGE_SIZE], antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


class Classifier:
    """The `serving_default` signature of a SavedModel (a version folder, or the latest in a model folder)."""

    def __init__(self, model_dir: str):
        self.path = serving.resolve_model_dir(model_dir)
        try:
            # Keep the loaded object: its signatures read variables it owns.
            self.loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, tf.errors.OpError) as e:
            raise UsageError(f"cannot load the SavedModel {self.path}: {str(e).strip().splitlines()[0]}") from None
        if serving.SERVING_SIGNATURE not in self.loaded.signatures:
            raise UsageError(f"the SavedModel {self.path} has no {serving.SERVING_SIGNATURE} signature")
        self.signature = self.loaded.signatures[serving.SERVING_SIGNATURE]

    def __call__(self, images: list[np.ndarray]) -> list[Prediction]:
        """Classifies uint8 [28, 28, 1] images."""
        if not images:
            return []
        probabilities = self.signature(images=tf.constant(np.stack(images)))["probabilities"].numpy()
        predictions = []
        for p in probabilities:
            second, first = np.argsort(p)[-2:]
            predictions.append(Prediction(int(first), float(p[first]), int(second), float(p[second])))
        return predictions
