"""Encoded image files to MNIST pixels, in TensorFlow ops. `predict` runs these functions on the files it reads and the
SavedModel's `serving_bytes` signature runs them in its graph, so both give the same pixels, and so the same answer, for
the same file."""

import tensorflow as tf

from mnist_dnn.lib.core import data

MAX_SIDE = 4096
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # decoding allocates a few float32 copies: about 1 GB at this size
FORMATS = "PNG, JPEG, BMP or GIF"
_HEADER_BYTES = 26  # the size fields of all four formats lie in the first 26 bytes


def _number(header: tf.Tensor, offset: int, length: int, big_endian: bool) -> tf.Tensor:
    """An unsigned integer of `length` bytes at `offset` of the (padded) header."""
    digits = tf.cast(tf.io.decode_raw(tf.strings.substr(header, offset, length), tf.uint8), tf.int64)
    if big_endian:
        digits = tf.reverse(digits, [0])
    return tf.reduce_sum(digits * tf.constant([256**i for i in range(length)], tf.int64))


def _bmp_size(header: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    width = _number(header, 18, 4, big_endian=False)
    height = _number(header, 22, 4, big_endian=False)
    height = tf.where(height >= 2**31, 2**32 - height, height)  # negative: rows stored top-down
    return height, width


def image_size(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width) from the header of a PNG, JPEG, BMP or GIF, before decoding; (0, 0) otherwise."""
    header = tf.strings.substr(tf.strings.join([contents, b"\0" * _HEADER_BYTES]), 0, _HEADER_BYTES)  # never too short
    magic = tf.strings.substr(header, 0, 4)
    zero = tf.constant(0, tf.int64)
    branches = [
        (tf.equal(magic, b"\x89PNG"), lambda: (_number(header, 20, 4, True), _number(header, 16, 4, True))),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"\xff\xd8"),
         lambda: tuple(tf.unstack(tf.io.extract_jpeg_shape(contents, output_type=tf.int64)[:2]))),
        (tf.equal(magic, b"GIF8"), lambda: (_number(header, 8, 2, False), _number(header, 6, 2, False))),
        (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), lambda: _bmp_size(header)),
    ]
    return tf.case(branches, default=lambda: (zero, zero), exclusive=True)


def too_large_message(height: int, width: int) -> str:
    return (f"image of {width}x{height} pixels is too large: at most {MAX_PIXELS:,} pixels "
            f"({MAX_SIDE}x{MAX_SIDE}) are decoded; shrink it (a digit needs only {data.IMAGE_SIZE}x{data.IMAGE_SIZE})")


def to_grayscale_on_white(image: tf.Tensor) -> tf.Tensor:
    """float32 [H, W, C] (C = 1 to 4) to [H, W, 1]: transparent pixels count as white, as a viewer shows them."""
    channels = tf.shape(image)[-1]
    has_alpha = tf.logical_or(tf.equal(channels, 2), tf.equal(channels, 4))
    color_channels = channels - tf.cast(has_alpha, tf.int32)
    alpha = tf.cond(has_alpha, lambda: image[..., -1:] / 255.0, lambda: tf.ones_like(image[..., :1]))
    color = image[..., :color_channels] * alpha + 255.0 * (1.0 - alpha)
    return tf.cond(tf.equal(color_channels, 3),
                   lambda: tf.image.rgb_to_grayscale(tf.ensure_shape(color, [None, None, 3])),
                   lambda: tf.ensure_shape(color, [None, None, 1]))


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def decode_digit(contents: tf.Tensor) -> tf.Tensor:
    """An encoded PNG, JPEG, BMP or GIF (its first frame) to MNIST pixels, uint8 [28, 28, 1]. Grayscale, light digit on
    a dark background (inverted when the border is brighter than mid-gray), resized. Images larger than MAX_PIXELS are
    refused before they are decoded."""
    height, width = image_size(contents)
    tf.debugging.assert_less_equal(height * width, tf.constant(MAX_PIXELS, tf.int64),
                                   message=f"image too large: at most {MAX_PIXELS} pixels are decoded")
    image = tf.io.decode_image(contents, expand_animations=False)
    image = to_grayscale_on_white(tf.cast(image, tf.float32))
    border = tf.concat([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
    image = tf.cond(tf.reduce_mean(border) > 127, lambda: 255.0 - image, lambda: image)  # MNIST: light on dark
    image = tf.image.resize(image, [data.IMAGE_SIZE, data.IMAGE_SIZE], antialias=True)
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def decode_digits(contents: tf.Tensor) -> tf.Tensor:
    """A batch of encoded images, string [N], to uint8 [N, 28, 28, 1]."""
    return tf.map_fn(decode_digit, contents,
                     fn_output_signature=tf.TensorSpec([data.IMAGE_SIZE, data.IMAGE_SIZE, 1], tf.uint8))
