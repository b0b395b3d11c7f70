"""Train an MNIST model: checkpoints go to --ckpt_dir, TensorBoard logs to --log_dir.

A run stopped (Ctrl-C, a kill) resumes where it was when the same command runs again.

Example (the shipped config that reaches 98% test accuracy quickest):

    python -m mnist_dnn.train --preset=fast
"""

import dataclasses

from absl import flags

from mnist_dnn import cli
from mnist_dnn.lib import data, distribute, serving, files, models, training

flags.DEFINE_string("model", "dense", f"Model: {', '.join(models.MODELS)} (or the course's {', '.join(models.ALIASES)}).")
flags.DEFINE_list("hidden_units", None, "Hidden layer widths, e.g. 256,128 (default: the model's own).")
flags.DEFINE_float("dropout", 0.0, "Dropout rate after each hidden layer (dense only).")
flags.DEFINE_string("optimizer", "adam", f"Optimizer: {', '.join(training.OPTIMIZERS)}.")
flags.DEFINE_float("learning_rate", training.TrainConfig.learning_rate, "Learning rate.")
flags.DEFINE_enum("lr_schedule", "constant", training.LR_SCHEDULES,
                  "Learning rate schedule: constant, or cosine decay to 0 at --max_steps.")
flags.DEFINE_integer("augment_shift", 0, "Move each training image by a random 0..N pixels in x and y (0: off).")
flags.DEFINE_integer("batch_size", training.TrainConfig.batch_size, "Training batch size.")
flags.DEFINE_integer("max_steps", training.TrainConfig.max_steps, "Train until this global step.")
flags.DEFINE_string("dataset", "mnist", f"TFDS dataset in MNIST format: {', '.join(data.DATASETS)}.")
flags.DEFINE_integer("seed", 0, "Seed of initialization and data order.")
# absl.logging defines a --log_dir for log files that we never write; ours is the course's
# TensorBoard folder, so it replaces absl's.
delattr(flags.FLAGS, "log_dir")
flags.DEFINE_string("log_dir", None, "TensorBoard folder of this run (default: logs/<model>-<units>-<optimizer>-<lr>-b<batch>).")
flags.DEFINE_integer("log_every", training.TrainConfig.log_every, "Print and log training metrics every N steps.")
flags.DEFINE_integer("eval_every", training.TrainConfig.eval_every, "Evaluate on the validation set every N steps.")
flags.DEFINE_integer("checkpoint_every", training.TrainConfig.checkpoint_every, "Save a checkpoint every N steps.")
flags.DEFINE_integer("keep_checkpoints", training.TrainConfig.keep_checkpoints, "How many recent checkpoints to keep.")
flags.DEFINE_integer("steps_per_call", training.TrainConfig.steps_per_call,
                     "Train steps run inside one tf.function call (fewer Python round trips).")
flags.DEFINE_boolean("jit_compile", None, "Train with an XLA-compiled loop over the split in memory (the default on one "
                     "device); --nojit_compile uses the tf.data pipeline, as --strategy=mirrored/multi_worker do.")
flags.DEFINE_boolean("deterministic", False, "Bit-identical reruns (tf.config.experimental.enable_op_determinism).")
flags.DEFINE_enum("strategy", "default", distribute.STRATEGIES,
                  "tf.distribute strategy: one device, all local devices (mirrored), or a TF_CONFIG cluster.")
flags.DEFINE_list("devices", None, "Devices for --strategy=mirrored, e.g. /gpu:0,/gpu:1 (default: all GPUs, else CPUs).")
flags.DEFINE_integer("virtual_cpus", 0, "Split the CPU into N logical devices (to run --strategy=mirrored on a CPU).")
flags.DEFINE_string("export_dir", None, "At the end of a completed run, export a SavedModel version into this folder "
                    "(e.g. exports/mnist), as mnist_dnn.export does.")
flags.DEFINE_integer("early_stopping_patience", 0,
                     "Stop after this many evaluations (--eval_every) without a better validation accuracy; 0: off.")
flags.DEFINE_boolean("diagnostics", True, "At each evaluation, write weight and gradient histograms, gradient norms, "
                     "a confusion matrix and misclassified digits to <log_dir>/diagnostics.")
flags.DEFINE_string("result_file", None, "At the end, write the run's figures (steps, examples/s, best) as JSON here.")
cli.define_data_flags()
cli.define_ckpt_dir_flag()
FLAGS = flags.FLAGS


def config_from_flags() -> training.TrainConfig:
    hidden = None if FLAGS.hidden_units is None else cli.parse_int_list("hidden_units", FLAGS.hidden_units)
    return training.TrainConfig(
        model=models.make_config(FLAGS.model, hidden, FLAGS.dropout),
        data=data.DataConfig(FLAGS.dataset, FLAGS.data_dir, cli.idx_dir(FLAGS)),
        optimizer=FLAGS.optimizer,
        learning_rate=FLAGS.learning_rate,
        lr_schedule=FLAGS.lr_schedule,
        augment_shift=FLAGS.augment_shift,
        batch_size=FLAGS.batch_size,
        max_steps=FLAGS.max_steps,
        seed=FLAGS.seed,
        ckpt_dir=FLAGS.ckpt_dir,
        log_dir=FLAGS.log_dir,
        log_every=FLAGS.log_every,
        eval_every=FLAGS.eval_every,
        checkpoint_every=FLAGS.checkpoint_every,
        keep_checkpoints=FLAGS.keep_checkpoints,
        steps_per_call=FLAGS.steps_per_call,
        deterministic=FLAGS.deterministic,
        strategy=FLAGS.strategy,
        devices=tuple(FLAGS.devices or ()),
        virtual_cpus=FLAGS.virtual_cpus,
        export_dir=FLAGS.export_dir,
        early_stopping_patience=FLAGS.early_stopping_patience,
        diagnostics=FLAGS.diagnostics,
        jit_compile=FLAGS.jit_compile,
    )


def result_json(result: training.TrainResult) -> dict:
    fields = dataclasses.asdict(result)
    fields["validation"] = None if result.validation is None else {
        "loss": result.validation.loss, "accuracy": result.validation.accuracy}
    return fields


def main(argv):
    del argv
    config = config_from_flags()
    if config.export_dir:
        serving.version_path(config.export_dir)  # fail now, not after training
    result = training.train(config)
    if FLAGS.result_file:
        files.write_json(FLAGS.result_file, result_json(result))
    if result.stopped_by_signal:
        return 128 + result.stopped_by_signal


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
