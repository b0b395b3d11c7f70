"""MNIST-format data: a prepared TFDS dataset in `data_dir`, downloaded by TFDS, or offline prepared the very same
(`import_idx`) from the four IDX files, once they prove to be the dataset they claim (`check_canonical`)."""

import contextlib
import dataclasses
import gzip
import hashlib
import io
import logging
import math
import os
import socket
import urllib.parse
import zipfile
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import mnist as tfds_mnist

from mnist_dnn.lib import files
from mnist_dnn.lib.config import (DATASETS, IDX_DIR_ENV, IMAGE_SIZE, NUM_CLASSES, NUM_PIXELS,  # noqa: F401 (part of this module's API)
                                  DataConfig, DatasetIdxDir)
from mnist_dnn.lib.errors import DataError, UsageError

# The decoded arrays of a prepared split, beside its TFDS record files (see _load_split).
ARRAY_CACHE_PREFIX = "mnist_dnn-arrays-"
_IDX_PREFIXES = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


@dataclasses.dataclass(frozen=True)
class Split:
    """A whole split in memory: images uint8 [N, 784], labels int32 [N]."""

    images: tf.Tensor
    labels: tf.Tensor

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


# --- IDX files ---------------------------------------------------------------------------


def _idx_path(idx_dir: str, stem: str) -> str:
    for name in (stem + ".gz", stem):
        path = os.path.join(idx_dir, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{idx_dir} has no {stem}.gz or {stem}: `idx_dir` must hold the four MNIST IDX files")


def _read_bytes(path: str) -> bytes:
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {e}; replace it with an intact copy") from None


def read_idx(path: str, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Reads one IDX file of unsigned bytes, checking its header against what MNIST has."""
    raw = _read_bytes(path)
    ndim = 1 + len(item_shape)
    header_size = 4 * (1 + ndim)
    if len(raw) < header_size:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        raise DataError(f"{path} has IDX magic number {found_magic:#010x}, expected {magic:#010x}: "
                        "is it the right file?")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if dims[1:] != item_shape:
        raise DataError(f"{path} holds items of shape {dims[1:]}, expected {item_shape}")
    expected_size = header_size + math.prod(dims)
    if len(raw) != expected_size:
        raise DataError(f"{path} has {len(raw)} bytes but its header announces {expected_size}: the file is truncated "
                        "or damaged")
    return np.frombuffer(raw, np.uint8, offset=header_size).reshape(dims)


def read_idx_split(idx_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] and labels [N] of the 'train' or 'test' split of an IDX folder."""
    prefix = _IDX_PREFIXES[split]
    images_path = _idx_path(idx_dir, f"{prefix}-images-idx3-ubyte")
    labels_path = _idx_path(idx_dir, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, _IMAGES_MAGIC, (IMAGE_SIZE, IMAGE_SIZE))
    labels = read_idx(labels_path, _LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{labels_path} holds no examples")
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_path} has label {labels.max()}; labels must be 0..9")
    return images, labels


# --- What the official files hold --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CanonicalSplit:
    """What one split of a dataset's official IDX files holds."""

    label_counts: tuple[int, ...]  # examples of each class 0..9
    # MD5 of the decompressed images and labels files, the checksums that users of these datasets
    # publish (`gunzip -c FILE | md5sum`); None where none could be established.
    images_md5: str | None = None
    labels_md5: str | None = None

    @property
    def size(self) -> int:
        return sum(self.label_counts)


# MD5 is enough to tell a mix-up of files, the risk here; it is no defence against forgery.
CANONICAL = {
    "mnist": {
        "train": CanonicalSplit((5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
                                "6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624"),
        "test": CanonicalSplit((980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
                               "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"),
    },
    "fashion_mnist": {
        "train": CanonicalSplit((6000,) * 10, "f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9"),
        "test": CanonicalSplit((1000,) * 10, "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
    },
    # Kuzushiji-MNIST is balanced, 6,000 / 1,000 of each class (its README); checksums: none to hand.
    "kmnist": {"train": CanonicalSplit((6000,) * 10), "test": CanonicalSplit((1000,) * 10)},
}


def idx_md5(array: np.ndarray, magic: int) -> str:
    """MD5 of the decompressed IDX file that holds `array` (its header follows from magic and shape)."""
    digest = hashlib.md5(magic.to_bytes(4, "big"), usedforsecurity=False)
    for dim in array.shape:
        digest.update(dim.to_bytes(4, "big"))
    digest.update(np.ascontiguousarray(array, np.uint8))
    return digest.hexdigest()


def _class_differences(found: tuple[int, ...], expected: tuple[int, ...]) -> str:
    diffs = [f"class {c}: {f:,} instead of {e:,}" for c, (f, e) in enumerate(zip(found, expected)) if f != e]
    return ", ".join(diffs[:3]) + (", ..." if len(diffs) > 3 else "")


def check_canonical(dataset: str, idx_dir: str, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Raises DataError, saying what differs, unless the arrays are the official `dataset` split."""
    canonical = CANONICAL[dataset][split]
    refused = f"{idx_dir} does not hold the official {dataset}: its {split} split ({_IDX_PREFIXES[split]}-*)"
    fix = f"; point `idx_dir` at the four original {dataset} IDX files"
    if len(labels) != canonical.size:
        raise DataError(f"{refused} has {len(labels):,} examples, {dataset} has {canonical.size:,}{fix}")
    counts = tuple(np.bincount(labels, minlength=NUM_CLASSES).tolist())
    if counts != canonical.label_counts:
        raise DataError(f"{refused} has another label histogram ({_class_differences(counts, canonical.label_counts)})"
                        f"{fix}")
    if canonical.images_md5 is None:
        return
    found = idx_md5(images, _IMAGES_MAGIC), idx_md5(labels, _LABELS_MAGIC)
    if found != (canonical.images_md5, canonical.labels_md5):
        raise DataError(f"{refused}: its contents differ from the canonical {dataset} (MD5 of the decompressed "
                        f"images and labels: {found[0]}, {found[1]}){fix}")


# --- Preparing the TFDS dataset ----------------------------------------------------------


# The classes themselves: looking a name up (`tfds.builder_cls`) first imports every dataset
# module TFDS has, about 0.8 s.
_BUILDERS = {"mnist": tfds_mnist.MNIST, "fashion_mnist": tfds_mnist.FashionMNIST, "kmnist": tfds_mnist.KMNIST}
assert tuple(_BUILDERS) == DATASETS


def _offline_builder_class(dataset: str, idx_dir: str):
    """The dataset's own TFDS builder, fed from local IDX files instead of its URLs."""
    base = _BUILDERS[dataset]

    class OfflineBuilder(base, skip_registration=True):
        name = base.name

        def _split_generators(self, dl_manager):
            return [tfds.core.SplitGenerator(name=split, gen_kwargs={"split": split}) for split in _IDX_PREFIXES]

        def _generate_examples(self, split):
            images, labels = read_idx_split(idx_dir, split)
            # Same keys as TFDS's own builder, so the stored order matches TFDS's.
            for index, (image, label) in enumerate(zip(images, labels)):
                yield index, {"image": image[..., None], "label": int(label)}

    return OfflineBuilder


def import_idx(config: DataConfig, verify: bool = True, say=print) -> tfds.core.DatasetBuilder:
    """Prepares the TFDS dataset in `config.data_dir` from the IDX folder `config.idx_folder`. TFDS registers whatever
    it is given for every later `tfds.load`: the files must first prove to be the official ones (`check_canonical`).
    `verify=False` is for the tests' small synthetic folders only."""
    folder = config.idx_folder
    if not folder or not os.path.isdir(folder):
        raise DataError(f"`idx_dir` {folder} is not a folder; point `idx_dir` at the four {config.dataset} IDX files")
    for split in _IDX_PREFIXES:  # refuse bad or foreign files before TFDS creates anything
        images, labels = read_idx_split(folder, split)
        if verify:
            check_canonical(config.dataset, folder, split, images, labels)
    with _tfds_quiet():
        builder = _offline_builder_class(config.dataset, folder)(data_dir=config.data_dir)
    with _preparing(builder.data_dir, say):
        with _tfds_quiet():
            done = _BUILDERS[config.dataset](data_dir=config.data_dir)
            if done.is_prepared():  # by another process, while this one waited
                return done
        say(f"Importing {config.dataset} from {folder} into {builder.data_dir} (once)")
        with _tfds_quiet():
            builder.download_and_prepare()
    return builder


def _preparing(dataset_dir: str, say):
    """Holds the import lock of the data folder that holds `dataset_dir` (<data_dir>/<name>/<version>). Two imports into
    one folder would both write the dataset, and TFDS's final rename fails for the second (FileExistsError): the second
    waits, then finds the dataset prepared."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(dataset_dir)))
    os.makedirs(root, exist_ok=True)
    return files.folder_lock(root, on_wait=lambda: say(f"Waiting for another process that is preparing a dataset in {root}"))


@contextlib.contextmanager
def _tfds_quiet():
    """TFDS's own lines about an offline import, kept off for the call only: "Downloading and preparing
    dataset Unknown size" (printed) and "Variant folder ... has no dataset_info.json" (an absl warning)."""
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        absl_logger.setLevel(level)


def _check_reachable(host: str) -> None:
    # TFDS retries an unreachable host for minutes; a quick probe fails fast instead.
    try:
        socket.create_connection((host, 443), timeout=10).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {host} ({e})") from None


def _not_available(config: DataConfig, reason: str) -> DataError:
    unused = config.idx_dir if config.idx_dir and not config.idx_folder else None
    note = f" ({IDX_DIR_ENV} is used for {unused.dataset} only)" if unused else ""
    return DataError(f"{config.dataset} is not prepared in `data_dir` ({config.data_dir or 'TFDS default'}) and "
                     f"could not be downloaded: {reason}. Offline, pass `idx_dir`=FOLDER (or set {IDX_DIR_ENV}, for "
                     f"mnist) to a folder with the four IDX files, or `data_dir` to a prepared copy{note}.")


def _check_data_dir(data_dir: str | None) -> None:
    if data_dir:
        files.check_link("data_dir", data_dir, "pass a folder for the TFDS datasets")
    if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise UsageError(f"`data_dir` {data_dir} is a file; pass a folder for the TFDS datasets (created if missing)")


def prepare(config: DataConfig, say=print) -> tfds.core.DatasetBuilder:
    """Returns a builder whose dataset is prepared: reused, imported offline, or downloaded. `say(line)` tells of an
    import (the one output line of this module)."""
    config.validate()
    _check_data_dir(config.data_dir)
    with _tfds_quiet():
        builder = _BUILDERS[config.dataset](data_dir=config.data_dir)
        prepared = builder.is_prepared()
    if prepared:
        return builder
    if config.idx_folder:
        return import_idx(config, say=say)
    try:
        _check_reachable(urllib.parse.urlparse(_BUILDERS[config.dataset].URL).hostname)
        builder.download_and_prepare()
    except (OSError, ImportError) as e:  # requests' ConnectionError is an OSError
        raise _not_available(config, str(e).splitlines()[0]) from None
    return builder


def load_splits(config: DataConfig, say=print) -> dict[str, Split]:
    """Train (first N - validation_size of TFDS train), validation (the rest) and test."""
    builder = prepare(config, say)
    train = _load_split(builder, "train")
    cut = train.size - config.validation_size
    if cut <= 0:
        raise DataError(f"train split has {train.size} examples, fewer than the validation size")
    return {
        "train": Split(train.images[:cut], train.labels[:cut]),
        "validation": Split(train.images[cut:], train.labels[cut:]),
        "test": _load_split(builder, "test"),
    }


def _load_split(builder, split: str) -> Split:
    """The split as arrays: from the array cache beside the prepared dataset, else decoded from TFDS. TFDS stores each
    image as a PNG in a record: reading and decoding 60,000 of them takes seconds, loading the decoded uint8 arrays back
    about a tenth of a second."""
    images, labels = _read_array_cache(builder, split) or _decode_and_cache(builder, split)
    return Split(tf.constant(images), tf.constant(labels))


def _array_cache_path(builder, split: str) -> str:
    return os.path.join(builder.data_dir, f"{ARRAY_CACHE_PREFIX}{split}.npz")


def _record_files_key(builder, split: str) -> str:
    """Names, sizes and modification times of the split's record files: a re-prepared dataset changes it."""
    pattern = os.path.join(builder.data_dir, f"{builder.name}-{split}.tfrecord*")
    stats = [(os.path.basename(p), os.stat(p)) for p in sorted(tf.io.gfile.glob(pattern))]
    return repr([(name, stat.st_size, stat.st_mtime_ns) for name, stat in stats])


def _read_array_cache(builder, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    path = _array_cache_path(builder, split)
    try:
        with np.load(path) as cached:
            key, images, labels = str(cached["key"]), cached["images"], cached["labels"]
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
        return None  # missing, or unreadable: decoded again from the records
    count = builder.info.splits[split].num_examples
    if (key != _record_files_key(builder, split) or images.shape != (count, NUM_PIXELS) or images.dtype != np.uint8
            or labels.shape != (count,) or labels.dtype != np.int32):
        return None
    return images, labels


def _decode_and_cache(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images, labels = arrays["image"].reshape(-1, NUM_PIXELS), arrays["label"].astype(np.int32)
    with contextlib.suppress(OSError):  # a read-only data_dir: no cache, still correct
        files.write_with(_array_cache_path(builder, split),
                         lambda f: np.savez(f, key=_record_files_key(builder, split), images=images, labels=labels))
    return images, labels


# --- Pixels ----------------------------------------------------------------------------


def to_float(images: tf.Tensor) -> tf.Tensor:
    return tf.cast(images, tf.float32) / 255.0


def write_test_digits(folder: str, count: int, config: DataConfig, say=print) -> None:
    """The first `count` test images of `config`'s dataset as folder/test-N.png; refuses to replace a file."""
    paths = [os.path.join(folder, f"test-{i}.png") for i in range(count)]
    files.check_link("write_test_digits", folder, "pass another folder")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"{folder} is not a folder; pass a folder for the PNG files", field="write_test_digits")
    taken = [p for p in paths if os.path.lexists(p)]
    if taken:
        raise UsageError(f"{taken[0]} exists; pass another folder", field="write_test_digits")
    test = load_splits(config, say=say)["test"]
    os.makedirs(folder, exist_ok=True)
    for path, image, label in zip(paths, test.images[:count], test.labels[:count].numpy()):
        png = tf.io.encode_png(tf.reshape(image, (IMAGE_SIZE, IMAGE_SIZE, 1))).numpy()
        files.write_with(path, lambda f: f.write(png))
        say(f"Wrote {path}: a {label}")
