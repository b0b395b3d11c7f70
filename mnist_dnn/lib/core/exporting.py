"""Writing a model for serving: the SavedModel's signatures, LiteRT files converted from them, a Keras or ONNX model.

Where a version goes and how it is written atomically is `export_dir`'s business. The LiteRT converter is TensorFlow's
own (`tf.lite.TFLiteConverter`), the ONNX one Keras' (tf2onnx inside); running an exported file is serving's."""

import os
import pathlib
import warnings

import keras
import numpy as np
import tensorflow as tf

from mnist_dnn.lib import processes
from mnist_dnn.lib.core import data, export_dir as layout, images, models
from mnist_dnn.lib.config import BYTES_SIGNATURE, FLAT_SIGNATURE, QUANTIZATIONS, REPRESENTATIVE_IMAGES, SERVING_SIGNATURE
from mnist_dnn.lib.errors import UsageError

IMAGES = tf.TensorSpec([None, data.IMAGE_SIZE, data.IMAGE_SIZE, 1], tf.uint8, name="images")
FLAT_IMAGES = tf.TensorSpec([None, data.NUM_PIXELS], tf.float32, name="images")
ONNX_INSTALL_HINT = 'ONNX exports need the onnx extra: pip install -e ".[onnx]" (or pip install tf2onnx onnx onnxruntime)'
INVALID_PIXELS = f"{FLAT_SIGNATURE} takes pixels from 0 to 1; some are NaN, infinite or outside that range"


def outputs(model: keras.Model, images: tf.Tensor) -> dict:
    """What every export answers for float [N, 784] pixels in [0, 1]: probabilities and classes."""
    logits = model(images, training=False)
    return {"probabilities": tf.nn.softmax(logits), "classes": tf.argmax(logits, axis=1, output_type=tf.int64)}


class ServingModule(tf.Module):
    """The model with its serving signatures: preprocessing happens inside the graph."""

    def __init__(self, model: keras.Model):
        super().__init__(name="mnist_serving")
        self.model = model
        # Keras 3 variables wrap a tf.Variable that is not tracked through the model: the LiteRT
        # converter cannot freeze the weights without it (the interpreter reads no value), and a
        # SavedModel of this module would fail in TF1-style loaders with "Could not find variable".
        self.tf_variables = [variable.value for variable in model.variables]

    # A signature function does not check its inputs against the declared shape (a [2, 14, 28, 1]
    # batch came out as one answer): tf.ensure_shape fails the call instead.
    @tf.function(input_signature=[IMAGES])
    def serve_images(self, images):
        """Raw pixels 0..255, as MNIST stores them: scaled and flattened as in training."""
        images = tf.ensure_shape(images, IMAGES.shape)
        return outputs(self.model, self.flatten(data.to_float(images)))

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
            return outputs(self.model, tf.identity(images))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_bytes(self, image_bytes):
        """Encoded PNG, JPEG, BMP or GIF files, decoded and brought to MNIST's form as `predict` does."""
        return self.serve_images(images.decode_digits(image_bytes))

    def signatures(self) -> dict:
        return {SERVING_SIGNATURE: self.serve_images, FLAT_SIGNATURE: self.serve_flat, BYTES_SIGNATURE: self.serve_bytes}


def export_model(model: keras.Model, export_dir: str, version: int | None = None) -> str:
    """Writes the model as SavedModel version `version` (default: the next free) of `export_dir`. Returns the version
    folder."""
    module = ServingModule(model)  # alive until written: its tf.function methods hold it weakly
    archive = keras.export.ExportArchive()  # saves the tf.Variables the signatures read, once (see docs/serving.md)
    for name, function in module.signatures().items():
        function.get_concrete_function()  # traced, the archive takes it as it is
        archive.add_endpoint(name, function)
    return layout.write_version(export_dir, version, "saved_model", lambda folder: archive.write_out(folder, verbose=False))


def export_litert(model: keras.Model, export_dir: str, version: int | None = None, quantize: str = "none",
                  representative: np.ndarray | None = None) -> str:
    """Writes the model as a LiteRT file in version `version` of `export_dir`; returns the file's path.
    `quantize="int8"`: full-integer quantization calibrated on `representative` uint8 images."""
    layout.version_path(export_dir, version, "litert")  # refuse before converting
    flatbuffer = convert(ServingModule(model), quantize, representative)
    return _write_file(export_dir, version, "litert", layout.LITERT_FILE_NAMES[quantize],
                       lambda path: pathlib.Path(path).write_bytes(flatbuffer))


def export_keras(model: keras.Model, export_dir: str, version: int | None = None) -> str:
    """Writes the model as `model.keras` in version `version` of `export_dir`; returns the file's path. In Keras' own
    layers only, so that `keras.models.load_model` reads it without this package."""
    return _write_file(export_dir, version, "keras", layout.KERAS_FILE_NAME, keras_layers_only(model).save)


