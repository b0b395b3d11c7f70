import gzip
import hashlib
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import REAL_IDX_DIR, ROOT, assert_one_line_error, run_cli, synthetic_split, write_idx, write_idx_folder
from mnist_dnn.cli import app as cli
from mnist_dnn.lib.core import data
from mnist_dnn.lib.trainer import batches
from mnist_dnn.lib.config import Augmentation
from mnist_dnn.lib.errors import DataError, UsageError


def test_read_idx_split_reads_gzip_and_plain_files_alike(tmp_path):
    written = write_idx_folder(tmp_path / "gz", n_train=30, n_test=10, gz=True)
    write_idx_folder(tmp_path / "plain", n_train=30, n_test=10, gz=False)
    for folder in ("gz", "plain"):
        images, labels = data.read_idx_split(str(tmp_path / folder), "train")
        np.testing.assert_array_equal(images, written["train"][0])
        np.testing.assert_array_equal(labels, written["train"][1])


@pytest.mark.parametrize("damage, message", [
    ("missing_file", "has no t10k-labels-idx1-ubyte"),
    ("wrong_magic", "magic number"),
    ("truncated", "truncated"),
    ("bad_gzip", "cannot read"),
    ("count_mismatch", "images but"),
    ("label_out_of_range", "labels must be 0..9"),
    ("wrong_dimensions", "shape (28, 27)"),
    ("empty_file", "too short"),
])
def test_damaged_idx_folders_are_refused_with_the_reason(tmp_path, damage, message):
    write_idx_folder(tmp_path, n_train=20, n_test=10)
    labels_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    images_path = tmp_path / "t10k-images-idx3-ubyte.gz"
    images, labels = synthetic_split(10, 0)
    if damage == "missing_file":
        labels_path.unlink()
    elif damage == "wrong_magic":
        write_idx(labels_path, labels, 0x803)
    elif damage == "truncated":
        write_idx(labels_path, labels[:5], 0x801)
        raw = bytearray(gzip.decompress(labels_path.read_bytes()))
        raw[4:8] = (10).to_bytes(4, "big")  # header says 10 labels, 5 are present
        labels_path.write_bytes(gzip.compress(bytes(raw)))
    elif damage == "bad_gzip":
        labels_path.write_bytes(labels_path.read_bytes()[:20])
    elif damage == "count_mismatch":
        write_idx(labels_path, labels[:7], 0x801)
    elif damage == "label_out_of_range":
        write_idx(labels_path, np.full(10, 10), 0x801)
    elif damage == "wrong_dimensions":
        write_idx(images_path, images[:, :, :27], 0x803)
    elif damage == "empty_file":
        labels_path.write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        data.read_idx_split(str(tmp_path), "test")


def test_import_prepares_the_dataset_that_plain_tfds_load_reads(tmp_path):
    written = write_idx_folder(tmp_path / "idx", n_train=40, n_test=12)
    config = data.DataConfig("mnist", str(tmp_path / "tfds"), str(tmp_path / "idx"), validation_size=10)
    data.import_idx(config, verify=False)

    builder = tfds.builder("mnist", data_dir=str(tmp_path / "tfds"))
    assert builder.is_prepared() and str(builder.version) == str(tfds.builder_cls("mnist").VERSION)
    test = tfds.load("mnist", data_dir=str(tmp_path / "tfds"), split="test", download=False, batch_size=-1)
    assert test["image"].shape == (12, 28, 28, 1) and test["image"].dtype == tf.uint8
    # Same examples, keyed like TFDS's own builder: compare as sets of (label, image bytes).
    got = sorted((int(l), i.tobytes()) for i, l in zip(test["image"].numpy()[..., 0], test["label"].numpy()))
    want = sorted((int(l), i.tobytes()) for i, l in zip(*written["test"]))
    assert got == want


def test_prepared_dataset_is_reused_without_the_idx_folder(tmp_path):
    write_idx_folder(tmp_path / "idx", n_train=40, n_test=12)
    config = data.DataConfig("mnist", str(tmp_path / "tfds"), str(tmp_path / "idx"), validation_size=10)
    data.import_idx(config, verify=False)
    shutil.rmtree(tmp_path / "idx")
    splits = data.load_splits(data.DataConfig("mnist", str(tmp_path / "tfds"), None, validation_size=10))
    assert {k: v.size for k, v in splits.items()} == {"train": 30, "validation": 10, "test": 12}


