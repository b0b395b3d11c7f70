"""LiteRT (formerly TensorFlow Lite) models: converting the serving signature, running a file.

The converter is TensorFlow's own (`tf.lite.TFLiteConverter`); running a model needs the
`ai-edge-litert` interpreter, an optional extra.
"""

import numpy as np
import tensorflow as tf

from mnist_dnn.lib import native_output
from mnist_dnn.lib.core import data
from mnist_dnn.lib.config import QUANTIZATIONS, REPRESENTATIVE_IMAGES  # noqa: F401 (part of this module's API)
from mnist_dnn.lib.errors import UsageError, first_line

SIGNATURE = "serving_default"
FILE_NAMES = {"none": "model.tflite", "int8": "model_int8.tflite"}
EXTENSION = ".tflite"
INSTALL_HINT = 'running LiteRT models needs the ai-edge-litert package: pip install -e ".[litert]" (or pip install ai-edge-litert)'


def _converter(serving_module: tf.Module, function) -> tf.lite.TFLiteConverter:
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], serving_module)
    converter.exclude_conversion_metadata = True  # the converter's options: not needed to run the model
    return converter


def convert_float(serving_module: tf.Module) -> bytes:
    """The `serving_default` signature as is: uint8 images in, float32 arithmetic."""
    return _converter(serving_module, serving_module.serve_images).convert()


def convert_int8(serving_module: tf.Module, representative: np.ndarray) -> bytes:
    """Full-integer post-training quantization, calibrated on `representative` (uint8 [N, 28, 28, 1]).

    Converted from a float signature taking pixels in [0, 1] whose input then becomes uint8
    with scale 1/255 and zero point 0: raw pixels 0..255, as `serving_default` takes, with no
    float ops before the first layer. The calibration images include black and white pixels,
    so the input range is exactly [0, 1].
    """
    pinned = np.zeros((1,) + representative.shape[1:], np.uint8)
    pinned.flat[0] = 255  # both ends of the range, whatever the calibration images hold

    def batches():
        for image in np.concatenate([pinned, representative]):
            yield [image[np.newaxis].astype(np.float32) / 255.0]

    pixels = tf.TensorSpec([None, data.IMAGE_SIZE, data.IMAGE_SIZE, 1], tf.float32, name="images")
    scaled = tf.function(lambda images: serving_module.outputs(serving_module.flatten(images)),
                         input_signature=[pixels])
    converter = _converter(serving_module, scaled)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = batches
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    with native_output.quiet_unless_logging():  # the quantizer prints `fully_quantize: 0, ...`
        return converter.convert()


def representative_images(train_images: tf.Tensor, count: int = REPRESENTATIVE_IMAGES, seed: int = 0) -> np.ndarray:
    """`count` training images (uint8 [N, 784]) drawn without replacement, as uint8 [count, 28, 28, 1]."""
    images = np.asarray(train_images)
    chosen = np.random.default_rng(seed).choice(len(images), size=min(count, len(images)), replace=False)
    return images[np.sort(chosen)].reshape(-1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1)


def convert(serving_module: tf.Module, quantize: str = "none", representative: np.ndarray | None = None) -> bytes:
    """The model as a LiteRT flatbuffer: float32 (`quantize="none"`) or int8 (needs `representative`)."""
    if quantize == "none":
        return convert_float(serving_module)
    if quantize == "int8":
        return convert_int8(serving_module, representative)
    raise UsageError(f"`quantize` must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")


def interpreter_class():
    """`ai_edge_litert.interpreter.Interpreter`, or one line on how to install it."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return Interpreter


class LiteRTModel:
    """A `.tflite` file's `serving_default` signature: uint8 [N, 28, 28, 1] in, probabilities out."""

    def __init__(self, path: str):
        interpreter_type = interpreter_class()
        self.path = path
        try:
            self.interpreter = interpreter_type(model_path=path)
            self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"{path} is not a LiteRT model of mnist_dnn ({first_line(e)}); export one with "
                             "python -m mnist_dnn.export `format`=litert") from None
        inputs = self.runner.get_input_details()
        if list(inputs) != ["images"] or inputs["images"]["dtype"] != np.uint8:
            raise UsageError(f"{path}: its {SIGNATURE} signature does not take uint8 images; "
                             "export one with python -m mnist_dnn.export `format`=litert")
        try:
            with native_output.quiet_unless_logging():  # the first run prints `INFO: Created ... XNNPACK delegate`
                self(np.zeros((1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1), np.uint8))
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"{path} is not a LiteRT model of mnist_dnn ({first_line(e)}); export one with "
                             "python -m mnist_dnn.export `format`=litert") from None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """`probabilities` float32 [N, 10] and `classes` int64 [N]."""
        return self.runner(images=np.ascontiguousarray(images, dtype=np.uint8))

    def input_quantization(self) -> tuple[float, int]:
        """(scale, zero point) of the input: (0.0, 0) when not quantized."""
        return tuple(self.runner.get_input_details()["images"]["quantization"])
