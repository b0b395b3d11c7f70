"""The library behind the command-line tools: data, models, training, checkpoints, serving.

The tools (`python -m mnist_dnn.train`, `.evaluate`, ...) live one level up; they read flags
into a config and call into this package, which never reads flags.
"""