class ImagesModel(keras.Model):
    """`serving_default` as a Keras model, for Keras' ONNX export: uint8 [N, 28, 28, 1] in. tf.argmax, not
    keras.ops.argmax, whose handling of -0.0 (Bitcast, BitwiseAnd) tf2onnx cannot convert."""

    def __init__(self, model: keras.Model):
        super().__init__(name="mnist_serving")
        self.model = model

    def call(self, images):
        return outputs(self.model, ServingModule.flatten(data.to_float(images)))


def export_onnx(model: keras.Model, export_dir: str, version: int | None = None) -> str:
    """Writes the model as `model.onnx` (`serving_default`'s inputs and outputs) in version `version` of
    `export_dir`, by Keras' ONNX export; returns the file's path."""
    layout.version_path(export_dir, version, "onnx")  # refuse before converting
    try:
        import tf2onnx  # noqa: F401 (Keras' ONNX export runs it)
    except ImportError:
        raise UsageError(ONNX_INSTALL_HINT) from None
    served = ImagesModel(model)
    served(np.zeros((1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1), np.uint8))  # Keras exports built models only
    with warnings.catch_warnings():  # Keras' tf2onnx patch warns on numpy 2
        warnings.simplefilter("ignore", FutureWarning)
        return _write_file(export_dir, version, "onnx", layout.ONNX_FILE_NAME, lambda path: served.export(
            path, format="onnx", verbose=False, input_signature=[IMAGES]))


def _write_file(export_dir: str, version: int | None, export_format: str, name: str, write) -> str:
    """A new version holding one file, `name`, written by `write(path)`; returns the file's path."""
    def write_folder(folder):
        os.makedirs(folder)
        write(os.path.join(folder, name))

    return os.path.join(layout.write_version(export_dir, version, export_format, write_folder), name)


def keras_layers_only(model: keras.Model) -> keras.Model:
    """The same inference (the same weights) in Keras' built-in layers: the course's DNN as Dense
    layers, this package's Dropout (an identity at inference) as Keras' own."""
    if isinstance(model, models.RawDNN):
        last = model.num_layers
        twin = keras.Sequential([keras.Input((data.NUM_PIXELS,))] + [
            keras.layers.Dense(getattr(model, f"b{i}").shape[0], activation=None if i == last else "relu")
            for i in range(1, last + 1)], name=model.name)
        twin.set_weights([getattr(model, f"{kind}{i}").numpy() for i in range(1, last + 1) for kind in "wb"])
        return twin
    twin = keras.models.clone_model(model, clone_function=lambda layer: keras.layers.Dropout(layer.rate, name=layer.name)
                                    if isinstance(layer, models.Dropout) else layer.__class__.from_config(layer.get_config()))
    twin.set_weights(model.get_weights())
    return twin


# --- LiteRT conversion --------------------------------------------------------------------


def _converter(serving_module: ServingModule, function) -> tf.lite.TFLiteConverter:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], serving_module)
    converter.exclude_conversion_metadata = True  # the converter's options: not needed to run the model
    return converter


def convert_int8(serving_module: ServingModule, representative: np.ndarray) -> bytes:
    """Full-integer post-training quantization, calibrated on `representative` (uint8 [N, 28, 28, 1]). Converted from a
    float signature taking pixels in [0, 1] whose input then becomes uint8 with scale 1/255 and zero point 0: raw pixels
    0..255, as `serving_default` takes, with no float ops before the first layer. The calibration images include black
    and white pixels, so the input range is exactly [0, 1]."""
    pinned = np.zeros((1,) + representative.shape[1:], np.uint8)
    pinned.flat[0] = 255  # both ends of the range, whatever the calibration images hold

    def batches():
        for image in np.concatenate([pinned, representative]):
            yield [image[np.newaxis].astype(np.float32) / 255.0]

    scaled = tf.function(lambda images: outputs(serving_module.model, serving_module.flatten(images)),
                         input_signature=[tf.TensorSpec(IMAGES.shape, tf.float32, name="images")])
    converter = _converter(serving_module, scaled)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = batches
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    with processes.quiet_unless_logging():  # the quantizer prints `fully_quantize: 0, ...`
        return converter.convert()


def representative_images(train_images: tf.Tensor, count: int = REPRESENTATIVE_IMAGES, seed: int = 0) -> np.ndarray:
    """`count` training images (uint8 [N, 784]) drawn without replacement, as uint8 [count, 28, 28, 1]."""
    images = np.asarray(train_images)
    chosen = np.random.default_rng(seed).choice(len(images), size=min(count, len(images)), replace=False)
    return images[np.sort(chosen)].reshape(-1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1)


def convert(serving_module: ServingModule, quantize: str = "none", representative: np.ndarray | None = None) -> bytes:
    """The model as a LiteRT flatbuffer: float32 (`quantize="none"`: `serving_default` as it is, uint8 images in,
    float32 arithmetic) or int8 (needs `representative`)."""
    if quantize == "none":
        return _converter(serving_module, serving_module.serve_images).convert()
    if quantize == "int8":
        return convert_int8(serving_module, representative)
    raise UsageError(f"`quantize` must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
