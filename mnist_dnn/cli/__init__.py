"""The tools' shared start-up: the command line, presets and help, one-line errors.

Holds what every tool in `mnist_dnn/*.py` runs before and around its `main`. May import the
library (`mnist_dnn.lib` and its subpackages); never a tool.
"""
