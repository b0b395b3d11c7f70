"""Running an ONNX file of `export --format=onnx`: onnxruntime, from the optional onnx extra."""

import numpy as np

from mnist_dnn.lib.core import data
from mnist_dnn.lib.errors import UsageError, first_line

INSTALL_HINT = 'running ONNX models needs onnxruntime: pip install -e ".[onnx]" (or pip install onnxruntime)'
EXPORT_ONE = "export one with python -m mnist_dnn.export `format`=onnx"


class OnnxModel:
    """A `model.onnx`: uint8 images [N, 28, 28, 1] in, `probabilities` float32 [N, 10] and `classes` int64 [N] out."""

    def __init__(self, path: str):
        try:
            import onnxruntime
        except ImportError:
            raise UsageError(INSTALL_HINT) from None
        self.path = path
        try:
            self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            self(np.zeros((1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1), np.uint8))
        except Exception as e:  # onnxruntime's errors (InvalidProtobuf, InvalidArgument, ...) derive from Exception only
            raise UsageError(f"{path} is not an ONNX model of mnist_dnn ({first_line(e)}); {EXPORT_ONE}") from None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = ["probabilities", "classes"]
        return dict(zip(names, self.session.run(names, {"images": np.ascontiguousarray(images, dtype=np.uint8)})))