def test_splits_follow_the_course_train_validation_test_layout(tiny_data):
    splits = data.load_splits(tiny_data)
    full_train = tfds.load("mnist", data_dir=tiny_data.data_dir, split="train", download=False, batch_size=-1)
    assert splits["train"].size == 1000 and splits["validation"].size == 5000 and splits["test"].size == 500
    flat = tf.reshape(full_train["image"], [-1, 784])
    np.testing.assert_array_equal(splits["train"].images, flat[:1000])
    np.testing.assert_array_equal(splits["validation"].images, flat[1000:])
    assert splits["train"].images.dtype == tf.uint8 and splits["train"].labels.dtype == tf.int32


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


def test_unknown_dataset_is_a_usage_error():
    with pytest.raises(UsageError, match="fashion_mnist"):
        data.prepare(data.DataConfig("cifar10"))


_BLOCK_NETWORK = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("network disabled by the test")
socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
"""


def _offline_env(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK_NETWORK)
    return {"PYTHONPATH": str(site) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_the_offline_import_works_with_all_network_access_failing(tmp_path, monkeypatch):
    for name in ("create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, _refuse_network)
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    write_idx_folder(tmp_path / "idx", n_train=40, n_test=12)
    config = data.DataConfig("mnist", str(tmp_path / "tfds"), str(tmp_path / "idx"), validation_size=10)
    data.import_idx(config, verify=False)  # the tools' path (prepare) verifies first, which needs no network either
    assert data.load_splits(config)["test"].size == 12


def _refuse_network(*args, **kwargs):
    raise OSError("network disabled by the test")


@pytest.mark.slow
def test_training_and_evaluation_on_a_prepared_dataset_work_with_all_network_access_failing(tmp_path, tiny_data):
    env = _offline_env(tmp_path)
    result = run_cli("train", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                     f"--log_dir={tmp_path / 'logs'}", "--max_steps=10", "--log_every=5", env_extra=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Importing" not in result.stdout and "Done at step 10" in result.stdout
    result = run_cli("evaluate", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                     env_extra=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Importing" not in result.stdout and "step 10" in result.stdout


@pytest.mark.slow
def test_missing_data_without_network_is_a_one_line_error(tmp_path):
    result = run_cli("train", f"--data_dir={tmp_path / 'tfds'}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                     env_extra=_offline_env(tmp_path), timeout=240)
    assert_one_line_error(result, 1, "--idx_dir", "MNIST_DNN_IDX_DIR", "--data_dir")
    assert not (tmp_path / "ckpt").exists()


def test_mnist_format_siblings_import_from_idx_files_too(tmp_path):
    written = write_idx_folder(tmp_path / "idx", n_train=30, n_test=10)
    config = data.DataConfig("fashion_mnist", str(tmp_path / "tfds"), str(tmp_path / "idx"), validation_size=10)
    data.import_idx(config, verify=False)
    test = tfds.load("fashion_mnist", data_dir=str(tmp_path / "tfds"), split="test", download=False, batch_size=-1)
    assert sorted(test["label"].numpy().tolist()) == sorted(written["test"][1].tolist())
    assert not (tmp_path / "tfds" / "mnist").exists()


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


# --- The data is what it claims to be ------------------------------------------------------


def _listing(folder):
    """Every path under `folder` (folders too) with the bytes of each file; None if it is missing."""
    if not folder.exists():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def real_arrays():
    """The real MNIST's (images, labels) of each split, straight from the IDX files; skipped without them (the
    fast tier needs no dataset)."""
    if not os.path.isfile(os.path.join(REAL_IDX_DIR, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"needs the real MNIST's IDX files, not at {REAL_IDX_DIR}; set {data.IDX_DIR_ENV}")
    return {split: data.read_idx_split(REAL_IDX_DIR, split) for split in ("train", "test")}


def test_the_real_mnist_files_pass_the_check_and_match_the_published_counts(real_arrays):
    for split, (images, labels) in real_arrays.items():
        data.check_canonical("mnist", REAL_IDX_DIR, split, images, labels)
        assert np.bincount(labels).tolist() == list(data.CANONICAL["mnist"][split].label_counts)
    # The published checksum of the decompressed train-images-idx3-ubyte, computed here independently.
    raw = gzip.decompress((pathlib.Path(REAL_IDX_DIR) / "train-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == data.idx_md5(real_arrays["train"][0], 0x803)
    assert data.idx_md5(real_arrays["train"][0], 0x803) == "6bbc9ace898e44ae57da46a324031adb"


def _relabel_one(labels):
    labels = labels.copy()
    labels[np.flatnonzero(labels == 3)[0]] = 5
    return labels


@pytest.mark.parametrize("change, message", [
    ("first 6,000 examples", "has 6,000 examples, mnist has 60,000"),
    ("one label moved to another class", "another label histogram (class 3: 6,130 instead of 6,131, class 5: 5,422"),
    ("labels shuffled", "contents differ from the canonical mnist"),
    ("one pixel changed", "contents differ from the canonical mnist"),
])
def test_files_that_are_not_the_official_mnist_are_refused_saying_what_differs(real_arrays, change, message):
    images, labels = real_arrays["train"]
    if change == "first 6,000 examples":
        images, labels = images[:6000], labels[:6000]
    elif change == "one label moved to another class":
        labels = _relabel_one(labels)
    elif change == "labels shuffled":
        labels = np.random.default_rng(0).permutation(labels)
    else:
        images = images.copy()
        images[7, 14, 14] ^= 1
    with pytest.raises(DataError, match=re.escape(message)):
        data.check_canonical("mnist", "idx", "train", images, labels)


def test_mnist_is_refused_as_fashion_mnist_or_kmnist(real_arrays):
    for dataset in ("fashion_mnist", "kmnist"):
        with pytest.raises(DataError, match=re.escape("another label histogram (class 0: 5,923 instead of 6,000")):
            data.check_canonical(dataset, "idx", "train", *real_arrays["train"])


def test_kmnist_is_checked_by_counts_and_fashion_mnist_by_checksum_too():
    labels = np.repeat(np.arange(10, dtype=np.uint8), 1000)
    images = np.zeros([10000, 28, 28], np.uint8)
    data.check_canonical("kmnist", "idx", "test", images, labels)  # no checksum known for KMNIST
    with pytest.raises(DataError, match="contents differ from the canonical fashion_mnist"):
        data.check_canonical("fashion_mnist", "idx", "test", images, labels)


def test_a_consistent_6000_example_folder_is_refused_as_mnist_and_nothing_is_written(tmp_path):
    write_idx_folder(tmp_path / "idx")  # the tests' synthetic digits: 6,000 + 500 well-formed examples
    before = _listing(tmp_path)
    with pytest.raises(DataError, match="has 6,000 examples, mnist has 60,000"):
        data.prepare(data.DataConfig("mnist", str(tmp_path / "tfds"), str(tmp_path / "idx")))
    assert _listing(tmp_path) == before and not (tmp_path / "tfds").exists()


def test_right_counts_with_wrong_labels_are_refused_and_nothing_is_written(tmp_path, real_arrays):
    (tmp_path / "idx").mkdir()
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = real_arrays[split]
        write_idx(tmp_path / "idx" / f"{prefix}-images-idx3-ubyte", images, 0x803)
        write_idx(tmp_path / "idx" / f"{prefix}-labels-idx1-ubyte", np.random.default_rng(0).permutation(labels), 0x801)
    (tmp_path / "tfds").mkdir()
    before = _listing(tmp_path / "tfds")
    with pytest.raises(DataError, match="train split .* contents differ from the canonical mnist"):
        data.prepare(data.DataConfig("mnist", str(tmp_path / "tfds"), str(tmp_path / "idx")))
    assert _listing(tmp_path / "tfds") == before == {}


def test_the_mnist_variable_is_not_used_for_other_datasets(tmp_path, monkeypatch):
    monkeypatch.setenv(data.IDX_DIR_ENV, REAL_IDX_DIR)
    idx_dir = cli.idx_dir(types.SimpleNamespace(idx_dir=None))
    monkeypatch.setattr(data, "_check_reachable", _no_network)
    with pytest.raises(DataError, match=f"could not be downloaded: no network.*{data.IDX_DIR_ENV} is used for mnist only"):
        data.prepare(data.DataConfig("fashion_mnist", str(tmp_path / "fm_data"), idx_dir))
    assert not (tmp_path / "fm_data").exists()
    assert data.DataConfig("mnist", None, idx_dir).idx_folder == REAL_IDX_DIR
    # An explicit --idx_dir is the run's own source, whatever the dataset (and it is checked as that dataset).
    assert cli.idx_dir(types.SimpleNamespace(idx_dir="folder")) == "folder"
    assert data.DataConfig("fashion_mnist", None, "folder").idx_folder == "folder"


def _no_network(host):
    raise ConnectionError("no network")


def test_a_data_dir_that_is_a_file_is_a_usage_error(tmp_path, tiny_idx_dir):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UsageError, match="`data_dir` .* is a file"):
        data.prepare(data.DataConfig("mnist", str(tmp_path / "file"), tiny_idx_dir))
    assert (tmp_path / "file").read_text() == "not a folder"


def test_an_import_that_fails_midway_leaves_nothing_that_counts_as_prepared(tmp_path, monkeypatch):
    write_idx_folder(tmp_path / "idx", n_train=40, n_test=12)
    config = data.DataConfig("mnist", str(tmp_path / "tfds"), str(tmp_path / "idx"), validation_size=10)
    offline_builder_class = data._offline_builder_class

    def failing_builder_class(dataset, idx_dir):
        base = offline_builder_class(dataset, idx_dir)

        class FailingBuilder(base, skip_registration=True):
            name = base.name

            def _generate_examples(self, split):
                for index, example in super()._generate_examples(split):
                    if split == "test" and index == 5:
                        raise OSError("disk full")
                    yield index, example
        return FailingBuilder

    monkeypatch.setattr(data, "_offline_builder_class", failing_builder_class)
    with pytest.raises(OSError, match="disk full"):
        data.import_idx(config, verify=False)
    assert not tfds.builder("mnist", data_dir=config.data_dir).is_prepared()
    assert not [p for p in (tmp_path / "tfds").rglob("*") if p.is_file()]
    monkeypatch.undo()
    data.import_idx(config, verify=False)  # a retry prepares it whole
    assert data.load_splits(config)["test"].size == 12


@pytest.mark.slow
def test_the_mnist_variable_does_not_feed_a_fashion_mnist_run(tmp_path):
    env = {data.IDX_DIR_ENV: REAL_IDX_DIR, **_offline_env(tmp_path)}
    before = _listing(tmp_path)
    result = run_cli("train", "--dataset=fashion_mnist", f"--data_dir={tmp_path / 'fm_data'}",
                     f"--ckpt_dir={tmp_path / 'ckpt'}", "--max_steps=1", env_extra=env)
    assert_one_line_error(result, 1, "fashion_mnist is not prepared", f"{data.IDX_DIR_ENV} is used for mnist only")
    assert "Importing" not in result.stdout and _listing(tmp_path) == before


@pytest.mark.slow
@pytest.mark.parametrize("case, exit_code, fragment", [
    ("6,000-example folder", 1, "has 6,000 examples, mnist has 60,000"),
    ("data_dir is a file", 2, "is a file"),
])
def test_refused_data_is_a_one_line_error_that_writes_nothing(tmp_path, tiny_idx_dir, case, exit_code, fragment):
    data_dir = tmp_path / "tfds"
    if case == "data_dir is a file":
        data_dir.write_text("not a folder")
    before = _listing(tmp_path)
    result = run_cli("train", f"--idx_dir={tiny_idx_dir}", f"--data_dir={data_dir}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                     "--max_steps=1")
    assert_one_line_error(result, exit_code, fragment)
    assert _listing(tmp_path) == before


@pytest.mark.slow
def test_the_real_mnist_is_imported_as_tfds_mnist(real_data):
    splits = data.load_splits(real_data)
    labels = np.concatenate([splits["train"].labels.numpy(), splits["validation"].labels.numpy()])
    assert np.bincount(labels).tolist() == list(data.CANONICAL["mnist"]["train"].label_counts)
    assert np.bincount(splits["test"].labels.numpy()).tolist() == list(data.CANONICAL["mnist"]["test"].label_counts)


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory) -> str:
    """A TFDS folder with a small dataset imported (and no array cache yet)."""
    folder = tmp_path_factory.mktemp("prepared")
    write_idx_folder(folder / "idx", n_train=40, n_test=12)
    data.import_idx(data.DataConfig("mnist", str(folder / "tfds"), str(folder / "idx")), verify=False)
    return str(folder / "tfds")


@pytest.fixture
def fresh_prepared(prepared_once, tmp_path) -> data.DataConfig:
    shutil.copytree(prepared_once, tmp_path / "tfds", copy_function=shutil.copy2)  # keeps the records' times
    return data.DataConfig("mnist", str(tmp_path / "tfds"), None, validation_size=10)


def _count_tfds_reads(monkeypatch) -> list:
    reads = []
    original = tfds.core.DatasetBuilder.as_dataset

    def counted(self, *args, **kwargs):
        reads.append(kwargs.get("split"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", counted)
    return reads


def _assert_splits_hold(splits, config):
    """The splits against TFDS's own reading of the prepared dataset."""
    read = {split: tfds.load("mnist", data_dir=config.data_dir, split=split, download=False, batch_size=-1)
            for split in ("train", "test")}
    np.testing.assert_array_equal(np.concatenate([splits["train"].images, splits["validation"].images]),
                                  tf.reshape(read["train"]["image"], [-1, 784]))
    np.testing.assert_array_equal(np.concatenate([splits["train"].labels, splits["validation"].labels]),
                                  read["train"]["label"])
    np.testing.assert_array_equal(splits["test"].images, tf.reshape(read["test"]["image"], [-1, 784]))


