"""The batches the training loops read: each epoch's order, padding, image shifts, tf.data pipelines. Every batch is a
function of the seed and the global step alone (stateless shuffles and shifts), so a resumed run reads exactly the
batches an uninterrupted one would have read, while its checkpoint stores only the step."""

import math

import tensorflow as tf

from mnist_dnn.lib.config import Augmentation
from mnist_dnn.lib.core.data import IMAGE_SIZE, NUM_PIXELS, Split, to_float


def steps_per_epoch(size: int, batch_size: int) -> int:
    return math.ceil(size / batch_size)


def random_shift(images: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
    """Moves each image [B, 784] by its own random (dy, dx) in [-max_shift, max_shift], filling with 0; stateless in
    `seed` (shape [2]), as every draw here."""
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


def random_warp(images: tf.Tensor, max_degrees: float, max_scale: float, seed: tf.Tensor) -> tf.Tensor:
    """Turns each uint8 image [B, 784] by its own random angle in [-max_degrees, max_degrees] and zooms
    it by a random factor in [1 - max_scale, 1 + max_scale]; stateless in `seed` like random_shift."""
    # Whole numbers, made fractions here: Philox's floats differ inside XLA, its integers do not.
    steps = 1 << 24
    whole = tf.random.stateless_uniform([tf.shape(images)[0], 2], seed, 0, steps, tf.int32, alg="philox")
    draws = tf.cast(whole, tf.float32) * (2.0 / steps) - 1.0  # in [-1, 1)
    return warp(images, draws[:, 0] * (max_degrees * math.pi / 180), 1.0 + draws[:, 1] * max_scale)


def warp(images: tf.Tensor, angle: tf.Tensor, zoom: tf.Tensor) -> tf.Tensor:
    """Each uint8 image [B, 784] turned counter-clockwise by its `angle` (radians, [B]) and zoomed by its `zoom` ([B])
    about its centre: bilinear, filling with 0. Gathers only (no image op), so it runs inside XLA."""
    count = tf.shape(images)[0]
    # Output pixel p reads the source at c + rotation(angle) (p - c) / zoom about the centre c; with
    # rows counted downwards, that turns the picture counter-clockwise on screen.
    cos, sin = (tf.reshape(f(angle) / zoom, [-1, 1, 1]) for f in (tf.cos, tf.sin))
    centre = (IMAGE_SIZE - 1) / 2
    grid = tf.range(IMAGE_SIZE, dtype=tf.float32) - centre
    y, x = tf.reshape(grid, [1, -1, 1]), tf.reshape(grid, [1, 1, -1])
    (y0, y1, fy), (x0, x1, fx) = _neighbours(cos * y + sin * x + centre), _neighbours(cos * x - sin * y + centre)
    side = IMAGE_SIZE + 2  # one row and column of zeros around the image
    padded = tf.reshape(tf.pad(tf.reshape(tf.cast(images, tf.float32), [-1, IMAGE_SIZE, IMAGE_SIZE]),
                               [[0, 0], [1, 1], [1, 1]]), [count, side * side])

    def at(row, column):
        return tf.gather(padded, tf.reshape(row * side + column, [count, NUM_PIXELS]), batch_dims=1)

    fy, fx = tf.reshape(fy, [count, NUM_PIXELS]), tf.reshape(fx, [count, NUM_PIXELS])
    warped = (at(y0, x0) * (1 - fy) * (1 - fx) + at(y0, x1) * (1 - fy) * fx
              + at(y1, x0) * fy * (1 - fx) + at(y1, x1) * fy * fx)
    return tf.cast(tf.round(warped), tf.uint8)


def _neighbours(source: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The padded-image indices of the pixels on either side of `source` coordinates, and the weight of the upper one.
    Coordinates outside the image are clipped onto the zero border, with weight 0 beyond it."""
    source = tf.clip_by_value(source, -1.0, float(IMAGE_SIZE))
    low = tf.floor(source)
    low_index = tf.cast(low, tf.int32) + 1
    return low_index, tf.minimum(low_index + 1, IMAGE_SIZE + 1), source - low


def shift_seed(seed: int, step) -> tf.Tensor:
    """The random_shift seed of a training step (offset: never the (seed, epoch) of an epoch_order)."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) + (1 << 32)])


def warp_seed(seed: int, step) -> tf.Tensor:
    """The random_warp seed of a training step (offset from the shift's and the epoch orders')."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) + (2 << 32)])


def epoch_order(size: int, seed: int, epoch) -> tf.Tensor:
    """The example indices of an epoch: a stateless permutation of (seed, epoch)."""
    return tf.random.experimental.stateless_shuffle(tf.range(size),
                                                    seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)]))


def padded_epoch_order(size: int, batch_size: int, seed: int, epoch: int) -> tuple[tf.Tensor, tf.Tensor]:
    """`epoch_order` cut into full batches: indices [steps * batch_size] and weights (1, or 0 for padding). A compiled
    loop needs one batch shape: the epoch's ragged last batch is padded with weight-0 examples, so the weighted mean
    loss equals that of the smaller batch."""
    padding = steps_per_epoch(size, batch_size) * batch_size - size
    order = tf.concat([epoch_order(size, seed, epoch), tf.zeros([padding], tf.int32)], 0)
    weights = tf.concat([tf.ones([size]), tf.zeros([padding])], 0)
    return order, weights


def augment(images: tf.Tensor, augmentation: Augmentation, seed: int, step) -> tf.Tensor:
    """A training batch's uint8 images turned and zoomed, then shifted, as `augmentation` asks."""
    if augmentation.rotate or augmentation.scale:
        images = random_warp(images, augmentation.rotate, augmentation.scale, warp_seed(seed, step))
    if augmentation.shift:
        images = random_shift(images, augmentation.shift, shift_seed(seed, step))
    return images


def gather_batch(images, labels, order, weights, batch_in_epoch, batch_size: int, step, seed: int,
                 augmentation: Augmentation = Augmentation()):
    """The batch `batch_in_epoch` of an epoch's padded order: float images, labels, weights. The one rule both training
    loops read batches by; `step` is the global step (for the shifts)."""
    begin = [batch_in_epoch * batch_size]
    indices, batch_weights = tf.slice(order, begin, [batch_size]), tf.slice(weights, begin, [batch_size])
    batch_images = augment(tf.gather(images, indices), augmentation, seed, step)
    return to_float(batch_images), tf.gather(labels, indices), batch_weights


def train_batches(split: Split, batch_size: int, seed: int, start_step: int = 0,
                  augmentation: Augmentation = Augmentation()) -> tf.data.Dataset:
    """Endless (images, labels, weights) batches, reshuffled every epoch (`epoch_order`), starting at `start_step`; the
    whole split stays in memory as uint8. Every batch has `batch_size` rows: an epoch's last one is padded with
    weight-0 examples (`padded_epoch_order`)."""
    epoch_steps = steps_per_epoch(split.size, batch_size)
    start_epoch, skip = divmod(start_step, epoch_steps)

    def epoch_batches(epoch):
        order, weights = padded_epoch_order(split.size, batch_size, seed, epoch)
        first = tf.where(epoch == start_epoch, tf.constant(skip, tf.int64), 0)
        return tf.data.Dataset.range(first, epoch_steps).map(lambda i: gather_batch(
            split.images, split.labels, order, weights, tf.cast(i, tf.int32), batch_size, epoch * epoch_steps + i, seed,
            augmentation))

    batches = tf.data.Dataset.counter(start_epoch).flat_map(epoch_batches)
    return batches.prefetch(tf.data.AUTOTUNE)


def eval_batches(split: Split, batch_size: int) -> tf.data.Dataset:
    """Every example once, in order; the last batch keeps the remainder."""
    batches = tf.data.Dataset.from_tensor_slices((split.images, split.labels)).batch(batch_size)
    return batches.map(lambda x, y: (to_float(x), y)).prefetch(tf.data.AUTOTUNE)
