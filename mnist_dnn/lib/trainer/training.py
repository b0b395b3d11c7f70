"""Training: `train(config)` builds the state, a runner and the periodic actions, and hands
them to the controller; the run folder keeps what the run produces.

    flags -> TrainConfig -> state (model, optimizer, step, checkpoint) + runner + actions
          -> controller.run -> RunDir (model_config.json; its CheckpointStore: checkpoints, best/)
"""

import contextlib
import dataclasses
import json
import os
import tempfile

import keras
import tensorflow as tf

from mnist_dnn.lib import files, onednn, processes, xla_cache
from mnist_dnn.lib.core import data, evaluation, export_dir
from mnist_dnn.lib.trainer import actions, controller, distribute, steps, summaries
from mnist_dnn.lib.config import OPTIMIZER_NAMES, TrainConfig  # noqa: F401 (TrainConfig: part of this API)
from mnist_dnn.lib.errors import TrainingError, UsageError
from mnist_dnn.lib.core.models import create_model
from mnist_dnn.lib.core.checkpoint_store import Best, CheckpointStore
from mnist_dnn.lib.core.run_dir import LOGS_DIR, RunConfig, RunDir, new_run_id
from mnist_dnn.lib.core.models import per_example_loss  # noqa: F401 (the loss, as the course's train.py had it)

OPTIMIZERS = {
    "sgd": lambda lr: keras.optimizers.SGD(lr),
    "momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr),
    "adagrad": lambda lr: keras.optimizers.Adagrad(lr),
}
assert tuple(OPTIMIZERS) == OPTIMIZER_NAMES


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int  # where the run ended
    start_step: int  # where this call started (resumed from)
    checkpoint: str | None  # the latest checkpoint
    resumed_from: str | None = None  # the checkpoint this call restored, if any
    validation: evaluation.Metrics | None = None  # of the last validation
    best: Best | None = None
    stopped_by_signal: int | None = None  # the signal number, if one ended the run
    early_stopped: bool = False
    export_path: str | None = None  # the SavedModel version written at the end, if any
    examples_per_second: float | None = None  # training throughput of this call, validation excluded
    pruned: bool = False  # stopped because `on_validation` asked (a search pruned the trial)

    def to_json(self) -> str:
        """The result file (`--result_file`, a sweep's or search's result.json); `from_json` reads it back."""
        fields = dataclasses.asdict(self)
        if self.validation is not None:
            fields["validation"] = {k: fields["validation"][k] for k in ("loss", "accuracy", "examples",
                                                                       "per_class_accuracy")}
        return json.dumps(fields, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TrainResult":
        fields = json.loads(text)
        if fields.get("validation") is not None:
            fields["validation"] = evaluation.Metrics(**fields["validation"])
        if fields.get("best") is not None:
            fields["best"] = Best(**fields["best"])
        return cls(**fields)


def make_optimizer(name: str, learning_rate: float, schedule: str = "constant", max_steps: int = 0):
    """The optimizer by name; `schedule="cosine"` decays the learning rate to 0 at `max_steps`."""
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max_steps)
    return OPTIMIZERS[name](learning_rate)


@dataclasses.dataclass
class TrainState:
    """What a checkpoint holds: the global step, the model and the optimizer."""

    step: tf.Variable
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint

    def current_step(self) -> int:
        return int(self.step.numpy())

    def weights(self) -> list:
        return [*self.model.variables, *self.optimizer.variables]


def build_state(config: TrainConfig, strategy=None) -> TrainState:
    with (strategy or tf.distribute.get_strategy()).scope():
        model = create_model(config.model, config.seed)
        optimizer = make_optimizer(config.optimizer, config.learning_rate, config.lr_schedule, config.max_steps)
        # Keras 3 creates optimizer slots lazily: build them now, so that restoring can check every
        # slot against the checkpoint (assert_consumed) instead of filling them unchecked later.
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, name="global_step")
    # Keras 3 does not checkpoint a layer's random-seed state (dropout); saving it too
    # lets a resumed run draw the same dropout masks as an uninterrupted one.
    seed_state = list(model.non_trainable_variables)
    checkpoint = tf.train.Checkpoint(step=step, model=model, optimizer=optimizer, seed_state=seed_state)
    return TrainState(step, model, optimizer, checkpoint)


