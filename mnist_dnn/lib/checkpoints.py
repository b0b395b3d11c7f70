"""Checkpoints: what `tf.train.Saver` did in the course, plus the stored model config.

A checkpoint folder holds `model.ckpt-<step>.{index,data-*}` files managed by
`tf.train.CheckpointManager`, and `model_config.json`, which says how to rebuild the
model (and on which dataset it trained), so evaluation and export need no flags for it.
"""

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import re

import keras
import numpy as np
import tensorflow as tf

from mnist_dnn.lib import files
from mnist_dnn.lib.errors import CheckpointError, UsageError
from mnist_dnn.lib.models import ModelConfig, create_model, make_config

CONFIG_FILE = "model_config.json"
CHECKPOINT_NAME = "model.ckpt"
LOCK_FILE = "train.lock"
BEST_DIR = "best"  # ckpt_dir/best/: the best validation checkpoint, out of reach of the latest's pruning
BEST_FILE = "best.json"
WHICH = ("latest", "best")
# What restoring a damaged or mismatched checkpoint raises (a truncated file: IndexError).
RESTORE_ERRORS = (tf.errors.OpError, ValueError, AssertionError, IndexError)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a checkpoint folder was trained as: the model and its dataset."""

    model: ModelConfig
    dataset: str = "mnist"

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self.model), "dataset": self.dataset}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        fields = json.loads(text)
        model = make_config(fields["name"], fields["hidden_units"], fields.get("dropout", 0.0))
        return cls(model, fields["dataset"])


def config_path(ckpt_dir: str) -> str:
    return os.path.join(ckpt_dir, CONFIG_FILE)


def load_run_config(ckpt_dir: str) -> RunConfig:
    path = config_path(ckpt_dir)
    try:
        with open(path) as f:
            return RunConfig.from_json(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: is {ckpt_dir} a folder written by mnist_dnn.train?") from None
    except (ValueError, KeyError, TypeError, UsageError) as e:
        raise CheckpointError(f"{path} is malformed ({e}); restore it or train again") from None


def save_run_config(ckpt_dir: str, config: RunConfig) -> None:
    """Writes the config atomically (temporary file, then rename)."""
    os.makedirs(ckpt_dir, exist_ok=True)
    files.write_text(config_path(ckpt_dir), config.to_json())


def latest_checkpoint(ckpt_dir: str) -> str:
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"--ckpt_dir {ckpt_dir} does not exist; train first or point it at a checkpoint folder")
    path = tf.train.latest_checkpoint(ckpt_dir)
    if path is None:
        raise CheckpointError(f"--ckpt_dir {ckpt_dir} holds no checkpoint; train first or point it elsewhere")
    return path


def best_dir(ckpt_dir: str) -> str:
    return os.path.join(ckpt_dir, BEST_DIR)


def run_dir(checkpoint_path: str) -> str:
    """The folder whose model_config.json describes a checkpoint: its own, or for `best/` its parent."""
    folder = os.path.dirname(checkpoint_path) or "."
    return os.path.dirname(folder) or "." if os.path.basename(folder) == BEST_DIR else folder


@dataclasses.dataclass(frozen=True)
class Best:
    """The checkpoint with the best validation accuracy so far (`best/best.json`)."""

    step: int
    loss: float
    accuracy: float


def read_best(ckpt_dir: str) -> Best | None:
    """The recorded best of a folder, or None if it has none yet."""
    path = os.path.join(best_dir(ckpt_dir), BEST_FILE)
    try:
        with open(path) as f:
            fields = json.load(f)
        return Best(int(fields["step"]), float(fields["validation"]["loss"]), float(fields["validation"]["accuracy"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is malformed ({e}); delete {best_dir(ckpt_dir)} to start the best over") from None


def write_best(ckpt_dir: str, best: Best) -> None:
    """Writes best.json atomically (temporary file, then rename)."""
    path = os.path.join(best_dir(ckpt_dir), BEST_FILE)
    files.write_json(path, {"step": best.step, "validation": {"loss": best.loss, "accuracy": best.accuracy}})


def resolve_checkpoint(ckpt_dir: str, checkpoint: str | None = None, which: str = "latest") -> str:
    """The checkpoint a tool reads: the given one, else the latest or the best of `ckpt_dir`."""
    if which not in WHICH:
        raise UsageError(f"--which must be one of {', '.join(WHICH)}, got {which!r}")
    if checkpoint:
        if which != "latest":
            raise UsageError("pass either --checkpoint or --which=best, not both")
        return checkpoint
    if which == "latest":
        return latest_checkpoint(ckpt_dir)
    latest_checkpoint(ckpt_dir)  # the same errors for a missing or empty folder
    path = tf.train.latest_checkpoint(best_dir(ckpt_dir))
    if path is None:
        raise CheckpointError(f"{ckpt_dir} has no best checkpoint yet (it is saved at each validation); "
                              "train on, or use --which=latest")
    return path


def checkpoint_step(path: str) -> int:
    """The global step in a checkpoint's name, as in `model.ckpt-1000`."""
    return int(path.rsplit("-", 1)[1])


