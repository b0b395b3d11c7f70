"""Dropout's random bits: Threefry-2x32 against its published answers, and the bits' layout."""

import numpy as np
import pytest
import tensorflow as tf

from mnist_dnn.lib.core import threefry

# Known answers of the reference implementation (Random123, kat_vectors: threefry2x32_20):
# (key0, key1, counter0, counter1) -> (out0, out1).
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize("inputs, expected", KNOWN_ANSWERS)
def test_threefry_gives_the_reference_implementations_answers(inputs, expected):
    key0, key1, x0, x1 = (tf.constant([v], tf.uint32) for v in inputs)
    assert tuple(int(v[0]) for v in threefry.threefry2x32(key0, key1, x0, x1)) == expected


def test_random_bits_are_a_function_of_the_seed_alike_in_eager_and_in_xla():
    seed = tf.constant([123, 456], tf.int32)
    bits = threefry.random_bits(tf.constant([301, 7]), seed).numpy()  # an odd count: 2107
    assert bits.shape == (301, 7) and bits.dtype == np.uint32
    np.testing.assert_array_equal(threefry.random_bits(tf.constant([301, 7]), seed).numpy(), bits)
    compiled = tf.function(lambda s: threefry.random_bits(tf.constant([301, 7]), s), jit_compile=True)
    np.testing.assert_array_equal(compiled(seed).numpy(), bits)
    other = threefry.random_bits(tf.constant([301, 7]), tf.constant([124, 456], tf.int32)).numpy()
    assert (other == bits).mean() < 0.01


def test_random_bits_are_uniform_bit_by_bit():
    bits = threefry.random_bits(tf.constant([100_000]), tf.constant([0, 1], tf.int32)).numpy()
    ones = (bits[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    assert np.abs(ones.mean(axis=0) - 0.5).max() < 0.01  # each of the 32 bits: 0.5 +- 3 standard deviations
    assert len(np.unique(bits)) > 99_990  # no repeated block (2**32 values: about one collision expected)
