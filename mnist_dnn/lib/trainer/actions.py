"""The periodic work of a training run, as actions the controller calls: log training
metrics (with progress), validate (best checkpoint, early stopping, diagnostics), save."""

import contextlib
import shutil
import sys
import textwrap
import time

import tensorflow as tf

from mnist_dnn.lib.core import evaluation, exporting
from mnist_dnn.lib.trainer import diagnostics
from mnist_dnn.lib.trainer.summaries import log_scalars
from mnist_dnn.lib.core.checkpoint_store import Best


class Clock:
    """Training time, without the pauses (validation, saving) that are not training."""

    def __init__(self):
        self.started = self.interval_start = time.perf_counter()
        self.paused_seconds = 0.0

    @contextlib.contextmanager
    def paused(self):
        started = time.perf_counter()
        yield
        pause = time.perf_counter() - started
        self.interval_start += pause
        self.paused_seconds += pause

    def lap(self) -> float:
        """Seconds since the last lap, pauses excluded."""
        now = time.perf_counter()
        seconds, self.interval_start = now - self.interval_start, now
        return seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.paused_seconds


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}:{seconds:02d}"


class TrainingLog:
    """Training loss, accuracy, learning rate and examples/s: to TensorBoard, and as progress: on a terminal,
    tqdm's bar fitted to its width (never wrapped); otherwise a line per report, fit for logs."""

    def __init__(self, writer, metrics, optimizer, start_step: int, max_steps: int, clock: Clock, say=print):
        self.writer, self.metrics, self.optimizer, self.clock, self.say = writer, metrics, optimizer, clock, say
        self.start_step, self.max_steps = start_step, max_steps
        self.examples, self.seconds = 0.0, 0.0  # totals over the reports
        self.interactive = sys.stdout.isatty()
        self.bar = None  # made at the first report: after the run's first line, its ETA without the compilation

    @property
    def examples_per_second(self) -> float | None:
        return self.examples / self.seconds if self.seconds else None

    def __call__(self, step: int) -> None:
        seconds, examples = self.clock.lap(), float(self.metrics.examples.result())
        first = self.seconds == 0.0
        self.examples, self.seconds = self.examples + examples, self.seconds + seconds
        loss, accuracy = float(self.metrics.loss.result()), float(self.metrics.accuracy.result())
        learning_rate = float(tf.convert_to_tensor(self.optimizer.learning_rate))
        log_scalars(self.writer, step, "train", loss=loss, accuracy=accuracy, learning_rate=learning_rate)
        self.metrics.reset()
        rate = examples / seconds if seconds else 0.0
        if self.interactive:
            self._show(step, f"loss {loss:.4f}, accuracy {accuracy:.2%}, {rate:,.0f} ex/s")
        else:
            self.say(self._line(step, loss, accuracy, rate, first))

    def _show(self, step: int, figures: str) -> None:
        import tqdm  # (a dependency of TFDS: installed with it)

        if self.bar is None:
            self.bar = tqdm.tqdm(total=self.max_steps, initial=step, file=sys.stdout, mininterval=0.2, smoothing=0.1,
                                 bar_format="step {n}/{total} {bar} {elapsed}<{remaining}{postfix}")
        # The terminal's width now (it may have changed), less room for the "^C" a terminal echoes at a Ctrl-C.
        self.bar.ncols = shutil.get_terminal_size().columns - 2
        self.bar.set_postfix_str(figures, refresh=False)
        self.bar.update(step - self.bar.n)
        self.bar.refresh()

    def _line(self, step: int, loss: float, accuracy: float, rate: float, first: bool) -> str:
        done = step - self.start_step
        elapsed = self.clock.elapsed()
        eta = elapsed / done * (self.max_steps - step) if done else 0.0
        note = " (this interval includes compiling the loop)" if first else ""
        return (f"step {step}/{self.max_steps} ({step / self.max_steps:.0%}): loss {loss:.4f}, train accuracy "
                f"{accuracy:.2%}, {rate:,.0f} examples/s{note}; elapsed {_duration(elapsed)}, ETA {_duration(eta)}")

    def message(self, text: str) -> None:
        """A line of its own (the run's first line, validations, how it ended): above the progress bar, which
        stays whole. On a terminal, broken between words to its width rather than wrapped by it."""
        if self.interactive:
            text = textwrap.fill(text, shutil.get_terminal_size().columns - 1, subsequent_indent="  ",
                                 break_long_words=False, break_on_hyphens=False)
        with self.bar.external_write_mode() if self.bar else contextlib.nullcontext():
            self.say(text)

    def close(self) -> None:
        """Leaves the bar as it last was, on its own line: what follows starts on the next."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def patience_exhausted(best: Best | None, step: int, patience: int, eval_every: int) -> bool:
    """True once `patience` evaluations in a row have not beaten the best (0: never)."""
    return bool(patience) and best is not None and step - best.step >= patience * eval_every


class Validation:
    """Scores the validation split; keeps the best checkpoint; decides early stopping; writes diagnostics. `patience`
    counts evaluations (every `eval_every` steps) without a better accuracy; 0 is off. Counting is by steps since the
    best, so it survives a resume without extra state. `on_result(step, metrics)` (a search's pruner) gets each result;
    True requests the stop (`pruned`)."""

    def __init__(self, state, split, writer, save_best, best: Best | None, patience: int, eval_every: int,
                 diagnose: bool, say=print, on_result=None):
        self.state, self.split, self.writer, self.save_best, self.best = state, split, writer, save_best, best
        self.patience, self.eval_every, self.say = patience, eval_every, say
        self.diagnostics = diagnostics.Diagnostics(writer, state.model, split, enabled=diagnose)
        self.predict_fn = evaluation.make_predict_fn(state.model)
        self.on_result = on_result
        self.last = None
        self.stop_requested = self.pruned = False

    def __call__(self, step: int) -> None:
        metrics = evaluation.evaluate_split(self.predict_fn, self.split)
        log_scalars(self.writer, step, "validation", loss=metrics.loss, accuracy=metrics.accuracy)
        self.say(f"step {step}: validation loss {metrics.loss:.4f}, accuracy {metrics.accuracy:.2%}")
        if self.best is None or metrics.accuracy > self.best.accuracy:
            self.best = Best(step, metrics.loss, metrics.accuracy)
            self.save_best(self.best)
        self.diagnostics.write(step, metrics.predictions, metrics.confusion_matrix)
        self.last = metrics
        self.pruned = bool(self.on_result and self.on_result(step, metrics))
        self.stop_requested = self.pruned or patience_exhausted(self.best, step, self.patience, self.eval_every)

    def stop_message(self, step: int) -> str:
        return (f"Stopped early at step {step}: no better validation accuracy in {self.patience} evaluations "
                f"(`early_stopping_patience`); best {self.best.accuracy:.2%} at step {self.best.step}")


class EndOfRunExport:
    """At the end of a completed or early-stopped run, a SavedModel version as `mnist_dnn.export` writes it. Not when a
    signal stops the run: a run stopped half way is no model to serve."""

    def __init__(self, model, export_dir: str, signalled, say):
        self.model, self.export_dir, self.signalled, self.say = model, export_dir, signalled, say
        self.path = None  # the version written

    def __call__(self, step: int) -> None:
        if self.signalled() or self.path:
            return
        self.path = exporting.export_model(self.model, self.export_dir)
        self.say(f"Exported a SavedModel to {self.path}")