# What a collective op raises on the workers of a cluster when one of them dies.
_LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                       tf.errors.AbortedError)


@contextlib.contextmanager
def _report_lost_workers(chief_dir: RunDir):
    try:
        yield
    except _LOST_WORKER_ERRORS as e:
        resume_from = chief_dir.latest() or "the start (no checkpoint yet)"
        raise TrainingError(
            f"lost contact with another worker of the cluster ({type(e).__name__}: it stopped or crashed); "
            f"restart every worker with the same command to resume from {resume_from}"
        ) from None


def train(config: TrainConfig, say=print, on_validation=None, stop_signals: list | None = None) -> TrainResult:
    """Trains (or resumes) until `config.max_steps`, checkpointing on the way. `say(line)` receives every line for the
    user: what trains, progress, validation, how the run ended; warnings start with `warning: `. `on_validation(step,
    metrics)`, if given, runs after each validation; when it returns True the run stops there as an early stop does (a
    checkpoint saved) and the result says `pruned`. SIGINT and SIGTERM stop the run (a checkpoint saved); with
    `stop_signals`, a list that the caller's own handler fills, the run stops at its first entry instead, even one that
    came before the run started."""
    run_dir, log_dir, run_id = check_folders(config)
    # First: devices can only be configured before TensorFlow runs an op.
    strategy = distribute.make_strategy(config.strategy, config.devices, config.virtual_cpus)
    splits = data.load_splits(config.data, say)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()  # for the whole process
    if not distribute.is_chief(strategy):  # the other workers of a cluster save to a scratch folder, and log nothing
        with tempfile.TemporaryDirectory(prefix="mnist_dnn-worker-") as scratch:
            return _run(config, strategy, splits, None, CheckpointStore(scratch), say, on_validation, stop_signals)
    # The log folder is made by its first summary, once the run really starts: a refused run leaves none.
    os.makedirs(config.ckpt_dir, exist_ok=True)
    with run_dir.lock():
        run_dir.remove_leftovers()
        return _run(config, strategy, splits, log_dir, run_dir, say, on_validation, stop_signals, run_id)


def check_folders(config: TrainConfig) -> tuple[RunDir, str, str]:
    """Refuses, before anything is written or TensorFlow starts, the settings and folders a run cannot use. Returns
    the run folder, the log folder (by default `logs/` inside the run folder, so that it follows the run: resumed,
    copied, deleted with it) and the run's id."""
    config.validate()
    log_dir = config.log_dir or os.path.join(config.ckpt_dir, LOGS_DIR)
    for field, folder in (("ckpt_dir", config.ckpt_dir), ("log_dir", log_dir), ("export_dir", config.export_dir)):
        if folder:
            files.check_folder(field, folder)
    run_dir = RunDir(config.ckpt_dir)
    exported = export_dir.exported_model(config.ckpt_dir)
    if exported and not run_dir.is_run():
        raise UsageError(f"`ckpt_dir` {config.ckpt_dir} holds {exported}: it is an export folder, not a run folder; "
                         "pass another `ckpt_dir` (predict and serve read exports with --model_dir)")
    run_dir.check_own_folder()
    if config.export_dir:
        if os.path.realpath(config.export_dir) == os.path.realpath(config.ckpt_dir):
            raise UsageError(f"`export_dir` {config.export_dir} is the run folder (`ckpt_dir`); give the exports a "
                             "folder of their own, e.g. `export_dir`=exports/mnist")
        export_dir.version_path(config.export_dir)  # fail now, not after training
    stored = run_dir.check_resumable(RunConfig.of(config))
    run_id = stored.run_id if stored and stored.run_id else new_run_id()
    summaries.check_log_dir(log_dir, run_id, new_run=stored is None)
    return run_dir, log_dir, run_id