def test_loaded_splits_are_cached_as_arrays_and_read_back_without_decoding(fresh_prepared, tmp_path, monkeypatch):
    config = fresh_prepared
    reads = _count_tfds_reads(monkeypatch)
    first = data.load_splits(config)
    second = data.load_splits(config)
    assert sorted(reads) == ["test", "train"]  # the second load read no TFDS record
    cached = sorted(p.name for p in (tmp_path / "tfds").rglob(data.ARRAY_CACHE_PREFIX + "*"))
    assert cached == ["mnist_dnn-arrays-test.npz", "mnist_dnn-arrays-train.npz"]
    _assert_splits_hold(first, config)
    _assert_splits_hold(second, config)
    assert second["train"].images.dtype == tf.uint8 and second["train"].labels.dtype == tf.int32


@pytest.mark.parametrize("change", ["damaged cache", "records rewritten"])
def test_the_array_cache_is_not_trusted_when_damaged_or_older_than_the_records(fresh_prepared, tmp_path, monkeypatch,
                                                                                 change):
    config = fresh_prepared
    data.load_splits(config)
    train_cache = next((tmp_path / "tfds").rglob(data.ARRAY_CACHE_PREFIX + "train.npz"))
    if change == "damaged cache":
        train_cache.write_bytes(train_cache.read_bytes()[:1000])
    else:
        record = next((tmp_path / "tfds").rglob("mnist-train.tfrecord*"))
        os.utime(record, ns=(record.stat().st_atime_ns, record.stat().st_mtime_ns + 1))
    reads = _count_tfds_reads(monkeypatch)
    reloaded = data.load_splits(config)
    data.load_splits(config)
    assert reads == ["train"]  # decoded again once, and cached again
    _assert_splits_hold(reloaded, config)


