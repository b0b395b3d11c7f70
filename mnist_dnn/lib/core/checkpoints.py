"""Reading trained checkpoints: what the course did with `tf.train.Saver.restore` and `tf.train.NewCheckpointReader`,
for the tools that evaluate, export and inspect a run. Which checkpoint and how to rebuild its model are the run
folder's business (`run_dir`)."""

import contextlib
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from mnist_dnn.lib.core import export_dir
from mnist_dnn.lib.errors import CheckpointError, UsageError, first_line
from mnist_dnn.lib.core.models import create_model
from mnist_dnn.lib.core.checkpoint_store import RESTORE_ERRORS
from mnist_dnn.lib.core.run_dir import CONFIG_FILE, WHICH, RunConfig, RunDir


def resolve_checkpoint(ckpt_dir: str, checkpoint: str | None = None, which: str = "latest") -> str:
    """The checkpoint a tool reads: the given one, else the latest or the best of `ckpt_dir`."""
    if which not in WHICH:
        raise UsageError(f"`which` must be one of {', '.join(WHICH)}, got {which!r}")
    if checkpoint:
        if which != "latest":
            raise UsageError("pass either `checkpoint` or `which`=best, not both")
        return _existing_checkpoint(checkpoint)
    run = RunDir(ckpt_dir)
    run.check_readable()
    path = run.latest() if which == "latest" else run.best_checkpoint()
    exported = None if path else export_dir.exported_model(ckpt_dir)
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
    """Rebuilds the stored model and restores its weights; fails unless all are restored. Reads `checkpoint`, or else
    the latest or best (`which`) of `ckpt_dir`, from a private copy (`_held`) that a trainer pruning beside it cannot
    remove; if the trainer pruned it before it was held, the newest one left is read. Returns (model, run config, path,
    step)."""
    return _newest_held(ckpt_dir, checkpoint, which,
                        lambda path, copy: _restore(path, copy, RunDir.of_checkpoint(path).load_config()))


# A trainer saving every step prunes a checkpoint within milliseconds of writing it; holding one
# takes microseconds, so a handful of tries always finds one.
_TRIES = 20


def _newest_held(ckpt_dir: str, checkpoint: str | None, which: str, read):
    """`read(path, copy)` of the checkpoint `resolve_checkpoint` finds, held; again on the newest if it was pruned."""
    for _ in range(_TRIES):
        path = resolve_checkpoint(ckpt_dir, checkpoint, which)
        try:
            with _held(path) as copy:
                return read(path, copy)
        except _Pruned:
            if checkpoint:  # the one named: no other will do
                raise _named_checkpoint_gone(checkpoint) from None
    raise CheckpointError(f"the checkpoints of {ckpt_dir} kept being pruned by a running trainer; try again")


class _Pruned(Exception):
    pass


def _named_checkpoint_gone(checkpoint: str) -> CheckpointError:
    if os.path.exists(checkpoint + ".index"):  # (a trainer prunes the data files first, in microseconds)
        return CheckpointError(f"`checkpoint` {checkpoint} is incomplete: a data file ({checkpoint}.data-*) is missing")
    return CheckpointError(f"`checkpoint` {checkpoint} was removed while it was read (pruned by a running "
                           "trainer?); name a newer one")


@contextlib.contextmanager
def _held(path: str):
    """A private copy of the checkpoint `path`; raises _Pruned if its files are already gone. Its files are all opened
    first: an open file stays readable after a trainer deletes it."""
    names = [path + ".index", *glob.glob(glob.escape(path) + ".data-*-of-*")]
    match = re.search(r"-of-(\d+)$", names[-1])
    if not match or len(names) != 1 + int(match[1]):
        raise _Pruned()
    with contextlib.ExitStack() as opening, tempfile.TemporaryDirectory(prefix="mnist_dnn-checkpoint-") as folder:
        try:
            opened = [opening.enter_context(open(name, "rb")) for name in names]
        except FileNotFoundError:
            raise _Pruned() from None
        for source in opened:
            with open(os.path.join(folder, os.path.basename(source.name)), "wb") as copy:
                shutil.copyfileobj(source, copy)
        yield os.path.join(folder, os.path.basename(path))


def _restore(path: str, copy: str, config: RunConfig):
    """The model of `config` with the weights of `copy` (the held checkpoint `path`)."""
    model = create_model(config.model)
    step = tf.Variable(0, dtype=tf.int64)
    try:
        # The optimizer's slots are in the file too: not needed here, hence expect_partial.
        status = tf.train.Checkpoint(step=step, model=model).restore(copy).expect_partial()
        status.assert_existing_objects_matched()
    except RESTORE_ERRORS as e:
        message = first_line(e).replace(copy, path)
        raise CheckpointError(f"cannot restore {path} into {config.describe()}: {message}") from None
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


def read_checkpoint_variables(ckpt_dir: str, checkpoint: str | None = None, which: str = "latest"):
    """(path, step, summaries) of the checkpoint `restore_model` would read, read as it reads it."""
    return _newest_held(ckpt_dir, checkpoint, which, lambda path, copy: (path, *read_variables(copy, path)))


def read_variables(path: str, shown_as: str | None = None) -> tuple[int | None, list[VariableSummary]]:
    """The stored global step (None if absent) and every value in the checkpoint, by key."""
    shown_as = shown_as or path
    try:
        reader = tf.train.load_checkpoint(path)
        keys_and_shapes = tf.train.list_variables(path)
        summaries = [_summarize(reader, key, shape) for key, shape in sorted(keys_and_shapes, key=lambda kv: _natural_key(kv[0]))]
        step_key = "step/.ATTRIBUTES/VARIABLE_VALUE"
        step = int(reader.get_tensor(step_key)) if reader.has_tensor(step_key) else None
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
        message = first_line(e).replace(path, shown_as)
        raise CheckpointError(f"cannot read checkpoint {shown_as} (damaged or incomplete): {message}") from None
    return step, summaries


def _summarize(reader, key: str, shape) -> VariableSummary:
    dtype = reader.get_variable_to_dtype_map()[key]
    summary = VariableSummary(key, tuple(shape), dtype.name)
    if (dtype.is_floating or dtype.is_integer or dtype.is_bool) and math.prod(shape) > 0:
        value = np.asarray(reader.get_tensor(key), dtype=np.float64)
        summary = dataclasses.replace(summary, min=float(value.min()), mean=float(value.mean()), max=float(value.max()))
    return summary


def check_dataset(path: str, config: RunConfig, dataset: str | None) -> None:
    """Refuses a checkpoint trained on another dataset than `dataset` (None: any)."""
    if dataset and dataset != config.dataset:
        raise UsageError(f"is {dataset}, but {path} was trained on {config.dataset}; a model is scored and exported "
                         f"with its own dataset: drop `dataset`, or pass a run trained on {dataset}", field="dataset")


def stored_config(checkpoint: str) -> tuple[str, dict | CheckpointError]:
    """(the file in the run folder of `checkpoint` that holds its run's config, the config or why there is none)."""
    try:
        return CONFIG_FILE, json.loads(RunDir.of_checkpoint(checkpoint).load_config().to_json())
    except CheckpointError as e:
        return CONFIG_FILE, e
