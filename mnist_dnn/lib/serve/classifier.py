"""Classifying image files with an exported model (a SavedModel, a LiteRT, ONNX or Keras file), as a client would.

The image is brought to MNIST's form here (28x28 grayscale, light digit on a dark background) by the same TensorFlow ops
as the SavedModel's `serving_bytes` signature; the model's `serving_default` signature does the rest (scaling,
flattening)."""

import base64
import dataclasses
import json
import os
import threading
import zipfile

import keras
import numpy as np
import tensorflow as tf

from mnist_dnn.lib import files, native_output
from mnist_dnn.lib.config import BYTES_SIGNATURE, MAX_IMAGE_BYTES, SERVING_SIGNATURE
from mnist_dnn.lib.core import data, export_dir, exporting, images
from mnist_dnn.lib.errors import DataError, UsageError, first_line

# The LiteRT interpreter and onnxruntime are optional extras: imported by the reader that needs them.
LITERT_INSTALL_HINT = ('running LiteRT models needs the ai-edge-litert package: pip install -e ".[litert]" (or pip '
                       'install ai-edge-litert)')
ONNX_INSTALL_HINT = 'running ONNX models needs onnxruntime: pip install -e ".[onnx]" (or pip install onnxruntime)'


@dataclasses.dataclass(frozen=True)
class Prediction:
    digit: int
    probability: float
    runner_up: int
    runner_up_probability: float
    probabilities: tuple[float, ...]

    @classmethod
    def from_outputs(cls, digit: int, p: np.ndarray) -> "Prediction":
        """The model's class and probabilities (a quantized model's probabilities can tie: its class decides)."""
        runner_up = max((c for c in range(len(p)) if c != digit), key=lambda c: p[c])
        return cls(int(digit), float(p[digit]), runner_up, float(p[runner_up]), tuple(float(v) for v in p))


