"""Reading trained checkpoints: what the course did with `tf.train.Saver.restore` and
`tf.train.NewCheckpointReader`, for the tools that evaluate, export and inspect a run.

Which checkpoint and how to rebuild its model are the run folder's business (`run_dir`).
"""

import dataclasses
import math
import os
import re

import keras
import numpy as np
import tensorflow as tf

from mnist_dnn.lib import serving
from mnist_dnn.lib.errors import CheckpointError, UsageError, first_line
from mnist_dnn.lib.models import create_model
from mnist_dnn.lib.run_dir import RESTORE_ERRORS, WHICH, RunConfig, RunDir


def resolve_checkpoint(ckpt_dir: str, checkpoint: str | None = None, which: str = "latest") -> str:
    """The checkpoint a tool reads: the given one, else the latest or the best of `ckpt_dir`."""
    if which not in WHICH:
        raise UsageError(f"`which` must be one of {', '.join(WHICH)}, got {which!r}")
    if checkpoint:
        if which != "latest":
            raise UsageError("pass either `checkpoint` or `which`=best, not both")
        return _existing_checkpoint(checkpoint)
    if os.path.exists(ckpt_dir) and not os.path.isdir(ckpt_dir):
        raise UsageError(f"`ckpt_dir` {ckpt_dir} is a file, not a run folder; point it at the folder train wrote")
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"`ckpt_dir` {ckpt_dir} does not exist; train first or point it at a run folder")
    run = RunDir(ckpt_dir)
    path = run.latest() if which == "latest" else run.best_checkpoint()
    exported = None if path else serving.exported_model(ckpt_dir)
    if exported:
        raise UsageError(f"`ckpt_dir` {ckpt_dir} holds {exported}: an export, not a training run's folder; read it "
                         f"with predict or serve (--model_dir={ckpt_dir}), or pass the run folder it was exported from")
    if path is None and which == "latest":
        raise CheckpointError(f"`ckpt_dir` {ckpt_dir} holds no checkpoint; train first or point it elsewhere")
    if path is None:
        raise CheckpointError(f"{ckpt_dir} has no best checkpoint yet (it is saved at each validation); "
                              "train on, or use `which`=latest")
    return path


def _existing_checkpoint(path: str) -> str:
    if os.path.isdir(path):
        raise UsageError(f"`checkpoint` {path} is a folder; name a checkpoint such as {os.path.join(path, 'model.ckpt-1000')}, "
                         "or pass the folder as `ckpt_dir`")
    if not os.path.isfile(path + ".index"):
        raise CheckpointError(f"`checkpoint` {path} does not exist ({path}.index is missing); "
                              "name one such as checkpoints/model.ckpt-1000")
    return path


def restore_model(ckpt_dir: str, checkpoint: str | None = None, which: str = "latest") -> tuple[keras.Model, RunConfig, str, int]:
    """Rebuilds the stored model and restores its weights; fails unless all are restored.

    Reads `checkpoint`, or else the latest or best (`which`) of `ckpt_dir`. If training pruned
    the latest meanwhile, the newest one left is read. Returns (model, run config, path, step).
    """
    for _ in range(3):  # a trainer saving every step can prune the latest between lookup and read
        path = resolve_checkpoint(ckpt_dir, checkpoint, which)
        config = RunDir.of_checkpoint(path).load_config()
        try:
            return _restore(path, config)
        except _Pruned:
            continue
    raise CheckpointError(f"the checkpoints of {ckpt_dir} kept being pruned by a running trainer; try again")


class _Pruned(Exception):
    pass


def _restore(path: str, config: RunConfig):
    model = create_model(config.model)
    step = tf.Variable(0, dtype=tf.int64)
    try:
        # The optimizer's slots are in the file too: not needed here, hence expect_partial.
        status = tf.train.Checkpoint(step=step, model=model).restore(path).expect_partial()
        status.assert_existing_objects_matched()
    except RESTORE_ERRORS as e:
        if not os.path.exists(path + ".index"):
            raise _Pruned() from None
        raise CheckpointError(f"cannot restore {path} into {config.describe()}: {first_line(e)}") from None
    return model, config, path, int(step.numpy())


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
        summaries = [_summarize(reader, key, shape) for key, shape in sorted(keys_and_shapes, key=lambda kv: _natural_key(kv[0]))]
        step_key = "step/.ATTRIBUTES/VARIABLE_VALUE"
        step = int(reader.get_tensor(step_key)) if reader.has_tensor(step_key) else None
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"cannot read checkpoint {path} (damaged or incomplete): {first_line(e)}") from None
    return step, summaries


def _summarize(reader, key: str, shape) -> VariableSummary:
    dtype = reader.get_variable_to_dtype_map()[key]
    summary = VariableSummary(key, tuple(shape), dtype.name)
    if (dtype.is_floating or dtype.is_integer or dtype.is_bool) and math.prod(shape) > 0:
        value = np.asarray(reader.get_tensor(key), dtype=np.float64)
        summary = dataclasses.replace(summary, min=float(value.min()), mean=float(value.mean()), max=float(value.max()))
    return summary
