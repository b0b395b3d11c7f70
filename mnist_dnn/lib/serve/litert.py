"""Running a LiteRT (formerly TensorFlow Lite) file: the `ai-edge-litert` interpreter, an optional extra."""

import threading

import numpy as np

from mnist_dnn.lib import native_output
from mnist_dnn.lib.config import SERVING_SIGNATURE
from mnist_dnn.lib.core import data
from mnist_dnn.lib.errors import UsageError, first_line

INSTALL_HINT = 'running LiteRT models needs the ai-edge-litert package: pip install -e ".[litert]" (or pip install ai-edge-litert)'


class LiteRTModel:
    """A `.tflite` file's `serving_default` signature: uint8 [N, 28, 28, 1] in, probabilities out. One interpreter, so
    calls take turns (it is not thread-safe)."""

    def __init__(self, path: str):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise UsageError(INSTALL_HINT) from None
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