def read_file(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes` (`files.read_input`); DataError otherwise."""
    try:
        return files.read_input(path, max_bytes, to_raise_it="pass a smaller image, or raise `max_image_bytes`")
    except OSError as e:
        raise DataError(e.strerror or str(e)) from None


def check_image(contents: bytes) -> None:
    """Refuses an image larger than images.MAX_PIXELS before it is decoded."""
    height, width = (int(v) for v in images.image_size(tf.constant(contents)))
    if height * width > images.MAX_PIXELS:
        raise DataError(images.too_large_message(height, width))


@dataclasses.dataclass(frozen=True)
class ImageFile:
    path: str
    contents: bytes  # as encoded in the file
    pixels: np.ndarray  # as MNIST's: uint8 [28, 28, 1]


def read_image_file(path: str, max_bytes: int = MAX_IMAGE_BYTES) -> ImageFile:
    """A PNG, JPEG, BMP or GIF (its first frame) of up to images.MAX_PIXELS, with its MNIST pixels: uint8 [28, 28, 1]."""
    contents = read_file(path, max_bytes)
    with native_output.quiet_unless_logging():  # libjpeg says why it fails on descriptor 2: the line below says it
        try:
            check_image(contents)
            return ImageFile(path, contents, images.decode_digit(tf.constant(contents)).numpy())
        except tf.errors.InvalidArgumentError:
            pass
    raise DataError(f"not an image TensorFlow can decode ({images.FORMATS})")


class SavedModelSignature:
    """The `serving_default` signature of a SavedModel folder: uint8 [N, 28, 28, 1] in, its outputs as numpy."""

    def __init__(self, path: str):
        self.path = path
        try:
            # Keep the loaded object: its signatures read variables it owns.
            self.loaded = tf.saved_model.load(path)
        except Exception as e:  # whatever damaged files raise (a truncated variables file: IndexError)
            raise UsageError(f"cannot load the SavedModel {path}: {first_line(e)}") from None
        if SERVING_SIGNATURE not in self.loaded.signatures:
            raise UsageError(f"the SavedModel {path} has no {SERVING_SIGNATURE} signature")
        self.signature = self.loaded.signatures[SERVING_SIGNATURE]

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self.signature(images=tf.constant(pixels)).items()}


class KerasFile:
    """A `model.keras` of `export --format=keras` (float [N, 784] in, logits out), answering as `serving_default`."""

    def __init__(self, path: str):
        try:
            self.model = keras.models.load_model(path, compile=False)
            self(np.zeros((1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1), np.uint8))
        except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as e:
            raise UsageError(f"{path} is not a Keras model of mnist_dnn ({first_line(e)}); export one with "
                             "python -m mnist_dnn.export `format`=keras") from None

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        flat = exporting.ServingModule.flatten(data.to_float(tf.constant(pixels)))
        return {name: value.numpy() for name, value in exporting.outputs(self.model, flat).items()}


class LiteRTModel:
    """A `.tflite` file's `serving_default` signature: uint8 [N, 28, 28, 1] in, probabilities out.

    One interpreter, so calls take turns (it is not thread-safe)."""

    def __init__(self, path: str):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UsageError(LITERT_INSTALL_HINT) from None
        self.path, self.lock = path, threading.Lock()
        try:
            self.interpreter = Interpreter(model_path=path)
            self.runner = self.interpreter.get_signature_runner(SERVING_SIGNATURE)
            inputs = self.runner.get_input_details()
            if list(inputs) != ["images"] or inputs["images"]["dtype"] != np.uint8:
                raise ValueError(f"its {SERVING_SIGNATURE} signature does not take uint8 images")
            with native_output.quiet_unless_logging():  # the first run prints `INFO: Created ... XNNPACK delegate`
                self(np.zeros((1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1), np.uint8))
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"{path} is not a LiteRT model of mnist_dnn ({first_line(e)}); export one with "
                             "python -m mnist_dnn.export `format`=litert") from None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """`probabilities` float32 [N, 10] and `classes` int64 [N]."""
        with self.lock:
            return {k: np.array(v) for k, v in self.runner(images=np.ascontiguousarray(images, dtype=np.uint8)).items()}


class OnnxModel:
    """A `model.onnx`: uint8 images [N, 28, 28, 1] in, `probabilities` float32 [N, 10] and `classes` int64 [N] out."""

    def __init__(self, path: str):
        try:
            import onnxruntime
        except ImportError:
            raise UsageError(ONNX_INSTALL_HINT) from None
        self.path = path
        try:
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            self(np.zeros((1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1), np.uint8))
        except Exception as e:  # onnxruntime's errors (InvalidProtobuf, InvalidArgument, ...) derive from Exception only
            raise UsageError(f"{path} is not an ONNX model of mnist_dnn ({first_line(e)}); export one with "
                             "python -m mnist_dnn.export `format`=onnx") from None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = ["probabilities", "classes"]
        return dict(zip(names, self.session.run(names, {"images": np.ascontiguousarray(images, dtype=np.uint8)})))


def file_reader(path: str):
    """What reads a model file with this name: OnnxModel, KerasFile or (any other) LiteRTModel."""
    return {".onnx": OnnxModel, ".keras": KerasFile}.get(os.path.splitext(path)[1], LiteRTModel)


class Classifier:
    """An exported model: a SavedModel, a .tflite, .onnx or .keras file, or the latest version in a model folder."""

    def __init__(self, model_dir: str):
        self.path = export_dir.resolve_model(model_dir)
        self.model = SavedModelSignature(self.path) if os.path.isdir(self.path) else file_reader(self.path)(self.path)

    def __call__(self, pixels) -> list[Prediction]:
        """Classifies uint8 images 0..255, [28, 28, 1] or [28, 28] each: a list of them, or a numpy batch."""
        if len(pixels) == 0:
            return []
        batch = np.stack(pixels)
        outputs = self.model(batch[..., np.newaxis] if batch.ndim == 3 else batch)
        return [Prediction.from_outputs(c, p) for c, p in zip(outputs["classes"], outputs["probabilities"])]


# --- TensorFlow Serving's REST API --------------------------------------------------------


def rest_request(signature: str, files: list[ImageFile]) -> str:
    """The JSON body of a `/v1/models/NAME:predict` request for these image files (row format). `serving_bytes`: each
    file's bytes as TensorFlow Serving's binary value, {"b64": base64}. `serving_default`: each file's MNIST pixels,
    28x28x1 nested lists."""
    if signature == BYTES_SIGNATURE:
        instances = [{"b64": base64.b64encode(file.contents).decode("ascii")} for file in files]
    elif signature == SERVING_SIGNATURE:
        instances = [file.pixels.tolist() for file in files]
    else:
        raise UsageError(f"`rest_signature` must be {BYTES_SIGNATURE} or {SERVING_SIGNATURE}, got {signature!r}")
    return json.dumps({"signature_name": signature, "instances": instances}, separators=(",", ":")) + "\n"
