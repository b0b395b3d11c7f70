"""The checkpoints of a run folder on disk: found, written, linked, pruned, set aside (the layout: `run_dir`).
Checkpoints are found from their own files, so a missing, empty or garbled state file loses nothing. A checkpoint file
that exists is never written over, and no checkpoint is written whose weights are not all finite."""

import contextlib
import dataclasses
import glob
import json
import os
import re
import shutil

import numpy as np
import tensorflow as tf

from mnist_dnn.lib import files
from mnist_dnn.lib.errors import CheckpointError, TrainingError, first_line

CHECKPOINT_NAME = "model.ckpt"
STATE_FILE = "checkpoint"
BEST_DIR = "best"
BEST_FILE = "best.json"
# What restoring a damaged or mismatched checkpoint raises (a truncated file: IndexError).
RESTORE_ERRORS = (tf.errors.OpError, ValueError, AssertionError, IndexError)
_INDEX = re.compile(re.escape(CHECKPOINT_NAME) + r"-(\d+)\.index$")


@dataclasses.dataclass(frozen=True)
class Best:
    """The checkpoint with the best validation accuracy so far (`best/best.json`)."""

    step: int
    loss: float
    accuracy: float


class CheckpointStore:
    """The numbered checkpoints of a folder, and the best one in its best/."""

    def __init__(self, path: str):
        self.path = path
        self.best_dir = os.path.join(path, BEST_DIR)
        self._best_written = None  # the step of the best checkpoint this object wrote, if any

    def steps(self, folder: str | None = None) -> list[int]:
        """Steps of the complete checkpoints (index and every data shard present), ascending."""
        folder = folder or self.path
        found = []
        for index in glob.glob(os.path.join(glob.escape(folder), f"{CHECKPOINT_NAME}-*.index")):
            match = _INDEX.search(os.path.basename(index))
            if match and _has_all_shards(index[: -len(".index")]):
                found.append(int(match.group(1)))
        return sorted(found)

    def checkpoint_path(self, step: int, folder: str | None = None) -> str:
        return os.path.join(folder or self.path, f"{CHECKPOINT_NAME}-{step}")

    def latest(self) -> str | None:
        steps = self.steps() if os.path.isdir(self.path) else []
        return self.checkpoint_path(steps[-1]) if steps else None

    def restore_newest(self, checkpoint: tf.train.Checkpoint, set_aside: bool = False, say=print) -> str | None:
        """Restores the newest checkpoint that reads back whole into `checkpoint` (variable for variable); None if there
        is none. One of another structure, or damaged, is skipped with a `warning: ` line to `say`; with `set_aside`
        (the trainer owning the folder) a damaged one is renamed `model.ckpt-<step>-damaged`, out of the way of the save
        that will reach its step again, unless none restores. Nothing may re-initialize afterwards."""
        steps = self.steps() if os.path.isdir(self.path) else []
        damaged = []  # (path, why)
        for step in reversed(steps):
            path = self.checkpoint_path(step)
            try:
                checkpoint.restore(path).assert_consumed()
            except AssertionError:
                say(f"warning: skipping {path}: it does not match this run's model and optimizer")
                continue
            except RESTORE_ERRORS as e:
                damaged.append((path, first_line(e)))
                continue
            _skip_damaged(damaged, set_aside, say)
            return path
        _skip_damaged(damaged, False, say)  # a refused run changes nothing
        if steps:
            raise _none_restores(self.path, len(steps), len(damaged))
        return None

    def save(self, checkpoint: tf.train.Checkpoint, step: int, weights, keep: int) -> str:
        """Writes `model.ckpt-<step>`, then forgets all but the newest `keep`. Never overwrites."""
        if not self._link_best(step):
            self._write(checkpoint, step, weights, self.path)
        steps = self.steps()
        self._write_state_file(steps[-keep:])
        for old in steps[:-keep]:
            _remove_checkpoint(self.checkpoint_path(old))
        return self.checkpoint_path(step)

    def _write(self, checkpoint, step: int, weights, folder: str) -> str:
        path = self.checkpoint_path(step, folder)
        if os.path.exists(path + ".index"):
            raise CheckpointError(f"{path} exists already and is never written over; pass another `ckpt_dir`")
        values = [np.asarray(v) for v in weights]
        if not all(np.isfinite(v).all() for v in values if np.issubdtype(v.dtype, np.floating)):
            raise TrainingError(f"the weights at step {step} are not all finite, so they were not saved; "
                                f"last good checkpoint: {self.latest() or 'none'}. Lower `learning_rate`")
        checkpoint.save_counter  # noqa: B018 (creates it, so it is written too: restoring expects it)
        try:
            return checkpoint.write(path)
        except (OSError, tf.errors.OpError) as e:
            _remove_temporary(glob.escape(path))
            raise CheckpointError(f"cannot write a checkpoint to {folder}: {first_line(e)}; free some space or fix "
                                  "its permissions, then resume (earlier checkpoints are intact)") from None

    def _write_state_file(self, steps: list[int]) -> None:
        names = [f"{CHECKPOINT_NAME}-{s}" for s in steps]
        lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
        files.write_text(os.path.join(self.path, STATE_FILE), "\n".join(lines) + "\n")

    def remove_leftovers(self) -> None:
        """Removes the temporary folders of a save that a crash or a full disk interrupted."""
        _remove_temporary(os.path.join(glob.escape(self.path), f"{CHECKPOINT_NAME}-*"))

    def read_best(self) -> Best | None:
        path = os.path.join(self.best_dir, BEST_FILE)
        try:
            with open(path) as f:
                fields = json.load(f)
            return Best(int(fields["step"]), float(fields["validation"]["loss"]), float(fields["validation"]["accuracy"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} is malformed ({e}); delete {self.best_dir} to start the best over") from None

    def save_best(self, checkpoint: tf.train.Checkpoint, best: Best, weights) -> None:
        """Keeps one checkpoint in best/: the new one, then best.json naming it, then the old one goes."""
        os.makedirs(self.best_dir, exist_ok=True)
        older = self.steps(self.best_dir)
        if best.step not in older:
            self._write(checkpoint, best.step, weights, self.best_dir)
            self._best_written = best.step
        files.write_json(os.path.join(self.best_dir, BEST_FILE),
                         {"step": best.step, "validation": {"loss": best.loss, "accuracy": best.accuracy}})
        for step in older:
            if step != best.step:
                _remove_checkpoint(self.checkpoint_path(step, self.best_dir))

    def _link_best(self, step: int) -> bool:
        """Hard-links the best checkpoint of `step`, if this object wrote it (the state in memory now), into the run
        folder instead of writing the same state again; safe as checkpoint files are never written over. False, and
        nothing changed, if there is none to link or the run folder has files of that name."""
        source, target = self.checkpoint_path(step, self.best_dir), self.checkpoint_path(step)
        if (self._best_written != step or step not in self.steps(self.best_dir)
                or glob.glob(glob.escape(target) + ".*")):
            return False
        linked = []
        try:
            for path in _checkpoint_files(source):
                linked.append(target + path[len(source):])
                os.link(path, linked[-1])
        except OSError:  # a file system without hard links: written instead
            for path in linked:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            return False
        return True

    def best_checkpoint(self) -> str | None:
        best = self.read_best()
        found = best and best.step in self.steps(self.best_dir)
        return self.checkpoint_path(best.step, self.best_dir) if found else None


def _skip_damaged(damaged: list[tuple[str, str]], set_aside: bool, say) -> None:
    for path, why in damaged:
        aside = _set_aside(path) if set_aside else "left in place"
        say(f"warning: skipping {path}: it is damaged ({why}); {aside}")


def _none_restores(folder: str, count: int, damaged: int) -> CheckpointError:
    """Why no checkpoint of `folder` restored: damage, another structure, or both."""
    fix = "pass another `ckpt_dir`, or move them away to start over"
    if damaged == count:
        what = f"the one checkpoint in {folder} is" if count == 1 else f"all {count} checkpoints in {folder} are"
        return CheckpointError(f"{what} damaged; {fix}")
    return CheckpointError(f"none of the {count} checkpoints in {folder} restores: {count - damaged} do not match "
                           f"this run's model and optimizer{f' and {damaged} are damaged' if damaged else ''}; {fix}")


def _has_all_shards(prefix: str) -> bool:
    shards = glob.glob(glob.escape(prefix) + ".data-*-of-*")
    return bool(shards) and len(shards) == int(shards[0].rsplit("-of-", 1)[1])


def _checkpoint_files(prefix: str) -> list[str]:
    """The data shards, then the index (written last, so a checkpoint counts once it is there)."""
    return glob.glob(glob.escape(prefix) + ".data-*") + glob.glob(glob.escape(prefix) + ".index")


def _remove_checkpoint(prefix: str) -> None:
    for path in _checkpoint_files(prefix):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _set_aside(prefix: str) -> str:
    """Renames a damaged checkpoint's files to `<prefix>-damaged.*`; says where they went."""
    for path in _checkpoint_files(prefix):
        os.replace(path, prefix + "-damaged" + path[len(prefix):])
    return f"moved aside to {os.path.basename(prefix)}-damaged"


def _remove_temporary(pattern: str) -> None:
    """The temporary files and folders of the saves of checkpoints `pattern` (a glob) that did not end."""
    for leftover in glob.glob(pattern + "_temp*"):
        shutil.rmtree(leftover, ignore_errors=True) if os.path.isdir(leftover) else os.remove(leftover)
