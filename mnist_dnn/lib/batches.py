"""The batches the training loops read: each epoch's order, padding, image shifts, tf.data pipelines.

Every batch is a function of the seed and the global step alone (stateless shuffles and
shifts), so a resumed run reads exactly the batches an uninterrupted one would have read.
"""

import math

import tensorflow as tf

from mnist_dnn.lib.data import IMAGE_SIZE, NUM_PIXELS, Split, to_float


def steps_per_epoch(size: int, batch_size: int) -> int:
    return math.ceil(size / batch_size)


def random_shift(images: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
    """Moves each image [B, 784] by its own random (dy, dx) in [-max_shift, max_shift], filling with 0.

    Stateless in `seed` (shape [2]): the same seed always gives the same shifts, so a resumed
    run augments each step as an uninterrupted one does.
    """
    side = IMAGE_SIZE + 2 * max_shift
    padded = tf.pad(tf.reshape(images, [-1, IMAGE_SIZE, IMAGE_SIZE]), [[0, 0], [max_shift] * 2, [max_shift] * 2])
    # Shape [B, 2] so that image i gets the same offsets in a batch padded to any size; Philox
    # gives the same numbers inside XLA as outside.
    offsets = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed, 0, side - IMAGE_SIZE + 1, tf.int32,
                                          alg="philox")
    grid = tf.range(IMAGE_SIZE)
    rows = tf.gather(padded, offsets[:, :1] + grid, batch_dims=1)  # [B, 28, side]
    shifted = tf.gather(rows, offsets[:, 1:] + grid, axis=2, batch_dims=1)  # [B, 28, 28]
    return tf.reshape(shifted, [-1, NUM_PIXELS])


def shift_seed(seed: int, step) -> tf.Tensor:
    """The random_shift seed of a training step (offset: never the (seed, epoch) of an epoch_order)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) + (1 << 32)])


def epoch_order(size: int, seed: int, epoch) -> tf.Tensor:
    """The example indices of an epoch: a stateless permutation of (seed, epoch)."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(size), seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    )


def padded_epoch_order(size: int, batch_size: int, seed: int, epoch: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`epoch_order` cut into full batches: indices [steps * batch_size] and weights (1, or 0 for padding).

    A compiled loop needs one batch shape: the epoch's ragged last batch is padded with
    weight-0 examples, so the weighted mean loss equals that of the smaller batch.
    """
    padding = steps_per_epoch(size, batch_size) * batch_size - size
    order = tf.concat([epoch_order(size, seed, epoch), tf.zeros([padding], tf.int32)], 0)
    weights = tf.concat([tf.ones([size]), tf.zeros([padding])], 0)
    return order, weights


def gather_batch(images, labels, order, weights, batch_in_epoch, batch_size: int, step, seed: int,
                 augment_shift: int = 0):
    """The batch `batch_in_epoch` of an epoch's padded order: float images, labels, weights.

    The one rule both training loops read batches by; `step` is the global step (for the shifts).
    """
    begin = [batch_in_epoch * batch_size]
    indices, batch_weights = tf.slice(order, begin, [batch_size]), tf.slice(weights, begin, [batch_size])
    batch_images = tf.gather(images, indices)
    if augment_shift:
        batch_images = random_shift(batch_images, augment_shift, shift_seed(seed, step))
    return to_float(batch_images), tf.gather(labels, indices), batch_weights


def train_batches(split: Split, batch_size: int, seed: int, start_step: int = 0, augment_shift: int = 0) -> tf.data.Dataset:
    """Endless (images, labels, weights) batches, reshuffled every epoch, starting at `start_step`.

    The whole split stays in memory as uint8; each epoch's order is a stateless permutation of
    (seed, epoch). So the batch at any step is a function of the seed and the step alone, and a
    resumed run sees exactly the batches it would have seen without a stop, while the
    checkpoint stores only the step. Every batch has `batch_size` rows: an epoch's last one is
    padded with weight-0 examples (`padded_epoch_order`).
    """
    epoch_steps = steps_per_epoch(split.size, batch_size)
    start_epoch, skip = divmod(start_step, epoch_steps)

    def epoch_batches(epoch):
        order, weights = padded_epoch_order(split.size, batch_size, seed, epoch)
        first = tf.where(epoch == start_epoch, tf.constant(skip, tf.int64), 0)
        return tf.data.Dataset.range(first, epoch_steps).map(lambda i: gather_batch(
            split.images, split.labels, order, weights, tf.cast(i, tf.int32), batch_size, epoch * epoch_steps + i, seed,
            augment_shift))

    batches = tf.data.Dataset.counter(start_epoch).flat_map(epoch_batches)
    return batches.prefetch(tf.data.AUTOTUNE)


def eval_batches(split: Split, batch_size: int) -> tf.data.Dataset:
    """Every example once, in order; the last batch keeps the remainder."""
    batches = tf.data.Dataset.from_tensor_slices((split.images, split.labels)).batch(batch_size)
    return batches.map(lambda x, y: (to_float(x), y)).prefetch(tf.data.AUTOTUNE)