def restore_model(ckpt_dir: str, checkpoint: str | None = None, which: str = "latest") -> tuple[keras.Model, RunConfig, str, int]:
    """Rebuilds the stored model and restores its weights; fails unless all are restored.

    Reads `checkpoint`, or else the latest or best (`which`) of `ckpt_dir`.
    Returns (model, run config, checkpoint path, step).
    """
    path = resolve_checkpoint(ckpt_dir, checkpoint, which)
    config = load_run_config(run_dir(path))
    model = create_model(config.model)
    step = tf.Variable(0, dtype=tf.int64)
    try:
        # The optimizer's slots are in the file too: not needed here, hence expect_partial.
        status = tf.train.Checkpoint(step=step, model=model).restore(path).expect_partial()
        status.assert_existing_objects_matched()
    except RESTORE_ERRORS as e:
        message = str(e).strip().splitlines()[0]
        raise CheckpointError(f"cannot restore {path} into {config.model}: {message}") from None
    return model, config, path, int(step.numpy())


@contextlib.contextmanager
def exclusive_lock(ckpt_dir: str):
    """Holds the folder's training lock; a second trainer on the folder is refused.

    An flock dies with its process, so a killed trainer never leaves the folder locked.
    """
    path = os.path.join(ckpt_dir, LOCK_FILE)
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                f"another training run is using {ckpt_dir} (it holds {path}); wait for it to end or pass another --ckpt_dir"
            ) from None
        yield


@dataclasses.dataclass(frozen=True)
class VariableSummary:
    """One value stored in a checkpoint, under its key (the object path to the variable)."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    min: float | None = None  # None when not numeric or empty
    mean: float | None = None
    max: float | None = None


def _natural_key(key: str) -> list:
    """Sorts `optimizer/_variables/2` before `optimizer/_variables/10`."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", key))]


def read_variables(path: str) -> tuple[int | None, list[VariableSummary]]:
    """The stored global step (None if absent) and every value in the checkpoint, by key."""
    try:
        reader = tf.train.load_checkpoint(path)
        keys_and_shapes = tf.train.list_variables(path)
    except (tf.errors.OpError, ValueError) as e:
        message = str(e).strip().splitlines()[0]
        raise CheckpointError(f"cannot read checkpoint {path}: {message}") from None
    dtypes = reader.get_variable_to_dtype_map()
    summaries = []
    for key, shape in sorted(keys_and_shapes, key=lambda item: _natural_key(item[0])):
        dtype = dtypes[key]
        summary = VariableSummary(key, tuple(shape), dtype.name)
        if (dtype.is_floating or dtype.is_integer or dtype.is_bool) and math.prod(shape) > 0:
            value = np.asarray(reader.get_tensor(key), dtype=np.float64)
            summary = dataclasses.replace(summary, min=float(value.min()), mean=float(value.mean()), max=float(value.max()))
        summaries.append(summary)
    step_key = "step/.ATTRIBUTES/VARIABLE_VALUE"
    step = int(reader.get_tensor(step_key)) if reader.has_tensor(step_key) else None
    return step, summaries
