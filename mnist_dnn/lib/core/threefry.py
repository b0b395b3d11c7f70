"""Counter-based random bits (Threefry-2x32, 20 rounds) written in TensorFlow's uint32 ops.

Dropout draws its masks here. Inside an XLA program on a CPU, TensorFlow's own stateless generators are expanded into
scalar code with 64-bit multiplies, a whole generator block per output element: Philox masks took about a quarter of a
784-512-512-10 training step. Written with plain uint32 ops, XLA fuses the generator into one vectorized loop (about 8x
cheaper per mask; docs/speed.md). The numbers are those of Salmon et al. (2011), as in `jax.random`."""

import tensorflow as tf

_PARITY = 0x1BD11BDA
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x, bits: int):
    return tf.bitwise.bitwise_or(tf.bitwise.left_shift(x, tf.constant(bits, tf.uint32)),
                                 tf.bitwise.right_shift(x, tf.constant(32 - bits, tf.uint32)))


def threefry2x32(key0, key1, x0, x1):
    """Threefry-2x32-20 of the counters (x0, x1) under the key (key0, key1); all uint32."""
    keys = [key0, key1, tf.bitwise.bitwise_xor(tf.bitwise.bitwise_xor(key0, key1), tf.constant(_PARITY, tf.uint32))]
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for i in range(5):  # 5 x 4 rounds, a key injection after every 4
        for bits in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = tf.bitwise.bitwise_xor(_rotate_left(x1, bits), x0)
        x0 = x0 + keys[(i + 1) % 3]
        x1 = x1 + keys[(i + 2) % 3] + tf.constant(i + 1, tf.uint32)
    return x0, x1


def random_bits(shape, seed):
    """uint32 random bits of `shape`, a stateless function of `seed` (int32 [2])."""
    size = tf.reduce_prod(shape)
    half = (size + 1) // 2
    key = tf.bitcast(seed, tf.uint32)
    counters = tf.bitcast(tf.range(half), tf.uint32)
    y0, y1 = threefry2x32(key[0], key[1], counters, counters + tf.bitcast(half, tf.uint32))
    return tf.reshape(tf.concat([y0, y1], 0)[:size], shape)
