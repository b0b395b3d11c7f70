"""Evaluate a checkpoint on the whole validation and test sets.

Example (the latest checkpoint of the run trained by `python -m mnist_dnn.train --preset=fast`):

    python -m mnist_dnn.evaluate --ckpt_dir=checkpoints/fast
"""

from mnist_dnn.cli import startup

startup.interrupt_quietly(__name__)  # first: Ctrl-C during the imports below is one line, not a traceback

import functools

from mnist_dnn.cli import app as cli
from mnist_dnn.lib import files
from mnist_dnn.lib.config import EvaluateConfig

cli.define_config_flags(EvaluateConfig, tool=__name__)
cli.define_overwrite_flag("metrics_file")
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

    config = cli.tool_config(EvaluateConfig).validate()
    if config.metrics_file:
        cli.check_output_file("metrics_file", config.metrics_file, METRICS_KINDS)
    report = evaluation.evaluate_checkpoint(**vars(config.restore), **vars(config.data), batch_size=config.batch_size,
                                            load_splits=functools.partial(data.load_splits, say=cli.say))
    print(format_report(report))
    if config.confusion_matrix:
        print("confusion matrix (test):")
        print(evaluation.format_confusion_matrix(report["test"]["confusion_matrix"]))
    if config.metrics_file:
        files.write_json(config.metrics_file, report)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
