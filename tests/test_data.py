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