def test_a_data_dir_that_cannot_take_the_cache_still_loads(fresh_prepared, tmp_path, monkeypatch):
    config = fresh_prepared

    def refuse(path, write):
        raise PermissionError(13, "read-only", path)

    monkeypatch.setattr(data.files, "write_with", refuse)
    splits = data.load_splits(config)
    assert not list((tmp_path / "tfds").rglob(data.ARRAY_CACHE_PREFIX + "*"))
    _assert_splits_hold(splits, config)


# issue 27: two imports into one data folder at once (the second died with FileExistsError).
@pytest.mark.slow
def test_imports_into_one_data_folder_at_once_wait_for_each_other_and_share_the_dataset(tmp_path):
    data_dir = tmp_path / "tfds"
    env = {**os.environ, data.IDX_DIR_ENV: REAL_IDX_DIR, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-m", "mnist_dnn.train", f"--data_dir={data_dir}",
                                   f"--ckpt_dir={tmp_path / f'run{i}'}", f"--log_dir={tmp_path / f'logs{i}'}",
                                   "--hidden_units=8", "--max_steps=2"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
                 for i in range(3)]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert [err for _, err in outputs] == ["", "", ""]  # no TFDS "Variant folder ... has no dataset_info.json"
    assert not any("Downloading and preparing" in out or "Variant folder" in out for out, _ in outputs)
    imports = [out for out, _ in outputs if "Importing mnist" in out]
    waits = [out for out, _ in outputs if "Waiting for another process" in out]
    assert len(imports) == 1 and len(waits) >= 1, [out for out, _ in outputs]  # they did meet
    assert os.listdir(data_dir / "mnist") == ["3.0.1"]
