"""The best checkpoint by validation accuracy, and early stopping.

Besides the latest checkpoints, a run keeps the one with the best validation accuracy
in `ckpt_dir/best/` (a CheckpointManager of its own, so the latest's pruning never
deletes it) with `best/best.json` beside it. A resumed run reads best.json first, so it
only replaces the best by a better one.
"""

import tensorflow as tf

from mnist_dnn.lib import checkpoints, evaluation


class BestKeeper:
    """Saves the checkpoint of each new best validation accuracy; decides early stopping.

    `patience` counts evaluations (every `eval_every` steps) without improvement; 0 is off.
    Counting is by steps since the best, so it survives a resume without extra state.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, ckpt_dir: str, patience: int, eval_every: int,
                 resume_from: str | None = None):
        """Saves into `ckpt_dir/best`; the best so far is read from `resume_from` (default: `ckpt_dir`)."""
        self.ckpt_dir = ckpt_dir
        self.manager = tf.train.CheckpointManager(
            checkpoint, checkpoints.best_dir(ckpt_dir), max_to_keep=1, checkpoint_name=checkpoints.CHECKPOINT_NAME)
        self.best = checkpoints.read_best(resume_from or ckpt_dir)
        self.patience = patience
        self.eval_every = eval_every

    def update(self, step: int, metrics: evaluation.Metrics, save) -> bool:
        """Records an evaluation; saves through `save(manager, step)` on a new best. True: improved."""
        if self.best is not None and metrics.accuracy <= self.best.accuracy:
            return False
        save(self.manager, step)
        self.best = checkpoints.Best(step, metrics.loss, metrics.accuracy)
        checkpoints.write_best(self.ckpt_dir, self.best)  # after the checkpoint: it never names a missing one
        return True

    def should_stop(self, step: int) -> bool:
        """True once `patience` evaluations in a row have not beaten the best."""
        if not self.patience or self.best is None:
            return False
        return step - self.best.step >= self.patience * self.eval_every

    def stop_message(self, step: int) -> str:
        return (f"Stopped early at step {step}: no better validation accuracy in {self.patience} evaluations "
                f"(--early_stopping_patience); best {self.best.accuracy:.2%} at step {self.best.step}")
