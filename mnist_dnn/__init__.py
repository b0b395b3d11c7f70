"""mnist_dnn: deep neural networks for MNIST, the TensorFlow 2 / Keras 3 way.

The Python API (docs/python.md), without flags:

    import mnist_dnn
    config = mnist_dnn.preset("cnn_fast", ckpt_dir="runs/cnn")
    mnist_dnn.train(config)
    print(mnist_dnn.evaluate("runs/cnn")["test"]["accuracy"])
    classify = mnist_dnn.load_exported(mnist_dnn.export("runs/cnn", "exports/cnn"))

`mnist_dnn.train`, `.evaluate` and `.export` are these functions; the tools of the same names are the
modules run with `python -m` (in a program: `import mnist_dnn.train as train_tool`). The names load lazily: importing the package, or any module of it, costs no TensorFlow import and
leaves the process as it was (the tools' quiet start-up runs in `cli.app.run`, when a tool starts).
"""

import importlib

_API = {"preset": "mnist_dnn.api", "config": "mnist_dnn.api", "train": "mnist_dnn.api", "evaluate": "mnist_dnn.api",
        "export": "mnist_dnn.api", "load_exported": "mnist_dnn.api", "use_onednn": "mnist_dnn.api",
        "TrainConfig": "mnist_dnn.lib.config", "Classifier": "mnist_dnn.lib.serve.classifier",
        "Error": "mnist_dnn.lib.errors", "read_scalars": "mnist_dnn.lib.experiments.reports"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mnist_dnn' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__():
    return sorted([*globals(), *__all__])
