"""The models, chosen by name. Each maps a float batch [B, 784] to logits [B, 10]. The convolutional ones reshape that
batch to images [B, 28, 28, 1] themselves, so every boundary (data pipelines, checkpoints, serving signatures, LiteRT)
is the same for all models."""

import itertools

import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # tf.function's own test for an XLA program

from mnist_dnn.lib.config import ALIASES, DEFAULT_CONV_FILTERS, DEFAULT_HIDDEN_UNITS, MODELS, ModelConfig  # noqa: F401 (the registry)
from mnist_dnn.lib.config import IMAGE_SIZE, NUM_CLASSES, NUM_PIXELS, conv_stages
from mnist_dnn.lib.core import threefry


@keras.saving.register_keras_serializable("mnist_dnn")  # model.save() and load_model, once imported
class RawDNN(keras.Model):
    """The course's DNN built from explicit weights: w1 784x128, b1, w2 128x10, b2. Weights come from `add_weight` and
    are kept as named attributes: Keras 3 neither trains a bare `tf.Variable` attribute nor checkpoints variables held
    in a list."""

    def __init__(self, hidden_units=(128,), seed=0, name="raw", **kwargs):
        super().__init__(name=name, **kwargs)
        self.hidden_units, self.seed = tuple(hidden_units), seed
        sizes = [NUM_PIXELS, *hidden_units, NUM_CLASSES]
        self.num_layers = len(sizes) - 1
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            init = keras.initializers.GlorotUniform(seed=seed + i)
            setattr(self, f"w{i}", self.add_weight(shape=(fan_in, fan_out), initializer=init, name=f"w{i}"))
            setattr(self, f"b{i}", self.add_weight(shape=(fan_out,), initializer="zeros", name=f"b{i}"))

    def call(self, inputs):
        x = inputs
        for i in range(1, self.num_layers + 1):
            x = tf.matmul(x, getattr(self, f"w{i}")) + getattr(self, f"b{i}")
            if i < self.num_layers:
                x = tf.nn.relu(x)
        return x

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_units": self.hidden_units, "seed": self.seed}


