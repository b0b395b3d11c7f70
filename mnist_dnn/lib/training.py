"""The training loop: a `tf.function` train step over a tf.data pipeline, with
TensorBoard summaries, periodic validation and checkpoints that resume exactly."""

import contextlib
import dataclasses
import math
import os
import signal
import tempfile
import time

import keras
import tensorflow as tf

from mnist_dnn.lib import best, checkpoints, data, diagnostics, distribute, evaluation, serving
from mnist_dnn.lib.data import DataConfig
from mnist_dnn.lib.errors import CheckpointError, TrainingError, UsageError
from mnist_dnn.lib.models import ModelConfig, create_model

OPTIMIZERS = {
    "sgd": lambda lr: keras.optimizers.SGD(lr),
    "momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr),
    "adagrad": lambda lr: keras.optimizers.Adagrad(lr),
}


LR_SCHEDULES = ("constant", "cosine")
LR_VARIABLE = "optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE"  # in checkpoints of a constant rate
MAX_SHIFT = 8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: str = "adam"
    learning_rate: float = 0.001
    lr_schedule: str = "constant"  # or "cosine": decays to 0 at max_steps
    augment_shift: int = 0  # move each training image by up to this many pixels (0: off)
    batch_size: int = 128
    max_steps: int = 5000
    seed: int = 0
    ckpt_dir: str = "checkpoints"
    log_dir: str | None = None  # None: derived from the hyperparameters
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    steps_per_call: int = 100  # train steps per tf.function call
    deterministic: bool = False  # bit-identical reruns: tf.config.experimental.enable_op_determinism
    strategy: str = "default"  # see distribute.STRATEGIES
    devices: tuple[str, ...] = ()  # for "mirrored"; () means every GPU, or else every CPU
    virtual_cpus: int = 0  # split the CPU into this many logical devices (0: off)
    export_dir: str | None = None  # if set, a completed run exports a SavedModel version there
    early_stopping_patience: int = 0  # stop after this many evaluations without a better validation accuracy; 0: off
    diagnostics: bool = True  # histograms, gradient norms and images in log_dir/diagnostics at each evaluation
    jit_compile: bool | None = None  # XLA-compiled loop over in-memory data; None: on for one device

    @property
    def compiled(self) -> bool:
        return self.strategy == "default" if self.jit_compile is None else self.jit_compile

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown --optimizer={self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UsageError(f"unknown --lr_schedule={self.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError(f"--learning_rate must be a positive number, got {self.learning_rate}")
        for name in ("batch_size", "max_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "steps_per_call"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if self.early_stopping_patience < 0:
            raise UsageError(f"--early_stopping_patience must be 0 (off) or positive, got {self.early_stopping_patience}")
        if not 0 <= self.augment_shift <= MAX_SHIFT:
            raise UsageError(f"--augment_shift must be 0 (off) to {MAX_SHIFT} pixels, got {self.augment_shift}")
        if self.jit_compile and self.strategy != "default":
            raise UsageError(f"--jit_compile runs on one device, not with --strategy={self.strategy}; drop one of them")

    @property
    def run_config(self) -> checkpoints.RunConfig:
        return checkpoints.RunConfig(self.model, self.data.dataset)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int
    checkpoint: str | None
    validation: evaluation.Metrics | None
    stopped_by_signal: int | None = None  # the signal number, if one ended the run
    export_path: str | None = None  # the SavedModel version written at the end, if any
    start_step: int = 0  # where this call started (resumed from)
    examples_per_second: float | None = None  # training throughput of this call, validation excluded
    early_stopped: bool = False
    best: checkpoints.Best | None = None


def default_log_dir(config: TrainConfig) -> str:
    """A readable per-experiment folder, as the course's `logs/dnn-10-20-0.1`."""
    parts = [config.model.name, *map(str, config.model.hidden_units), config.optimizer, f"{config.learning_rate:g}", f"b{config.batch_size}"]
    if config.model.dropout:
        parts.append(f"drop{config.model.dropout:g}")
    if config.lr_schedule != "constant":
        parts.append(config.lr_schedule)
    if config.augment_shift:
        parts.append(f"shift{config.augment_shift}")
    return os.path.join("logs", "-".join(parts))


def make_optimizer(name: str, learning_rate: float, schedule: str = "constant", max_steps: int = 0):
    """The optimizer by name; `schedule="cosine"` decays the learning rate to 0 at `max_steps`."""
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max_steps)
    return OPTIMIZERS[name](learning_rate)


def per_example_loss(labels, logits):
    """Sparse softmax cross-entropy on logits (never on softmax outputs), in float32 even under mixed precision."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.cast(logits, tf.float32))


def mean_loss(labels, logits):
    return tf.reduce_mean(per_example_loss(labels, logits))


@dataclasses.dataclass(frozen=True)
class TrainMetrics:
    """Running training metrics since the last report."""

    loss: keras.metrics.Mean = dataclasses.field(default_factory=keras.metrics.Mean)
    accuracy: keras.metrics.Metric = dataclasses.field(default_factory=keras.metrics.SparseCategoricalAccuracy)
    examples: keras.metrics.Sum = dataclasses.field(default_factory=keras.metrics.Sum)

    def update(self, example_losses, labels, logits, weights):
        self.loss.update_state(example_losses, sample_weight=weights)
        self.accuracy.update_state(labels, logits, sample_weight=weights)
        self.examples.update_state(tf.reduce_sum(weights))

    def reset(self):
        for metric in (self.loss, self.accuracy, self.examples):
            metric.reset_state()


class NonFiniteLoss(Exception):
    """The loss of a step was NaN or infinite; that step updated nothing."""


def loss_and_gradients(model, images, labels, weights, total_weight, check_numerics=False):
    """The loss summed with `weights` and divided by `total_weight`, and its gradients."""
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        example_losses = per_example_loss(labels, logits)
        loss = tf.reduce_sum(example_losses * weights) / total_weight
        if check_numerics:  # raises before any update (XLA compiles this op away: see make_compiled_loop)
            loss = tf.debugging.check_numerics(loss, "non-finite loss")
    return loss, tape.gradient(loss, model.trainable_variables), example_losses, logits


def make_train_step(model, optimizer, step, metrics: TrainMetrics, strategy=None):
    """One optimization step on one (global) batch, as a `tf.function`.

    Each replica averages its examples' losses over the GLOBAL batch, so the gradients that
    the strategy sums across replicas are those of one device on the whole batch.
    """
    strategy = strategy or tf.distribute.get_strategy()

    def replica_step(images, labels):
        global_batch = tf.distribute.get_replica_context().all_reduce("sum", tf.shape(labels)[0])
        weights = tf.ones_like(labels, tf.float32)
        _, gradients, example_losses, logits = loss_and_gradients(
            model, images, labels, weights, tf.cast(global_batch, tf.float32), check_numerics=True)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        metrics.update(example_losses, labels, logits, weights)

    @tf.function
    def train_step(images, labels):
        strategy.run(replica_step, args=(images, labels))
        step.assign_add(1)

    return train_step


def make_train_loop(train_step):
    """Runs `num_steps` train steps on batches from `iterator` in a single call.

    Several steps per call (as Keras' steps_per_execution) keep Python out of the hot
    loop. `num_steps` is a tensor and batches have shape [None, 784], so this traces
    once, whatever the number of steps and the size of an epoch's last batch.
    """

    @tf.function
    def train_loop(iterator, num_steps):
        for _ in tf.range(num_steps):
            train_step(*next(iterator))

    return train_loop


def make_compiled_loop(model, optimizer, step, metrics: TrainMetrics, batch_size: int, seed: int = 0,
                       augment_shift: int = 0):
    """Runs `num_steps` train steps of one epoch, from its batch `first`, as one XLA program.

    The split (uint8, in memory) and the epoch's order are arguments of fixed shapes, so this
    compiles once; an epoch's ragged last batch is a full one whose padding has weight 0
    (`data.padded_epoch_order`). The same batches as `data.train_batches`, without tf.data.
    Returns False if it stopped at a step whose loss was not finite (that step updated nothing).
    """

    @tf.function(jit_compile=True)
    def train_loop(images, labels, order, weights, first, num_steps):
        batch, finite = first, tf.constant(True)
        # A `while`, not `for ... in tf.range`: XLA would compile a range loop again for every new bound.
        while finite and batch < first + num_steps:
            begin = [batch * batch_size]
            indices, batch_weights = tf.slice(order, begin, [batch_size]), tf.slice(weights, begin, [batch_size])
            images_batch, labels_batch = tf.gather(images, indices), tf.gather(labels, indices)
            if augment_shift:
                images_batch = data.random_shift(images_batch, augment_shift, data.shift_seed(seed, step))
            loss, gradients, example_losses, logits = loss_and_gradients(
                model, data.to_float(images_batch), labels_batch, batch_weights, tf.reduce_sum(batch_weights))
            finite = tf.math.is_finite(loss)
            if finite:
                optimizer.apply_gradients(zip(gradients, model.trainable_variables))
                metrics.update(example_losses, labels_batch, logits, batch_weights)
                step.assign_add(1)
            batch += 1
        return finite

    return train_loop


class CompiledRunner:
    """`run(num_steps)` with the compiled loop: one call per epoch segment, one order per epoch."""

    def __init__(self, state: "TrainState", metrics: TrainMetrics, split: data.Split, batch_size: int, seed: int,
                 augment_shift: int = 0):
        self.step, self.split, self.batch_size, self.seed = state.step, split, batch_size, seed
        self.loop = make_compiled_loop(state.model, state.optimizer, state.step, metrics, batch_size, seed,
                                       augment_shift)
        self.epoch_steps = data.steps_per_epoch(split.size, batch_size)
        self.epoch, self.order = None, None

    def __call__(self, num_steps: int) -> None:
        current = int(self.step.numpy())
        end = current + num_steps
        while current < end:
            epoch, first = divmod(current, self.epoch_steps)
            if epoch != self.epoch:
                self.epoch, self.order = epoch, data.padded_epoch_order(self.split.size, self.batch_size, self.seed, epoch)
            count = min(end - current, self.epoch_steps - first)
            if not self.loop(self.split.images, self.split.labels, *self.order, tf.constant(first), tf.constant(count)):
                raise NonFiniteLoss()
            current += count


def make_runner(config: TrainConfig, state: "TrainState", metrics: TrainMetrics, split: data.Split,
                strategy=None, start_step: int = 0):
    """`run(num_steps)`: the compiled in-memory loop, or the tf.data pipeline (several devices)."""
    strategy = strategy or tf.distribute.get_strategy()
    if config.compiled:
        return CompiledRunner(state, metrics, split, config.batch_size, config.seed, config.augment_shift)
    loop = make_train_loop(make_train_step(state.model, state.optimizer, state.step, metrics, strategy))
    batches = data.train_batches(split, config.batch_size, config.seed, start_step, config.augment_shift)
    iterator = iter(strategy.experimental_distribute_dataset(batches))

    def run(num_steps: int) -> None:
        try:
            loop(iterator, tf.constant(num_steps, tf.int64))
        except tf.errors.InvalidArgumentError as e:
            if "non-finite loss" in str(e):
                raise NonFiniteLoss() from None
            raise

    return run


@contextlib.contextmanager
def stop_on_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Turns SIGINT/SIGTERM into a request (`received[0]`) that the loop honours."""
    received = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in signals}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _check_resumable(config: TrainConfig) -> None:
    """Refuses, before writing anything, to mix this run into a folder of another model."""
    ckpt_dir = config.ckpt_dir
    has_config = os.path.exists(checkpoints.config_path(ckpt_dir))
    if has_config:
        stored = checkpoints.load_run_config(ckpt_dir)
        if stored != config.run_config:
            raise UsageError(
                f"{ckpt_dir} holds checkpoints of {stored}, not {config.run_config}; "
                "pass another --ckpt_dir or the same model flags"
            )
    elif os.path.isdir(ckpt_dir) and tf.train.latest_checkpoint(ckpt_dir):
        raise UsageError(f"{ckpt_dir} holds checkpoints but no {checkpoints.CONFIG_FILE}; pass another --ckpt_dir")
    _check_same_schedule_kind(config)


def _check_same_schedule_kind(config: TrainConfig) -> None:
    """A constant learning rate is a variable of the optimizer, a schedule is not: they cannot restore each other."""
    latest = tf.train.latest_checkpoint(config.ckpt_dir) if os.path.isdir(config.ckpt_dir) else None
    try:
        names = [name for name, _ in tf.train.list_variables(latest)] if latest else []
    except checkpoints.RESTORE_ERRORS:
        return  # damaged: resuming skips it
    if names and (LR_VARIABLE in names) != (config.lr_schedule == "constant"):
        trained_with = "a constant learning rate" if LR_VARIABLE in names else "a learning rate schedule"
        raise UsageError(f"{latest} was trained with {trained_with}; resume with the same --lr_schedule, "
                         "or pass another --ckpt_dir")


def _log_scalars(writer, step, **scalars):
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)


@dataclasses.dataclass
class TrainState:
    """What a checkpoint holds: the global step, the model and the optimizer."""

    step: tf.Variable
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint


def build_state(config: TrainConfig, strategy=None) -> TrainState:
    with (strategy or tf.distribute.get_strategy()).scope():
        return _build_state(config)


def _build_state(config: TrainConfig) -> TrainState:
    model = create_model(config.model, config.seed)
    optimizer = make_optimizer(config.optimizer, config.learning_rate, config.lr_schedule, config.max_steps)
    # Keras 3 creates optimizer slots lazily: build them now, or restore would drop them.
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    # Keras 3 does not checkpoint a layer's random-seed state (dropout); saving it too
    # lets a resumed run draw the same dropout masks as an uninterrupted one.
    seed_state = list(model.non_trainable_variables)
    checkpoint = tf.train.Checkpoint(step=step, model=model, optimizer=optimizer, seed_state=seed_state)
    return TrainState(step, model, optimizer, checkpoint)


def _next_stop(current: int, config: TrainConfig) -> int:
    """The next step at which the loop must leave the graph: report, evaluate, save or end."""
    stops = [config.max_steps, current + config.steps_per_call]
    stops += [(current // every + 1) * every for every in (config.log_every, config.eval_every, config.checkpoint_every)]
    return min(stops)


class _Reporter:
    """Prints progress and writes the TensorBoard scalars of one run."""

    def __init__(self, log_dir: str | None, predict_fn, validation_split: data.Split):
        """`log_dir=None` writes no summaries (the other workers of a cluster)."""
        self.train_writer, self.validation_writer = (
            (tf.summary.create_file_writer(os.path.join(log_dir, split)) for split in ("train", "validation"))
            if log_dir else (tf.summary.create_noop_writer(), tf.summary.create_noop_writer())
        )
        self.predict_fn = predict_fn
        self.validation_split = validation_split
        self.interval_start = time.perf_counter()
        self.examples, self.seconds = 0.0, 0.0  # totals of the reported intervals

    @property
    def examples_per_second(self) -> float | None:
        return self.examples / self.seconds if self.seconds else None

    def trace_graph(self, run_first_call):
        """Runs the first call with graph tracing on, and stores the traced graph."""
        tf.summary.trace_on(graph=True)
        run_first_call()
        with self.train_writer.as_default():
            tf.summary.trace_export("train_step", step=0)

    def train_metrics(self, step: int, metrics: TrainMetrics, learning_rate: float):
        seconds, examples = time.perf_counter() - self.interval_start, float(metrics.examples.result())
        rate = examples / seconds
        self.examples, self.seconds = self.examples + examples, self.seconds + seconds
        loss, accuracy = float(metrics.loss.result()), float(metrics.accuracy.result())
        _log_scalars(self.train_writer, step, loss=loss, accuracy=accuracy, learning_rate=learning_rate)
        print(f"step {step}: loss {loss:.4f}, train accuracy {accuracy:.2%}, {rate:,.0f} examples/s", flush=True)
        metrics.reset()
        self.interval_start = time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """Leaves the time spent inside out of examples/s, which is about training."""
        started = time.perf_counter()
        yield
        self.interval_start += time.perf_counter() - started

    def validation(self, step: int) -> evaluation.Metrics:
        metrics = evaluation.evaluate_split(self.predict_fn, self.validation_split)
        _log_scalars(self.validation_writer, step, loss=metrics.loss, accuracy=metrics.accuracy)
        print(f"step {step}: validation loss {metrics.loss:.4f}, accuracy {metrics.accuracy:.2%}", flush=True)
        return metrics

    def close(self):
        self.train_writer.close()
        self.validation_writer.close()


def _restore_newest_complete(state: TrainState, manager: tf.train.CheckpointManager) -> None:
    """Restores the newest checkpoint that reads back whole, skipping damaged ones.

    Restoring replaces initialization: nothing may re-initialize afterwards.
    """
    for path in reversed(manager.checkpoints):
        try:
            state.checkpoint.restore(path).assert_consumed()
        except checkpoints.RESTORE_ERRORS as e:
            print(f"warning: skipping unreadable checkpoint {path}: {str(e).strip().splitlines()[0]}", flush=True)
            continue
        print(f"Resumed from {path} at step {int(state.step.numpy())}", flush=True)
        return
    if manager.checkpoints:
        raise CheckpointError(f"no checkpoint in {manager.directory} can be restored; move them away to start over")


# What a collective op raises on the workers of a cluster when one of them dies.
_LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
                       tf.errors.AbortedError)


@contextlib.contextmanager
def _report_lost_workers(ckpt_dir: str):
    try:
        yield
    except _LOST_WORKER_ERRORS as e:
        resume_from = tf.train.latest_checkpoint(ckpt_dir) or "the start (no checkpoint yet)"
        raise TrainingError(
            f"lost contact with another worker of the cluster ({type(e).__name__}: it stopped or crashed); "
            f"restart every worker with the same command to resume from {resume_from}"
        ) from None


def _save(manager: tf.train.CheckpointManager, step: int) -> None:
    try:
        manager.save(checkpoint_number=step)
    except _LOST_WORKER_ERRORS:
        raise
    except (OSError, tf.errors.OpError) as e:
        raise CheckpointError(
            f"cannot write a checkpoint to {manager.directory}: {str(e).strip().splitlines()[0]}; "
            "free some space or fix its permissions, then resume (earlier checkpoints are intact)"
        ) from None


def _make_writable(flag: str, folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise UsageError(f"--{flag} {folder} is not a writable folder ({e.strerror}); pass another one") from None


def train(config: TrainConfig) -> TrainResult:
    """Trains (or resumes) until `config.max_steps`, checkpointing on the way."""
    config.validate()
    _check_resumable(config)
    # First: devices can only be configured before TensorFlow runs an op.
    strategy = distribute.make_strategy(config.strategy, config.devices, config.virtual_cpus)
    chief = distribute.is_chief(strategy)
    splits = data.load_splits(config.data)
    log_dir = config.log_dir or default_log_dir(config)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()  # for the whole process
    if not chief:  # the other workers of a cluster save to a scratch folder, and log nothing
        with tempfile.TemporaryDirectory(prefix="mnist_dnn-worker-") as scratch:
            return _run(config, strategy, splits, None, scratch)
    for flag, folder in (("ckpt_dir", config.ckpt_dir), ("log_dir", log_dir)):
        _make_writable(flag, folder)
    with checkpoints.exclusive_lock(config.ckpt_dir):
        return _run(config, strategy, splits, log_dir, config.ckpt_dir)


def _run(config, strategy, splits, log_dir: str | None, save_dir: str) -> TrainResult:
    """The run itself; `save_dir` is `config.ckpt_dir` except on a cluster's other workers."""
    state = build_state(config, strategy)
    manager = tf.train.CheckpointManager(
        state.checkpoint, save_dir, max_to_keep=config.keep_checkpoints, checkpoint_name=checkpoints.CHECKPOINT_NAME,
    )
    # Every worker resumes from the checkpoints in --ckpt_dir (the chief's).
    _restore_newest_complete(state, tf.train.CheckpointManager(state.checkpoint, config.ckpt_dir, max_to_keep=None))
    if config.lr_schedule == "constant":
        # The checkpoint holds the optimizer's learning rate; the flag decides (to resume with a lower one).
        state.optimizer.learning_rate = config.learning_rate
    start_step = int(state.step.numpy())
    # Every worker knows the best so far from --ckpt_dir; a cluster's other workers save theirs aside.
    keeper = best.BestKeeper(state.checkpoint, save_dir, config.early_stopping_patience, config.eval_every,
                             resume_from=config.ckpt_dir)
    if start_step >= config.max_steps or keeper.should_stop(start_step):
        print(f"Already finished: step {start_step} >= --max_steps={config.max_steps}" if start_step >= config.max_steps
              else f"Already {keeper.stop_message(start_step)}", flush=True)
        return TrainResult(start_step, tf.train.latest_checkpoint(config.ckpt_dir), None, start_step=start_step,
                           early_stopped=start_step < config.max_steps, best=keeper.best)
    if log_dir:
        checkpoints.save_run_config(config.ckpt_dir, config.run_config)

    with strategy.scope():
        metrics = TrainMetrics()
    run_training_steps = make_runner(config, state, metrics, splits["train"], strategy, start_step)
    reporter = _Reporter(log_dir, evaluation.make_predict_fn(state.model), splits["validation"])
    diagnose = diagnostics.Diagnostics(log_dir, state.model, mean_loss, splits["validation"],
                                       config.diagnostics and log_dir is not None)
    loop_kind = "an XLA-compiled loop" if config.compiled else "a tf.data pipeline"
    print(f"Training {config.model} with {config.optimizer} lr={config.learning_rate:g}, batch "
          f"{config.batch_size} over {strategy.num_replicas_in_sync} replica(s) with {loop_kind}, from step "
          f"{start_step} to {config.max_steps}; TensorBoard logs in {log_dir or 'the chief worker'}", flush=True)

    def run_steps(num_steps: int) -> None:
        try:
            run_training_steps(num_steps)
        except NonFiniteLoss:
            raise TrainingError(
                f"the loss became NaN or infinite at step {int(state.step.numpy()) + 1}; nothing was saved after it. "
                f"Last good checkpoint: {manager.latest_checkpoint or 'none'}. Lower --learning_rate and rerun to resume"
            ) from None

    current, validation, stopped_by, early_stop = start_step, None, None, False
    with _report_lost_workers(config.ckpt_dir), stop_on_signals() as received:
        reporter.trace_graph(lambda: run_steps(1))
        while True:
            current = int(state.step.numpy())
            if current % config.log_every == 0 or current == config.max_steps:
                reporter.train_metrics(current, metrics, float(tf.convert_to_tensor(state.optimizer.learning_rate)))
            if current % config.eval_every == 0 or current == config.max_steps:
                with reporter.paused():
                    validation = reporter.validation(current)
                    keeper.update(current, validation, _save)
                    diagnose.write(current, validation)
                early_stop = keeper.should_stop(current) and current < config.max_steps
            if current % config.checkpoint_every == 0 or current == config.max_steps or received or early_stop:
                _save(manager, current)
            if current == config.max_steps or received or early_stop:
                stopped_by = received[0] if received else None
                break
            run_steps(_next_stop(current, config) - current)
    reporter.close()
    diagnose.close()
    if early_stop:
        print(f"{keeper.stop_message(current)}; saved {manager.latest_checkpoint}", flush=True)
    elif stopped_by:
        print(f"Stopped by signal {stopped_by} at step {current}; saved {manager.latest_checkpoint}. "
              "Run the same command to resume.", flush=True)
    else:
        print(f"Done at step {current}; checkpoint {manager.latest_checkpoint}", flush=True)
    export_path = None
    if config.export_dir and not stopped_by and log_dir:  # on a cluster, the chief only
        export_path = serving.export_model(state.model, config.export_dir)
        print(f"Exported a SavedModel to {export_path}", flush=True)
    return TrainResult(current, manager.latest_checkpoint, validation, stopped_by, export_path, start_step,
                       reporter.examples_per_second, early_stop, keeper.best)
