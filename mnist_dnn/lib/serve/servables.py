"""Exported models as a server holds them: their signatures, and the newest version of a model folder.

A model folder holds numbered versions (`exports/mnist/1/`, `2/`, ...), each a SavedModel or a LiteRT, ONNX or Keras
file, as `export` writes them. Like TensorFlow Serving, the server serves the highest version that loads, and
`ModelVersions.refresh` switches to a newer one once it has loaded: requests already running finish on the model they
started with."""

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from mnist_dnn.lib import files
from mnist_dnn.lib.config import IMAGE_SIZE, NUM_CLASSES, SERVING_SIGNATURE
from mnist_dnn.lib.core import export_dir
from mnist_dnn.lib.serve import classifier
from mnist_dnn.lib.errors import DataError, Error, UsageError, first_line


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    dtype: tf.DType
    shape: tuple[int | None, ...]  # None: any size (the batch)


@dataclasses.dataclass(frozen=True)
class Signature:
    """One callable signature: named numpy inputs in, named numpy outputs out."""

    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Servable:
    """One loaded version of the model."""

    version: int
    path: str
    signatures: dict[str, Signature]
    owner: object = None  # what the signatures need alive (a loaded SavedModel reads its own variables)


def _info(spec: tf.TensorSpec) -> TensorInfo:
    return TensorInfo(spec.dtype, tuple(spec.shape.as_list()))


def _saved_model_signature(function) -> Signature:
    def run(inputs):
        return {name: value.numpy() for name, value in function(**{k: tf.constant(v) for k, v in inputs.items()}).items()}

    _, inputs = function.structured_input_signature
    return Signature({name: _info(spec) for name, spec in inputs.items()},
                     {name: _info(spec) for name, spec in function.structured_outputs.items()}, run)


def load_saved_model(path: str, version: int) -> Servable:
    try:
        loaded = tf.saved_model.load(path)
    except Exception as e:  # whatever damaged files raise (a truncated variables file: IndexError)
        raise DataError(f"cannot load the SavedModel {path}: {first_line(e)}") from None
    signatures = {name: _saved_model_signature(function) for name, function in loaded.signatures.items()}
    return Servable(version, path, signatures, owner=loaded)


def load_file_model(path: str, version: int, reader) -> Servable:
    """A LiteRT, ONNX or Keras file, read as `predict` reads it: `serving_default` alone."""
    try:
        model = reader(path)
    except Error:
        raise
    except Exception as e:  # whatever a damaged file makes its reader raise
        raise DataError(f"cannot load {path}: {first_line(e)}") from None
    inputs = {"images": TensorInfo(tf.uint8, (None, IMAGE_SIZE, IMAGE_SIZE, 1))}
    outputs = {"probabilities": TensorInfo(tf.float32, (None, NUM_CLASSES)), "classes": TensorInfo(tf.int64, (None,))}
    return Servable(version, path, {SERVING_SIGNATURE: Signature(inputs, outputs, lambda named: model(named["images"]))},
                    owner=model)


def load(path: str, version: int) -> Servable:
    """A SavedModel folder or a .tflite, .onnx or .keras file, loaded."""
    if os.path.isdir(path):
        return load_saved_model(path, version)
    return load_file_model(path, version, classifier.file_reader(path))


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
