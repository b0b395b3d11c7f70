"""Training steps: one step body, run by two runners.

`train_steps` is the loop both runners compile: for each step it reads a batch, computes the loss and gradients on every
replica, and applies them only if the loss and every gradient are finite (such a step updates nothing, and the loop
stops there). Checking the loss alone is not enough: a gradient can overflow while the loss is finite, and once a weight
is NaN some CPU kernels hide it from the loss (oneDNN's fused MatMul+BiasAdd+Relu, on by default on CPUs with AVX-512
VNNI or AMX, returns 0 for relu(NaN) where TensorFlow's own Relu and XLA return NaN). The runners differ only in where
batches come from:

- `CompiledRunner` (one device, the default): the uint8 split and the epoch's order are arguments of one XLA program,
  which gathers each batch itself (for a convnet on a CPU, one TensorFlow graph instead: see `xla_for`);
- `PipelineRunner` (several devices, or `--nojit_compile`): a `tf.data` pipeline distributed by the strategy.

Both read the batch at a step by the same rule (`batches.gather_batch` over the epoch's padded order), so they train on
the same examples in the same order."""

import dataclasses

import keras
import tensorflow as tf

from mnist_dnn.lib.core import data
from mnist_dnn.lib.core.models import per_example_loss
from mnist_dnn.lib.trainer import batches
from mnist_dnn.lib.config import Augmentation


class NonFiniteLoss(Exception):
    """The loss or a gradient of a step was NaN or infinite; that step updated nothing."""


@dataclasses.dataclass(frozen=True)
class TrainMetrics:
    """Running training metrics since the last report."""

    loss: keras.metrics.Mean = dataclasses.field(default_factory=keras.metrics.Mean)
    accuracy: keras.metrics.Metric = dataclasses.field(default_factory=keras.metrics.SparseCategoricalAccuracy)
    examples: keras.metrics.Sum = dataclasses.field(default_factory=keras.metrics.Sum)

    def update(self, example_losses, labels, logits, weights):
        self.loss.update_state(example_losses, sample_weight=weights)
        self.accuracy.update_state(labels, logits, sample_weight=weights)
        self.examples.update_state(tf.reduce_sum(weights))

    def reset(self):
        for metric in (self.loss, self.accuracy, self.examples):
            metric.reset_state()


def _all_finite(tensors) -> tf.Tensor:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors])


def _gradients(model, images, labels, weights):
    """One replica's share: its weighted losses divided by the weight of the GLOBAL batch. So the gradients that the
    strategy sums across replicas are those of one device on the whole batch; padding examples (weight 0) count for
    nothing. Also returns 1.0 where this replica's loss or a gradient is not finite, else 0.0 (a number, for
    `strategy.reduce`)."""
    total_weight = tf.distribute.get_replica_context().all_reduce("sum", tf.reduce_sum(weights))
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        example_losses = per_example_loss(labels, logits)
        loss = tf.reduce_sum(example_losses * weights) / total_weight
    gradients = tape.gradient(loss, model.trainable_variables)
    not_finite = 1.0 - tf.cast(_all_finite([loss, *gradients]), tf.float32)
    return not_finite, gradients, example_losses, logits


def train_steps(state, metrics: TrainMetrics, strategy, next_batch, num_steps, first=0):
    """Runs up to `num_steps` steps on `next_batch(i)`, i from `first`; False if it stopped at a non-finite step. Call
    it inside a `tf.function`. The finiteness test sits outside the replicas' code, since a condition around an
    optimizer update inside it cannot synchronize the replicas."""
    # The batch index is a loop variable: were it `first + counter`, XLA would take the argument
    # `first` for a compile-time constant (it feeds a slice) and compile anew for each value.
    finite, i = tf.constant(True), tf.convert_to_tensor(first)
    # A `while`, not `for ... in tf.range`: XLA would compile a range loop again for every new bound.
    while finite and i < first + num_steps:
        images, labels, weights = next_batch(i)
        not_finite, gradients, example_losses, logits = strategy.run(
            lambda x, y, w: _gradients(state.model, x, y, w), args=(images, labels, weights))
        finite = strategy.reduce("sum", not_finite, axis=None) == 0
        if finite:
            strategy.run(lambda g, y, w, e, z: _apply(state, metrics, g, y, w, e, z),
                         args=(gradients, labels, weights, example_losses, logits))
            state.step.assign_add(1)
        i += 1
    return finite


