"""The training loop: a `tf.function` train step over a tf.data pipeline, with
TensorBoard summaries, periodic validation and checkpoints that resume exactly."""

import contextlib
import dataclasses
import math
import os
import signal
import time

import keras
import tensorflow as tf

from mnist_dnn import checkpoints, data, evaluation
from mnist_dnn.data import DataConfig
from mnist_dnn.errors import UsageError
from mnist_dnn.models import ModelConfig, create_model

OPTIMIZERS = {
    "sgd": lambda lr: keras.optimizers.SGD(lr),
    "momentum": lambda lr: keras.optimizers.SGD(lr, momentum=0.9),
    "nesterov": lambda lr: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: keras.optimizers.Adam(lr),
    "adamw": lambda lr: keras.optimizers.AdamW(lr),
    "rmsprop": lambda lr: keras.optimizers.RMSprop(lr),
    "adagrad": lambda lr: keras.optimizers.Adagrad(lr),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optimizer: str = "adam"
    learning_rate: float = 0.001
    batch_size: int = 128
    max_steps: int = 5000
    seed: int = 0
    ckpt_dir: str = "checkpoints"
    log_dir: str | None = None  # None: derived from the hyperparameters
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5

    def validate(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"unknown --optimizer={self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise UsageError(f"--learning_rate must be a positive number, got {self.learning_rate}")
        for name in ("batch_size", "max_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name} must be a positive integer, got {getattr(self, name)}")

    @property
    def run_config(self) -> checkpoints.RunConfig:
        return checkpoints.RunConfig(self.model, self.data.dataset)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    step: int
    checkpoint: str | None
    validation: evaluation.Metrics | None
    stopped_by_signal: int | None = None  # the signal number, if one ended the run


def default_log_dir(config: TrainConfig) -> str:
    """A readable per-experiment folder, as the course's `logs/dnn-10-20-0.1`."""
    parts = [config.model.name, *map(str, config.model.hidden_units), config.optimizer, f"{config.learning_rate:g}", f"b{config.batch_size}"]
    if config.model.dropout:
        parts.append(f"drop{config.model.dropout:g}")
    return os.path.join("logs", "-".join(parts))


def make_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    return OPTIMIZERS[name](learning_rate)


def loss_fn(labels, logits):
    """Mean sparse softmax cross-entropy, on logits (never on softmax outputs)."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


def make_train_step(model, optimizer, step, loss_metric, accuracy_metric):
    """One optimization step as a `tf.function`, traced once for every batch size."""

    @tf.function(input_signature=[
        tf.TensorSpec([None, data.NUM_PIXELS], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ])
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = loss_fn(labels, logits)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        step.assign_add(1)
        loss_metric.update_state(loss, sample_weight=tf.shape(labels)[0])
        accuracy_metric.update_state(labels, logits)
        return loss

    return train_step


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


def _log_scalars(writer, step, **scalars):
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(name, value)


def train(config: TrainConfig) -> TrainResult:
    """Trains (or resumes) until `config.max_steps`, checkpointing on the way."""
    config.validate()
    _check_resumable(config)
    splits = data.load_splits(config.data)

    model = create_model(config.model, config.seed)
    optimizer = make_optimizer(config.optimizer, config.learning_rate)
    # Keras 3 creates optimizer slots lazily: build them now, or restore would drop them.
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    ckpt = tf.train.Checkpoint(step=step, model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(
        ckpt, config.ckpt_dir, max_to_keep=config.keep_checkpoints, checkpoint_name=checkpoints.CHECKPOINT_NAME
    )
    if manager.latest_checkpoint:
        # Restoring replaces initialization; nothing may re-initialize afterwards.
        ckpt.restore(manager.latest_checkpoint).assert_consumed()
        print(f"Resumed from {manager.latest_checkpoint} at step {int(step)}", flush=True)
    if int(step) >= config.max_steps:
        print(f"Already finished: step {int(step)} >= --max_steps={config.max_steps}", flush=True)
        return TrainResult(int(step), manager.latest_checkpoint, None)
    checkpoints.save_run_config(config.ckpt_dir, config.run_config)

    log_dir = config.log_dir or default_log_dir(config)
    train_writer = tf.summary.create_file_writer(os.path.join(log_dir, "train"))
    validation_writer = tf.summary.create_file_writer(os.path.join(log_dir, "validation"))
    loss_metric, accuracy_metric = keras.metrics.Mean(), keras.metrics.SparseCategoricalAccuracy()
    train_step = make_train_step(model, optimizer, step, loss_metric, accuracy_metric)
    predict_fn = evaluation.make_predict_fn(model)
    start_step = int(step)
    batches = data.train_batches(splits["train"], config.batch_size, config.seed, start_step)
    print(f"Training {config.model} with {config.optimizer} lr={config.learning_rate:g}, "
          f"batch {config.batch_size}, to step {config.max_steps}; logs in {log_dir}", flush=True)

    def validate(current_step):
        metrics = evaluation.evaluate_split(predict_fn, splits["validation"])
        _log_scalars(validation_writer, current_step, loss=metrics.loss, accuracy=metrics.accuracy)
        print(f"step {current_step}: validation loss {metrics.loss:.4f}, accuracy {metrics.accuracy:.2%}", flush=True)
        return metrics

    validation, examples, interval_start = None, 0, time.perf_counter()
    with stop_on_signals() as received:
        tf.summary.trace_on(graph=True)
        for images, labels in batches.take(config.max_steps - start_step):
            train_step(images, labels)
            current = int(step)
            if current == start_step + 1:
                with train_writer.as_default():
                    tf.summary.trace_export("train_step", step=current)
            examples += int(labels.shape[0])
            if current % config.log_every == 0:
                rate = examples / (time.perf_counter() - interval_start)
                loss, accuracy = float(loss_metric.result()), float(accuracy_metric.result())
                _log_scalars(train_writer, current, loss=loss, accuracy=accuracy,
                             learning_rate=float(optimizer.learning_rate))
                print(f"step {current}: loss {loss:.4f}, train accuracy {accuracy:.2%}, {rate:,.0f} examples/s", flush=True)
                loss_metric.reset_state()
                accuracy_metric.reset_state()
            if current % config.eval_every == 0 or current == config.max_steps:
                validation = validate(current)
            if current % config.checkpoint_every == 0 or received:
                manager.save(checkpoint_number=current)
            if current % config.log_every == 0:
                examples, interval_start = 0, time.perf_counter()
            if received:
                print(f"Stopped by signal {received[0]} at step {current}; saved {manager.latest_checkpoint}. "
                      "Run the same command to resume.", flush=True)
                return TrainResult(current, manager.latest_checkpoint, validation, received[0])
    if manager.latest_checkpoint != os.path.join(config.ckpt_dir, f"{checkpoints.CHECKPOINT_NAME}-{int(step)}"):
        manager.save(checkpoint_number=int(step))
    train_writer.flush()
    validation_writer.flush()
    print(f"Done at step {int(step)}; checkpoint {manager.latest_checkpoint}", flush=True)
    return TrainResult(int(step), manager.latest_checkpoint, validation)
