"""The training batches (lib/trainer/batches.py): epoch orders, padding, and the augmentation's shifts and warps."""

import numpy as np
import pytest
import tensorflow as tf

from mnist_dnn.lib.core import data
from mnist_dnn.lib.trainer import batches
from mnist_dnn.lib.config import Augmentation



def _tiny_split(n=10):
    return data.Split(tf.reshape(tf.range(n * 784) % 256, [n, 784]).numpy().astype(np.uint8), tf.range(n) % 10)


def test_train_batches_cover_each_epoch_once_in_a_new_order_with_a_padded_last_batch():
    split = _tiny_split(10)
    taken = list(batches.train_batches(split, batch_size=4, seed=3).take(6))
    assert [int(x.shape[0]) for x, _, _ in taken] == [4] * 6
    assert [w.numpy().tolist() for _, _, w in taken[:3]] == [[1] * 4, [1] * 4, [1, 1, 0, 0]]
    real = lambda part: np.concatenate([y.numpy()[w.numpy() > 0] for _, y, w in part])  # noqa: E731
    epoch1, epoch2 = real(taken[:3]), real(taken[3:])
    assert sorted(epoch1) == sorted(epoch2) == list(range(10))
    assert list(epoch1) != list(epoch2)
    x, y, _ = taken[0]
    assert x.dtype == tf.float32 and x.shape[1] == 784 and float(tf.reduce_max(x)) <= 1.0
    np.testing.assert_allclose(x.numpy(), tf.gather(split.images, y).numpy() / 255.0, rtol=1e-6)


def test_train_batches_depend_only_on_seed_and_step():
    split = _tiny_split(10)
    run = [y.numpy().tolist() for _, y, _ in batches.train_batches(split, 4, seed=3).take(8)]
    again = [y.numpy().tolist() for _, y, _ in batches.train_batches(split, 4, seed=3).take(8)]
    resumed = [y.numpy().tolist() for _, y, _ in batches.train_batches(split, 4, seed=3, start_step=5).take(3)]
    other_seed = [y.numpy().tolist() for _, y, _ in batches.train_batches(split, 4, seed=4).take(8)]
    assert run == again and resumed == run[5:] and other_seed != run


def test_eval_batches_count_every_example_once():
    split = _tiny_split(10)
    labels = np.concatenate([y.numpy() for _, y in batches.eval_batches(split, 4)])
    np.testing.assert_array_equal(labels, split.labels.numpy())

def _one_dot_images(count, row=10, col=12):
    images = np.zeros([count, 28, 28], np.uint8)
    images[:, row, col] = 255
    return tf.constant(images.reshape(count, 784))


def test_random_shift_moves_each_image_by_at_most_max_shift_and_is_stateless():
    shifted = batches.random_shift(_one_dot_images(200), 2, batches.shift_seed(0, 5)).numpy().reshape(200, 28, 28)
    dots = np.array([np.argwhere(image)[0] for image in shifted])  # still one dot each: nothing lost
    assert all(np.count_nonzero(image) == 1 for image in shifted)
    moves = dots - [10, 12]
    assert np.abs(moves).max() == 2 and len({tuple(m) for m in moves}) == 25  # every (dy, dx) in [-2, 2]^2
    again = batches.random_shift(_one_dot_images(200), 2, batches.shift_seed(0, 5)).numpy().reshape(200, 28, 28)
    other_step = batches.random_shift(_one_dot_images(200), 2, batches.shift_seed(0, 6)).numpy().reshape(200, 28, 28)
    np.testing.assert_array_equal(again, shifted)
    assert not np.array_equal(other_step, shifted)
    compiled = tf.function(batches.random_shift, jit_compile=True)
    np.testing.assert_array_equal(compiled(_one_dot_images(200), 2, batches.shift_seed(0, 5)).numpy().reshape(200, 28, 28),
                                  shifted)


def test_random_shift_fills_with_zeros_at_the_border():
    shifted = batches.random_shift(_one_dot_images(100, row=0, col=27), 3, batches.shift_seed(1, 0)).numpy()
    assert {np.count_nonzero(image) for image in shifted} == {0, 1}  # moved out, or still inside


def _random_images(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, [count, 28, 28], dtype=np.uint8)


def _warp(images, degrees, zoom):
    count = len(images)
    return batches.warp(tf.constant(images.reshape(count, 784)), tf.fill([count], np.deg2rad(degrees).astype(np.float32)),
                        tf.fill([count], np.float32(zoom))).numpy().reshape(count, 28, 28)