def _apply(state, metrics, gradients, labels, weights, example_losses, logits):
    state.optimizer.apply_gradients(zip(gradients, state.model.trainable_variables))
    metrics.update(example_losses, labels, logits, weights)


def xla_for(model_config) -> bool:
    """Whether the in-memory loop of this model compiles with XLA. Not for a convnet on a CPU: with XLA's CPU
    convolutions the cnn's loop did not finish 60 steps in 5 minutes, where TensorFlow's oneDNN kernels ran about 490
    examples/s (benchmarks/cnn_speed.py, docs/speed.md); the MLPs gain from XLA."""
    return not model_config.conv_filters or bool(tf.config.list_logical_devices("GPU"))


class CompiledRunner:
    """`runner(num_steps)` as XLA programs over the split in memory: one call per epoch segment. `xla=False`: the same
    loop as a TensorFlow graph (its ops' own kernels, oneDNN on a CPU)."""

    def __init__(self, state, metrics: TrainMetrics, split: data.Split, batch_size: int, seed: int,
                 augmentation: Augmentation = Augmentation(), xla: bool = True):
        self.settings = (state, metrics, split, batch_size, seed, augmentation)
        self.xla = xla
        self.step, self.split, self.batch_size, self.seed = state.step, split, batch_size, seed
        self.epoch_steps = batches.steps_per_epoch(split.size, batch_size)
        self.epoch, self.order = None, None
        strategy = tf.distribute.get_strategy()

        @tf.function(jit_compile=xla)
        def loop(images, labels, order, weights, first, num_steps):
            def next_batch(batch):
                return batches.gather_batch(images, labels, order, weights, batch, batch_size, state.step, seed,
                                            augmentation)

            return train_steps(state, metrics, strategy, next_batch, num_steps, first)

        self.loop = loop

    def __call__(self, num_steps: int) -> None:
        current = int(self.step.numpy())
        end = current + num_steps
        while current < end:
            epoch, first = divmod(current, self.epoch_steps)
            if epoch != self.epoch:
                self.epoch, self.order = epoch, batches.padded_epoch_order(self.split.size, self.batch_size, self.seed, epoch)
            count = min(end - current, self.epoch_steps - first)
            if not self.loop(self.split.images, self.split.labels, *self.order, tf.constant(first), tf.constant(count)):
                raise NonFiniteLoss()
            current += count

    def without_xla(self) -> "CompiledRunner":
        """The same runner as a TensorFlow graph: for a process whose XLA cache failed it."""
        return CompiledRunner(*self.settings, xla=False)


class PipelineRunner:
    def __init__(self, state, metrics: TrainMetrics, split: data.Split, batch_size: int, seed: int,
                 augmentation: Augmentation = Augmentation(), strategy=None, start_step: int = 0):
        strategy = strategy or tf.distribute.get_strategy()
        dataset = batches.train_batches(split, batch_size, seed, start_step, augmentation)
        self.iterator = iter(strategy.experimental_distribute_dataset(dataset))

        @tf.function
        def loop(iterator, num_steps):
            return train_steps(state, metrics, strategy, lambda i: next(iterator), num_steps)

        self.loop = loop

    def __call__(self, num_steps: int) -> None:
        if not self.loop(self.iterator, tf.constant(num_steps)):
            raise NonFiniteLoss()


def make_runner(config, state, metrics: TrainMetrics, split: data.Split, strategy=None, start_step: int = 0):
    settings = (state, metrics, split, config.batch_size, config.seed, config.augmentation)
    if config.compiled:
        return CompiledRunner(*settings, xla=xla_for(config.model))
    return PipelineRunner(*settings, strategy=strategy, start_step=start_step)
