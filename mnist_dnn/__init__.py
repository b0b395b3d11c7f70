"""mnist_dnn: deep neural networks for MNIST, the TensorFlow 2 / Keras 3 way.

Importing the package, or any module of it, leaves the process as it was: the tools' quiet
start-up (`startup.quiet_tensorflow`) runs in `cli.run`, when a tool starts.
"""