def _run(config: TrainConfig, strategy, splits, log_dir: str | None, save_to: CheckpointStore, say,
         on_validation=None, stop_signals=None, run_id: str = "") -> TrainResult:
    """The run itself; `save_to` is `config.ckpt_dir` except on a cluster's other workers."""
    state = build_state(config, strategy)
    chief_dir = RunDir(config.ckpt_dir)  # every worker resumes from the chief's checkpoints
    resumed_from = chief_dir.restore_newest(state.checkpoint, set_aside=log_dir is not None, say=say)
    if config.lr_schedule == "constant":
        # The checkpoint holds the optimizer's learning rate; the flag decides (to resume with a lower one).
        state.optimizer.learning_rate = config.learning_rate
    start = state.current_step()
    if resumed_from:
        say(f"Resumed from {resumed_from} at step {start}")
    best = chief_dir.read_best()
    if start >= config.max_steps or actions.patience_exhausted(best, start, config.early_stopping_patience,
                                                                config.eval_every):
        return _already_finished(config, start, best, save_to, resumed_from, say)
    first_in_log_dir = log_dir is not None and not summaries.event_files(log_dir)
    run = _Run(config, state, strategy, splits, log_dir, save_to, best, say, on_validation)
    if log_dir:
        chief_dir.save_config(RunConfig.of(config, run_id))
        graph = run.validation.predict_fn.get_concrete_function().graph if first_in_log_dir else None
        summaries.write_run_summary(run.writer, hparams(config), graph, summaries.trial_id(log_dir, run_id))
    run.log.message(describe(config, strategy, start, log_dir))
    # SIGINT and SIGTERM become a request (`received[0]`) that the loop honours, unless the caller's handler fills it.
    received = [] if stop_signals is None else stop_signals
    stopping = (processes.signals_to(lambda signum, frame: received.append(signum)) if stop_signals is None else
                contextlib.nullcontext())
    with _report_lost_workers(chief_dir), stopping, contextlib.closing(run):
        end = controller.run(run.run_steps, state.current_step, config.max_steps, config.steps_per_call,
                             run.actions(lambda: bool(received)), lambda: bool(received) or run.validation.stop_requested)
    return run.finish(end, received[0] if received else None, resumed_from)


def _already_finished(config, start: int, best: Best | None, save_to: CheckpointStore, resumed_from: str | None,
                      say) -> TrainResult:
    """A rerun of a finished (or early-stopped) run: it says so, and writes nothing."""
    early = start < config.max_steps
    say(f"Already stopped early at step {start}: no better validation accuracy in "
          f"{config.early_stopping_patience} evaluations; best {best.accuracy:.2%} at step {best.step}" if early else
        f"Already finished: step {start} >= `max_steps`={config.max_steps}")
    return TrainResult(start, start, save_to.latest(), resumed_from, best=best, early_stopped=early)


