"""mnist_dnn: deep neural networks for MNIST, the TensorFlow 2 / Keras 3 way."""

import os

# Keep TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) off the terminal,
# unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
