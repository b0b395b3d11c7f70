import gzip
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import run_cli, synthetic_split, write_idx, write_idx_folder
from mnist_dnn.lib import data
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
    data.prepare(config)

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
    data.prepare(config)
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
    batches = list(data.train_batches(split, batch_size=4, seed=3).take(6))
    assert [int(x.shape[0]) for x, _, _ in batches] == [4] * 6
    assert [w.numpy().tolist() for _, _, w in batches[:3]] == [[1] * 4, [1] * 4, [1, 1, 0, 0]]
    real = lambda part: np.concatenate([y.numpy()[w.numpy() > 0] for _, y, w in part])  # noqa: E731
    epoch1, epoch2 = real(batches[:3]), real(batches[3:])
    assert sorted(epoch1) == sorted(epoch2) == list(range(10))
    assert list(epoch1) != list(epoch2)
    x, y, _ = batches[0]
    assert x.dtype == tf.float32 and x.shape[1] == 784 and float(tf.reduce_max(x)) <= 1.0
    np.testing.assert_allclose(x.numpy(), tf.gather(split.images, y).numpy() / 255.0, rtol=1e-6)


def test_train_batches_depend_only_on_seed_and_step():
    split = _tiny_split(10)
    run = [y.numpy().tolist() for _, y, _ in data.train_batches(split, 4, seed=3).take(8)]
    again = [y.numpy().tolist() for _, y, _ in data.train_batches(split, 4, seed=3).take(8)]
    resumed = [y.numpy().tolist() for _, y, _ in data.train_batches(split, 4, seed=3, start_step=5).take(3)]
    other_seed = [y.numpy().tolist() for _, y, _ in data.train_batches(split, 4, seed=4).take(8)]
    assert run == again and resumed == run[5:] and other_seed != run


def test_eval_batches_count_every_example_once():
    split = _tiny_split(10)
    labels = np.concatenate([y.numpy() for _, y in data.eval_batches(split, 4)])
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


def test_offline_import_and_training_work_with_all_network_access_failing(tmp_path, tiny_idx_dir):
    env = _offline_env(tmp_path)
    result = run_cli("train", f"--idx_dir={tiny_idx_dir}", f"--data_dir={tmp_path / 'tfds'}",
                     f"--ckpt_dir={tmp_path / 'ckpt'}", f"--log_dir={tmp_path / 'logs'}",
                     "--max_steps=10", "--log_every=5", env_extra=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Importing mnist" in result.stdout and "Done at step 10" in result.stdout
    # Second run: the prepared dataset is read, no import, still no network.
    result = run_cli("evaluate", f"--data_dir={tmp_path / 'tfds'}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                     env_extra=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Importing" not in result.stdout and "step 10" in result.stdout


def test_missing_data_without_network_is_a_one_line_error(tmp_path):
    from conftest import assert_one_line_error
    result = run_cli("train", f"--data_dir={tmp_path / 'tfds'}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                     env_extra=_offline_env(tmp_path), timeout=240)
    assert_one_line_error(result, 1, "--idx_dir", "MNIST_DNN_IDX_DIR", "--data_dir")
    assert not (tmp_path / "ckpt").exists()


def test_mnist_format_siblings_import_from_idx_files_too(tmp_path):
    written = write_idx_folder(tmp_path / "idx", n_train=30, n_test=10)
    config = data.DataConfig("fashion_mnist", str(tmp_path / "tfds"), str(tmp_path / "idx"), validation_size=10)
    data.prepare(config)
    test = tfds.load("fashion_mnist", data_dir=str(tmp_path / "tfds"), split="test", download=False, batch_size=-1)
    assert sorted(test["label"].numpy().tolist()) == sorted(written["test"][1].tolist())
    assert not (tmp_path / "tfds" / "mnist").exists()


def _one_dot_images(count, row=10, col=12):
    images = np.zeros([count, 28, 28], np.uint8)
    images[:, row, col] = 255
    return tf.constant(images.reshape(count, 784))


def test_random_shift_moves_each_image_by_at_most_max_shift_and_is_stateless():
    shifted = data.random_shift(_one_dot_images(200), 2, data.shift_seed(0, 5)).numpy().reshape(200, 28, 28)
    dots = np.array([np.argwhere(image)[0] for image in shifted])  # still one dot each: nothing lost
    assert all(np.count_nonzero(image) == 1 for image in shifted)
    moves = dots - [10, 12]
    assert np.abs(moves).max() == 2 and len({tuple(m) for m in moves}) == 25  # every (dy, dx) in [-2, 2]^2
    again = data.random_shift(_one_dot_images(200), 2, data.shift_seed(0, 5)).numpy().reshape(200, 28, 28)
    other_step = data.random_shift(_one_dot_images(200), 2, data.shift_seed(0, 6)).numpy().reshape(200, 28, 28)
    np.testing.assert_array_equal(again, shifted)
    assert not np.array_equal(other_step, shifted)
    compiled = tf.function(data.random_shift, jit_compile=True)
    np.testing.assert_array_equal(compiled(_one_dot_images(200), 2, data.shift_seed(0, 5)).numpy().reshape(200, 28, 28),
                                  shifted)


def test_random_shift_fills_with_zeros_at_the_border():
    shifted = data.random_shift(_one_dot_images(100, row=0, col=27), 3, data.shift_seed(1, 0)).numpy()
    assert {np.count_nonzero(image) for image in shifted} == {0, 1}  # moved out, or still inside


def test_padded_epoch_order_is_the_epoch_order_in_full_batches_with_zero_weight_padding():
    order, weights = data.padded_epoch_order(10, 4, seed=3, epoch=2)
    np.testing.assert_array_equal(order[:10], data.epoch_order(10, 3, 2))
    assert order.shape == weights.shape == (12,)
    np.testing.assert_array_equal(weights, [1] * 10 + [0] * 2)