class _Run:
    """The parts of one run that its actions share, and how it ends."""

    def __init__(self, config, state, strategy, splits, log_dir, save_to: CheckpointStore, best: Best | None, say,
                 on_validation=None):
        self.config, self.state, self.log_dir, self.save_to = config, state, log_dir, save_to
        self.start = state.current_step()
        with strategy.scope():
            self.metrics = steps.TrainMetrics()
        self.runner = steps.make_runner(config, state, self.metrics, splits["train"], strategy, self.start)
        self.clock = actions.Clock()
        self.writer = summaries.summary_writer(log_dir)
        self.log = actions.TrainingLog(self.writer, self.metrics, state.optimizer, self.start, config.max_steps,
                                       self.clock, say)
        save_best = lambda best: save_to.save_best(state.checkpoint, best, state.weights())  # noqa: E731
        self.validation = actions.Validation(state, splits["validation"], self.writer, save_best, best,
                                             config.early_stopping_patience, config.eval_every,
                                             config.diagnostics and log_dir is not None,
                                             say=self.log.message, on_result=on_validation)
        self.save = lambda step: save_to.save(state.checkpoint, step, state.weights(), config.keep_checkpoints)
        self.export = None

    def actions(self, signalled) -> list[controller.Action]:
        """The periodic work; `signalled()` tells whether a signal is stopping the run. The clock leaves out the time of
        `paused()(work)`: a contextlib.contextmanager is also a decorator, with a new pause each call."""
        paused = self.clock.paused
        # Validation before saving: the save sees an early stop, and links a best checkpoint of its step.
        periodic = [controller.Action(self.config.log_every, self.log, at_stop=True),
                    controller.Action(self.config.eval_every, paused()(self.validation)),
                    controller.Action(self.config.checkpoint_every, paused()(self.save), at_stop=True)]
        if self.config.export_dir and self.log_dir:  # on a cluster, the chief only
            self.export = actions.EndOfRunExport(self.state.model, self.config.export_dir, signalled, self.log.message)
            periodic.append(controller.Action(self.config.max_steps, paused()(self.export), at_stop=True))
        return periodic

    def run_steps(self, num_steps: int) -> None:
        try:
            self._run_steps(num_steps)
        except steps.NonFiniteLoss:
            raise TrainingError(
                f"the loss or a gradient became NaN or infinite at step {self.state.current_step() + 1}; nothing "
                f"was saved after it. Last good checkpoint: {self.save_to.latest() or 'none'}. Lower "
                "`learning_rate` and rerun to resume") from None

    def _run_steps(self, num_steps: int) -> None:
        """Runs the steps; if XLA's persistent cache fails the compiled loop, warns once and goes on without XLA."""
        try:
            self.runner(num_steps)
        except tf.errors.OpError as error:
            fault = getattr(self.runner, "xla", False) and xla_cache.recover(error, os.environ.get("TF_XLA_FLAGS", ""))
            if not fault:
                raise
            self.log.say(f"warning: {fault}")
            self.runner = self.runner.without_xla()  # the failed call ran no step
            self.runner(num_steps)

    def close(self) -> None:
        """Flushes and closes the summary files and the progress bar, however the run ended."""
        self.log.close()
        self.writer.close()

    def finish(self, step: int, signal_number: int | None, resumed_from: str | None) -> TrainResult:
        latest, early = self.save_to.latest(), self.validation.stop_requested and step < self.config.max_steps
        pruned = early and self.validation.pruned
        early = early and not pruned
        if pruned:
            self.log.message(f"Pruned at step {step} (the search stopped this trial); saved {latest}")
        elif early:
            self.log.message(f"{self.validation.stop_message(step)}; saved {latest}")
        elif signal_number:
            self.log.message(f"Stopped by signal {signal_number} at step {step}; saved {latest}. Run the same command "
                             "to resume.")
        else:
            self.log.message(f"Done at step {step}; checkpoint {latest}")
        export_path = self.export.path if self.export else None
        return TrainResult(step, self.start, latest, resumed_from, self.validation.last, self.validation.best,
                           signal_number, early, export_path, self.log.examples_per_second, pruned)


def hparams(config: TrainConfig) -> dict:
    """The run's settings as TensorBoard's HParams dashboard lists them: whole numbers as text, since it shows every
    number to 5 significant digits (a batch size of 128 as 128.00)."""
    settings = {"model": config.model.name, "hidden_units": "-".join(map(str, config.model.hidden_units)) or "none",
            "conv_filters": "-".join(map(str, config.model.conv_filters)) or "none", "pool_every": config.model.pool_every,
            "dropout": config.model.dropout, "optimizer": config.optimizer, "learning_rate": config.learning_rate,
            "lr_schedule": config.lr_schedule, "batch_size": config.batch_size, "max_steps": config.max_steps,
            "augment_shift": config.augment_shift, "augment_rotate": config.augment_rotate,
            "augment_scale": config.augment_scale, "seed": config.seed, "dataset": config.data.dataset}
    return {name: str(value) if isinstance(value, int) else value for name, value in settings.items()}


def describe(config: TrainConfig, strategy, start: int, log_dir: str | None) -> str:
    """One readable line: what trains, how, where to look."""
    model = config.model
    layers = "-".join(map(str, (data.NUM_PIXELS, *model.hidden_units, data.NUM_CLASSES)))
    if model.conv_filters:
        layers = f"{model.widths()}, {data.NUM_CLASSES}"
    dropout = f" (dropout {model.dropout:g})" if model.dropout else ""
    schedule = ", cosine decay" if config.lr_schedule == "cosine" else ""
    replicas = strategy.num_replicas_in_sync
    device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    where = f"{replicas} {device}{'s' if replicas > 1 else ''}"
    xla = config.compiled and steps.xla_for(model)
    loop = "XLA-compiled loop" if xla else "graph loop" if config.compiled else "tf.data pipeline"
    if device == "CPU" and not xla:
        loop += f" on {'oneDNN' if onednn.running() else 'Eigen'} kernels"
    return (f"Training {model.name} {layers}{dropout} with {config.optimizer} lr={config.learning_rate:g}{schedule}, "
            f"batch {config.batch_size}, steps {start}->{config.max_steps} on {where}, {loop}; "
            f"TensorBoard: {log_dir or 'on the chief worker'}")
