"""Exported models loaded (a SavedModel, a LiteRT, ONNX or Keras file): their signatures, the newest version of a
model folder, and a classifier of image files, as a client would use them.

A model folder holds numbered versions (`exports/mnist/1/`, `2/`, ...), each a SavedModel or a model file, as `export`
writes them. Like TensorFlow Serving, the server serves the highest version that loads, and `ModelVersions.refresh`
switches to a newer one once it has loaded: requests already running finish on the model they started with.

An image file is brought to MNIST's form here (28x28 grayscale, light digit on a dark background) by the same
TensorFlow ops as the SavedModel's `serving_bytes` signature; the model's `serving_default` signature does the rest
(scaling, flattening)."""

import base64
import dataclasses
import json
import os
import threading
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from mnist_dnn.lib import files, processes
from mnist_dnn.lib.config import BYTES_SIGNATURE, IMAGE_SIZE, MAX_IMAGE_BYTES, NUM_CLASSES, SERVING_SIGNATURE
from mnist_dnn.lib.core import export_dir, exporting, images
from mnist_dnn.lib.errors import DataError, Error, UsageError, first_line

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
    try:
        contents = files.read_input(path, max_bytes, to_raise_it="pass a smaller image, or raise `max_image_bytes`")
    except OSError as e:  # not a regular file, or larger than `max_bytes`
        raise DataError(e.strerror or str(e)) from None
    with processes.quiet_unless_logging():  # libjpeg says why it fails on descriptor 2: the line below says it
        try:
            check_image(contents)
            return ImageFile(path, contents, images.decode_digit(tf.constant(contents)).numpy())
        except tf.errors.InvalidArgumentError:
            pass
    raise DataError(f"not an image TensorFlow can decode ({images.FORMATS})")


class KerasFile:
    """A `model.keras` of `export --format=keras` (float [N, 784] in, logits out), answering as `serving_default`."""

    kind, export_format = "a Keras model", "keras"

    def __init__(self, path: str):
        self.model = exporting.ImagesModel(keras.models.load_model(path, compile=False))

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in self.model(tf.constant(pixels)).items()}


class LiteRTModel:
    """A `.tflite` file's `serving_default` signature: uint8 [N, 28, 28, 1] in, probabilities out.

    One interpreter, so calls take turns (it is not thread-safe)."""

    kind, export_format = "a LiteRT model", "litert"

    def __init__(self, path: str):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UsageError(LITERT_INSTALL_HINT) from None
        self.lock, self.interpreter = threading.Lock(), Interpreter(model_path=path)
        self.runner = self.interpreter.get_signature_runner(SERVING_SIGNATURE)
        inputs = self.runner.get_input_details()
        if list(inputs) != ["images"] or inputs["images"]["dtype"] != np.uint8:
            raise ValueError(f"its {SERVING_SIGNATURE} signature does not take uint8 images")

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """`probabilities` float32 [N, 10] and `classes` int64 [N]."""
        with self.lock:
            return {k: np.array(v) for k, v in self.runner(images=np.ascontiguousarray(images, dtype=np.uint8)).items()}


class OnnxModel:
    """A `model.onnx`: uint8 images [N, 28, 28, 1] in, `probabilities` float32 [N, 10] and `classes` int64 [N] out."""

    kind, export_format = "an ONNX model", "onnx"

    def __init__(self, path: str):
        try:
            import onnxruntime
        except ImportError:
            raise UsageError(ONNX_INSTALL_HINT) from None
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = ["probabilities", "classes"]
        return dict(zip(names, self.session.run(names, {"images": np.ascontiguousarray(images, dtype=np.uint8)})))


def file_reader(path: str):
    return {".onnx": OnnxModel, ".keras": KerasFile}.get(os.path.splitext(path)[1], LiteRTModel)


@dataclasses.dataclass(frozen=True)
class Signature:
    """One callable signature: named numpy inputs in, named numpy outputs out (their shapes: None, any size)."""

    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version of the model."""

    version: int
    path: str
    signatures: dict[str, Signature]
    owner: object = None  # what the signatures need alive (a loaded SavedModel reads its own variables)


def _saved_model_signature(function) -> Signature:
    def run(inputs):
        return {name: value.numpy() for name, value in function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    _, inputs = function.structured_input_signature
    return Signature(inputs, function.structured_outputs, run)


def load(path: str, version: int, error: type[Error] = DataError) -> Servable:
    """A SavedModel folder, or a .tflite, .onnx or .keras file read as `predict` reads it (`serving_default` alone);
    `error` is what a SavedModel that does not load raises (predict's: UsageError)."""
    if os.path.isdir(path):
        try:
            loaded = tf.saved_model.load(path)
        except Exception as e:  # whatever damaged files raise (a truncated variables file: IndexError)
            raise error(f"cannot load the SavedModel {path}: {first_line(e)}") from None
        signatures = {name: _saved_model_signature(function) for name, function in loaded.signatures.items()}
        return Servable(version, path, signatures, owner=loaded)
    reader = file_reader(path)
    try:
        model = reader(path)
        with processes.quiet_unless_logging():  # LiteRT's first run prints `INFO: Created ... XNNPACK delegate`
            model(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8))  # a damaged file may open, then fail here
    except Error:
        raise
    except Exception as e:  # whatever a damaged file makes its reader raise (onnxruntime's errors: Exception only)
        raise UsageError(f"{path} is not {reader.kind} of mnist_dnn ({first_line(e)}); export one with "
                         f"python -m mnist_dnn.export `format`={reader.export_format}") from None
    inputs = {"images": tf.TensorSpec((None, IMAGE_SIZE, IMAGE_SIZE, 1), tf.uint8)}
    outputs = {"probabilities": tf.TensorSpec((None, NUM_CLASSES), tf.float32),
               "classes": tf.TensorSpec((None,), tf.int64)}
    return Servable(version, path, {SERVING_SIGNATURE: Signature(inputs, outputs, lambda named: model(named["images"]))},
                    owner=model)