def test_warp_turns_images_counter_clockwise_as_numpy_rot90_does():
    images = _random_images(3)
    np.testing.assert_array_equal(_warp(images, 0, 1.0), images)
    for quarter_turns in (1, 2, 3):
        np.testing.assert_array_equal(_warp(images, 90 * quarter_turns, 1.0), np.rot90(images, quarter_turns, axes=(1, 2)))


def _numpy_zoom(image, zoom):
    """Independent bilinear zoom about the centre, zeros outside: one pixel at a time."""
    out, centre = np.zeros((28, 28)), 13.5
    for row in range(28):
        for col in range(28):
            y, x = (row - centre) / zoom + centre, (col - centre) / zoom + centre
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
                r, c = y0 + dy, x0 + dx
                weight = (1 - abs(y - r)) * (1 - abs(x - c))
                if 0 <= r < 28 and 0 <= c < 28 and weight > 0:
                    out[row, col] += weight * image[r, c]
    return np.round(out)


@pytest.mark.parametrize("zoom", [0.7, 1.25, 2.0])
def test_warp_zooms_about_the_centre_as_a_bilinear_numpy_zoom(zoom):
    image = _random_images(1, seed=1)
    np.testing.assert_allclose(_warp(image, 0, zoom)[0], _numpy_zoom(image[0].astype(np.float64), zoom), atol=1)


def test_random_warp_turns_each_image_within_max_degrees_and_is_stateless():
    dots = _one_dot_images(300, row=3, col=13)  # 10.5 rows above the centre (13.5, 13.5), half a column left
    turned = batches.random_warp(dots, 20.0, 0.0, batches.warp_seed(0, 5)).numpy().reshape(300, 28, 28)
    rows, cols = np.indices((28, 28))
    mass = turned.sum((1, 2)).astype(np.float64)
    centroid_row, centroid_col = ((turned * grid).sum((1, 2)) / mass for grid in (rows, cols))
    angles = np.degrees(np.arctan2(-(centroid_col - 13.5), -(centroid_row - 13.5)) - np.arctan2(0.5, 10.5))
    assert np.abs(angles).max() <= 21 and angles.min() < -15 and angles.max() > 15  # turned both ways, at most 20°
    np.testing.assert_array_equal(batches.random_warp(dots, 20.0, 0.0, batches.warp_seed(0, 5)).numpy().reshape(300, 28, 28),
                                  turned)
    assert not np.array_equal(batches.random_warp(dots, 20.0, 0.0, batches.warp_seed(0, 6)).numpy().reshape(300, 28, 28),
                              turned)
    compiled = tf.function(batches.random_warp, jit_compile=True)
    np.testing.assert_allclose(compiled(dots, 20.0, 0.0, batches.warp_seed(0, 5)).numpy().reshape(300, 28, 28), turned,
                               atol=1)


def test_augment_applies_nothing_when_off_and_the_warp_before_the_shift():
    images = tf.constant(_random_images(4).reshape(4, 784))
    np.testing.assert_array_equal(batches.augment(images, Augmentation(), 0, 3), images)
    both = batches.augment(images, Augmentation(shift=2, rotate=10.0, scale=0.1), 0, 3)
    by_hand = batches.random_shift(batches.random_warp(images, 10.0, 0.1, batches.warp_seed(0, 3)), 2,
                                   batches.shift_seed(0, 3))
    np.testing.assert_array_equal(both, by_hand)


# Independence of the augmentation's draws (issue 38): they are observed where they are used (the angle and
# zoom that `warp` gets, the shift of a one-dot image, the seeds Philox gets), and tested with numpy.
DRAWS = 20_000


def _ks_distance_from_uniform(values, low, high) -> float:
    """Kolmogorov-Smirnov distance of the sample from the uniform distribution on [low, high]."""
    ordered = np.sort((np.asarray(values, np.float64) - low) / (high - low))
    ranks = np.arange(1, len(ordered) + 1) / len(ordered)
    return float(max(np.abs(ranks - ordered).max(), np.abs(ranks - 1 / len(ordered) - ordered).max()))


def _quintile(values) -> np.ndarray:
    """Which fifth of the sample each value falls in, 0 to 4."""
    return np.searchsorted(np.quantile(values, [0.2, 0.4, 0.6, 0.8]), values, side="right")


def _chi_square_of_independence(a_bins, b_bins) -> float:
    """Pearson's statistic of the 5x5 table of two samples' bins (0 to 4): 16 degrees of freedom."""
    observed = np.zeros((5, 5))
    np.add.at(observed, (a_bins, b_bins), 1)
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    return float(((observed - expected) ** 2 / expected).sum())


