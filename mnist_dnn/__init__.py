"""mnist_dnn: deep neural networks for MNIST, the TensorFlow 2 / Keras 3 way."""

from mnist_dnn import startup

# First, before any module of the package imports TensorFlow: keep its C++ start-up lines
# (CUDA probing, CPU notices) off the terminal unless the user asked for them.
startup.import_tensorflow()