class Classifier:
    """An exported model: a SavedModel, a .tflite, .onnx or .keras file, or the latest version in a model folder."""

    def __init__(self, model_dir: str):
        self.path = export_dir.resolve_model(model_dir)
        self.servable = load(self.path, 1, UsageError)
        if SERVING_SIGNATURE not in self.servable.signatures:
            raise UsageError(f"the SavedModel {self.path} has no {SERVING_SIGNATURE} signature")

    def model(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Its `serving_default` signature: uint8 [N, 28, 28, 1] in, its outputs as numpy."""
        return self.servable.signatures[SERVING_SIGNATURE].run({"images": pixels})

    def __call__(self, pixels) -> list[Prediction]:
        """Classifies uint8 images 0..255, [28, 28, 1] or [28, 28] each: a list of them, or a numpy batch."""
        if len(pixels) == 0:
            return []
        batch = np.stack(pixels)
        outputs = self.model(batch[..., np.newaxis] if batch.ndim == 3 else batch)
        return [Prediction.from_outputs(c, p) for c, p in zip(outputs["classes"], outputs["probabilities"])]


def _loadable(folder: str) -> str | None:
    """The SavedModel folder or the one model file in `folder`; None when it holds neither (yet)."""
    try:
        return export_dir.model_in(folder)  # the rule export and predict use
    except UsageError:
        return None  # more than one model file: not a version export writes


def _fingerprint(path: str) -> tuple:
    """Names, sizes and times of the files below `path`: a version that failed is retried when they change."""
    walked = (os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
    stats = [(p, os.stat(p)) for p in ([path] if os.path.isfile(path) else walked)]
    return tuple(sorted((p, stat.st_size, stat.st_mtime_ns) for p, stat in stats))


class ModelVersions:
    """The servable of `model_dir`: the highest numbered version that loads, or a single model. `model_dir` is a folder
    of numbered versions (watched by `refresh`), or one SavedModel folder or .tflite file (served as it is, as version 1
    unless its folder is numbered)."""

    def __init__(self, model_dir: str, say: Callable[[str], None] = lambda line: None):
        self.model_dir = model_dir
        self.say = say
        self.failed: dict[int, tuple[tuple, str]] = {}  # version -> (fingerprint of what failed to load, error)
        self.watched = not (os.path.isfile(model_dir) or (os.path.isdir(model_dir) and _loadable(model_dir)))
        self.current = self._first()

    def _first(self) -> Servable:
        if not self.watched:
            path = self.model_dir if os.path.isfile(self.model_dir) else _loadable(self.model_dir)
            folder = os.path.basename(os.path.normpath(self.model_dir if os.path.isdir(path) else os.path.dirname(path)))
            return load(path, int(folder) if folder.isdigit() else 1)
        files.check_link("model_dir", self.model_dir, "point it at a model folder")
        if not os.path.exists(self.model_dir):
            raise DataError(f"{self.model_dir} does not exist; export a model there with python -m mnist_dnn.export")
        candidates = self.candidates()
        if not candidates:
            raise DataError(f"{self.model_dir} holds no model: neither a SavedModel, a .tflite, .onnx or .keras file nor "
                            "numbered version folders holding one; export one with python -m mnist_dnn.export")
        version, path = candidates[0]
        return load(path, version)  # the newest must load at start-up: its error is the one to see

    def candidates(self) -> list[tuple[int, str]]:
        """(version, model path) of the complete versions, newest first."""
        versions = reversed(export_dir.versions(self.model_dir))
        found = [(v, _loadable(os.path.join(self.model_dir, str(v)))) for v in versions]
        return [(version, path) for version, path in found if path]

    def refresh(self) -> bool:
        """Loads and switches to the newest version if it is not the one served; True if it switched. A version that
        fails to load is said once and kept in `failed` until its files change; older ones are tried in the same pass."""
        if not self.watched:
            return False
        for version, path in self.candidates():
            if version == self.current.version:
                return False
            fingerprint = _fingerprint(path)
            if self.failed.get(version, (None,))[0] == fingerprint:
                continue  # still the files that failed: try an older version
            try:
                servable = load(path, version)
            except Error as e:
                self.failed = {**self.failed, version: (fingerprint, str(e))}  # replaced whole: status reads it
                self.say(f"version {version} failed to load (marked failed, tried again once its files change), "
                         f"still serving version {self.current.version}: {e}")
                continue
            self.say(f"serving version {version} ({path}) instead of version {self.current.version}")
            self.failed = {v: failure for v, failure in self.failed.items() if v != version}
            self.current = servable
            return True
        return False


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