def _warp_draws(monkeypatch, images, augmentation, seed, step):
    """(angle in degrees, zoom) per image as `augment` hands them to `warp`, and the images it returns
    (`warp` made the identity, so that a one-dot image shows the shift alone)."""
    drawn = []

    def record(images, angle, zoom):
        drawn.append((np.degrees(angle.numpy()), zoom.numpy()))
        return images

    monkeypatch.setattr(batches, "warp", record)
    out = batches.augment(images, augmentation, seed, step).numpy()
    monkeypatch.undo()
    (angles, zooms), = drawn
    return angles, zooms, out


def test_the_angle_and_the_zoom_of_an_image_are_independent_uniform_draws(monkeypatch):
    """Over 20,000 images: each draw uniform on its range (Kolmogorov-Smirnov), and the two uncorrelated and
    independent (a 5x5 table of their quantiles). Tied to one number, the correlation is 1 and the statistic ~80,000."""
    images = tf.zeros([DRAWS, 784], tf.uint8)
    angles, zooms, _ = _warp_draws(monkeypatch, images, Augmentation(rotate=30.0, scale=0.2), 4, 11)
    assert np.abs(angles).max() <= 30 and np.abs(zooms - 1).max() <= 0.2 + 1e-6
    # The 0.1% critical distance of Kolmogorov-Smirnov is 1.95 / sqrt(n) = 0.014 at n = 20,000.
    assert _ks_distance_from_uniform(angles, -30, 30) < 0.014
    assert _ks_distance_from_uniform(zooms, 0.8, 1.2) < 0.014
    assert abs(np.corrcoef(angles, zooms)[0, 1]) < 0.03  # 4 standard deviations (1 / sqrt(n) = 0.007)
    assert _chi_square_of_independence(_quintile(angles), _quintile(zooms)) < 45  # p < 1e-4 above 45
    other_step = _warp_draws(monkeypatch, images, Augmentation(rotate=30.0, scale=0.2), 4, 12)[0]
    assert abs(np.corrcoef(angles, other_step)[0, 1]) < 0.03  # and each step draws afresh


def test_the_shift_and_the_warp_of_a_step_draw_from_their_own_streams(monkeypatch):
    """The shift read off one-dot images is independent of the warp's angle and zoom; and the seeds that Philox
    gets for the shift and for the warp differ within a step and across steps (one stream for both, with their
    different ranges, looks independent in any table: only the seeds show it)."""
    dots = _one_dot_images(DRAWS)
    angles, zooms, out = _warp_draws(monkeypatch, dots, Augmentation(shift=2, rotate=30.0, scale=0.2), 4, 11)
    found = np.argwhere(out.reshape(DRAWS, 28, 28))
    assert len(found) == DRAWS and (found[:, 0] == np.arange(DRAWS)).all()  # one dot each, every image
    dy, dx = found[:, 1] - 10, found[:, 2] - 12
    assert set(dy) == set(dx) == {-2, -1, 0, 1, 2}
    for shift in (dy, dx):
        for draw in (angles, zooms):
            assert abs(np.corrcoef(shift, draw)[0, 1]) < 0.03
            assert _chi_square_of_independence(shift + 2, _quintile(draw)) < 45
    seeds = []
    stateless_uniform = tf.random.stateless_uniform

    def record(shape, seed, *args, **kwargs):
        seeds.append(tuple(np.asarray(seed).tolist()))
        return stateless_uniform(shape, seed, *args, **kwargs)

    monkeypatch.setattr(tf.random, "stateless_uniform", record)
    for step in range(50):
        batches.augment(dots[:4], Augmentation(shift=2, rotate=30.0, scale=0.2), 4, step)
    monkeypatch.undo()
    assert len(seeds) == 100 and len(set(seeds)) == 100
    epoch_orders = {(4, epoch) for epoch in range(1000)}  # the seeds of the epochs' shuffles
    assert not epoch_orders & set(seeds)


def test_padded_epoch_order_is_the_epoch_order_in_full_batches_with_zero_weight_padding():
    order, weights = batches.padded_epoch_order(10, 4, seed=3, epoch=2)
    np.testing.assert_array_equal(order[:10], batches.epoch_order(10, 3, 2))
    assert order.shape == weights.shape == (12,)
    np.testing.assert_array_equal(weights, [1] * 10 + [0] * 2)
