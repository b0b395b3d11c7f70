"""Evaluate a checkpoint on the whole validation and test sets.

Example (the latest checkpoint of the run trained by `python -m mnist_dnn.train --preset=fast`):

    python -m mnist_dnn.evaluate --ckpt_dir=checkpoints/fast
"""

from mnist_dnn.cli import startup

startup.interrupt_quietly(__name__)  # first: Ctrl-C during the imports below is one line, not a traceback

import functools

from absl import flags

from mnist_dnn.cli import app as cli
from mnist_dnn.lib import files
from mnist_dnn.lib.errors import UsageError

flags.DEFINE_integer("batch_size", 1000, "Evaluation batch size (every example counts, whatever it is).")
flags.DEFINE_string("metrics_file", None, "Also write the figures as JSON to this file.")
flags.DEFINE_boolean("confusion_matrix", False, "Also print the test confusion matrix (rows true class, columns predicted).")
cli.define_data_flags()
cli.define_dataset_check_flag()
cli.define_restore_flags()
cli.define_overwrite_flag("metrics_file")
FLAGS = flags.FLAGS
METRICS_KINDS = (("checkpoint", "step", "validation", "test"),)  # the keys of the report it writes


def format_report(report: dict) -> str:
    lines = [f"{report['checkpoint']} (step {report['step']})",
             f"{'split':<12}{'examples':>9}{'loss':>9}{'accuracy':>10}"]
    for name in ("validation", "test"):
        r = report[name]
        lines.append(f"{name:<12}{r['examples']:>9}{r['loss']:>9.4f}{r['accuracy']:>10.2%}")
    lines.append("per-class accuracy (test):")
    lines.append("  ".join(f"{c}: {a:.1%}" for c, a in enumerate(report["test"]["per_class_accuracy"])))
    return "\n".join(lines)


def main(argv):
    del argv
    from mnist_dnn.lib.core import data, evaluation  # after cli.run's quiet start-up: they import TensorFlow

    if not 0 < FLAGS.batch_size <= 65_536:
        raise UsageError(f"--batch_size must be a whole number from 1 to 65,536; got {FLAGS.batch_size}")
    if FLAGS.metrics_file:
        cli.check_output_file("metrics_file", FLAGS.metrics_file, METRICS_KINDS)
    report = evaluation.evaluate_checkpoint(FLAGS.ckpt_dir, FLAGS.checkpoint, FLAGS.data_dir, cli.idx_dir(FLAGS),
                                            FLAGS.batch_size, FLAGS.which,
                                            functools.partial(data.load_splits, say=cli.say), FLAGS.dataset)
    print(format_report(report))
    if FLAGS.confusion_matrix:
        print("confusion matrix (test):")
        print(evaluation.format_confusion_matrix(report["test"]["confusion_matrix"]))
    if FLAGS.metrics_file:
        files.write_json(FLAGS.metrics_file, report)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