def dropout(inputs, rate: float, seed):
    """`inputs` with each element zeroed with probability `rate`, the rest scaled to keep the mean. A stateless function
    of `seed` (int32 [2]) drawing 16 bits per element, two from each 32-bit word (so `rate` is rounded to a multiple of
    1/65536). Inside an XLA program the words come from `threefry.random_bits`, which XLA fuses into one vectorized
    loop; elsewhere (the convnet's graph loop on a CPU) from TensorFlow's Philox kernel, one op where Threefry's 100
    elementwise ops would each cost a pass over memory."""
    threshold = min(round(rate * 2**16), 2**16 - 1)
    size = tf.size(inputs)
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        words = threefry.random_bits([(size + 1) // 2], seed)
    else:
        words = tf.random.stateless_uniform([(size + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32,
                                            alg="philox")
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
    keep = tf.reshape(halves >= tf.constant(threshold, tf.uint16), tf.shape(inputs))
    return inputs * (tf.cast(keep, inputs.dtype) * (2**16 / (2**16 - threshold)))


@keras.saving.register_keras_serializable("mnist_dnn")  # model.save() and load_model, once imported
class Dropout(keras.layers.Dropout):
    """keras.layers.Dropout drawing its masks with `dropout` above: in XLA on a CPU, Keras' own generator made
    a step about ten times slower, TensorFlow's Philox a quarter (docs/speed.md)."""

    def call(self, inputs, training=False):
        if not (training and self.rate > 0):
            return inputs
        if self.noise_shape is not None:
            raise ValueError("noise_shape is not supported by this Dropout")
        # As Keras does: its seed variable is int64, TensorFlow's stateless ops want int32 in XLA.
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), tf.int32.max - 1), tf.int32)
        return dropout(inputs, self.rate, seed)


def dense_dnn(hidden_units=(60, 30), seed=0, dropout=0.0) -> keras.Model:
    """The course's layer-API DNN: Dense layers with ReLU, optional dropout."""
    return keras.Sequential([keras.Input((NUM_PIXELS,)), *_dense_layers(hidden_units, seed, dropout, 1)], name="dense")


def logistic_regression(seed=0) -> keras.Model:
    """Softmax regression: one affine map from pixels to logits."""
    return keras.Sequential([keras.Input((NUM_PIXELS,)), *_dense_layers((), seed, 0.0, 1)], name="logistic")


def _glorot(seed: int):
    return keras.initializers.GlorotUniform(seed=seed)


def _images() -> list:
    """The input layers of a convolutional model: flat pixels [B, 784] in, images [B, 28, 28, 1] out."""
    return [keras.Input((NUM_PIXELS,)), keras.layers.Reshape((IMAGE_SIZE, IMAGE_SIZE, 1))]


def _dense_layers(hidden_units, seed: int, dropout: float, first_layer: int) -> list:
    """Dense ReLU layers (each followed by dropout if any), then the logits; layer i's initializer has seed + i."""
    layers = []
    for i, units in enumerate(hidden_units, start=first_layer):
        layers.append(keras.layers.Dense(units, activation="relu", kernel_initializer=_glorot(seed + i)))
        if dropout:
            layers.append(Dropout(dropout, seed=seed + 100 + i))
    layers.append(keras.layers.Dense(NUM_CLASSES, kernel_initializer=_glorot(seed + first_layer + len(hidden_units))))
    return layers


def cnn(conv_filters=(32, 64), hidden_units=(128,), seed=0, dropout=0.0, pool_every=0) -> keras.Model:
    """The convnet of PyTorch's MNIST example by default: 3x3 convolutions with ReLU, a 2x2 max-pool, dropout, Dense
    ReLU layers with dropout, the logits. `pool_every=N` puts a 2x2 max-pool after every N convolutions (and after the
    last) instead."""
    layers, conv_seeds = _images(), itertools.count(seed + 1)
    for stage in conv_stages(conv_filters, pool_every):
        for filters in stage:
            init = _glorot(next(conv_seeds))
            layers.append(keras.layers.Conv2D(filters, 3, activation="relu", kernel_initializer=init))
        layers.append(keras.layers.MaxPooling2D(2))
    if dropout:
        layers.append(Dropout(dropout, seed=seed + 100))
    layers += [keras.layers.Flatten(), *_dense_layers(hidden_units, seed, dropout, first_layer=len(conv_filters) + 1)]
    return keras.Sequential(layers, name="cnn")


def lenet5(seed=0) -> keras.Model:
    """LeNet-5 (LeCun et al., 1998) as usually written today: ReLU and max-pooling instead of
    scaled tanh and trainable subsampling; its first convolution pads 28x28 to keep LeNet's 32x32 geometry."""
    (first, second), hidden_units = DEFAULT_CONV_FILTERS["lenet5"], DEFAULT_HIDDEN_UNITS["lenet5"]
    layers = [*_images(),
              keras.layers.Conv2D(first, 5, padding="same", activation="relu", kernel_initializer=_glorot(seed + 1)),
              keras.layers.MaxPooling2D(2),
              keras.layers.Conv2D(second, 5, activation="relu", kernel_initializer=_glorot(seed + 2)),
              keras.layers.MaxPooling2D(2)]
    layers += [keras.layers.Flatten(), *_dense_layers(hidden_units, seed, 0.0, first_layer=3)]
    return keras.Sequential(layers, name="lenet5")


def make_config(name: str, hidden_units=None, dropout=0.0, conv_filters=None, pool_every=0) -> ModelConfig:
    """A validated ModelConfig; `hidden_units=None` (`conv_filters=None`) means the model's default."""
    config = ModelConfig(name, hidden_units, dropout, conv_filters, pool_every)
    config.validate()
    return config


def create_model(config: ModelConfig, seed: int = 0) -> keras.Model:
    if config.name == "raw":
        model = RawDNN(config.hidden_units, seed)
    elif config.name == "dense":
        model = dense_dnn(config.hidden_units, seed, config.dropout)
    elif config.name == "cnn":
        model = cnn(config.conv_filters, config.hidden_units, seed, config.dropout, config.pool_every)
    elif config.name == "lenet5":
        model = lenet5(seed)
    else:
        model = logistic_regression(seed)
    model(tf.zeros([1, NUM_PIXELS]))  # create every variable now, before any restore
    return model


# --- The loss --------------------------------------------------------------------------


def per_example_loss(labels, logits):
    """Sparse softmax cross-entropy on logits (never on softmax outputs), in float32 even under mixed precision."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32))
