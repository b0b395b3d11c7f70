"""Evaluate a checkpoint on the whole validation and test sets.

Example (the latest checkpoint of the run trained by `python -m mnist_dnn.train --preset=fast`):

    python -m mnist_dnn.evaluate --ckpt_dir=checkpoints/fast
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

from absl import flags

from mnist_dnn import api
from mnist_dnn.api import EvaluateConfig

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


def format_confusion_matrix(matrix: list[list[int]]) -> str:
    """A text table: rows are the true class, columns the predicted class."""
    width = max(5, len(str(max(max(row) for row in matrix))) + 1)
    lines = ["rows: true class, columns: predicted class",
             "     " + "".join(f"{c:>{width}}" for c in range(len(matrix)))]
    lines += [f"{t:>5}" + "".join(f"{n:>{width}}" for n in row) for t, row in enumerate(matrix)]
    return "\n".join(lines)


def main(argv):
    del argv
    config = cli.tool_config(EvaluateConfig).validate()
    if config.metrics_file:
        cli.check_output_file("metrics_file", config.metrics_file, METRICS_KINDS, overwrite=flags.FLAGS.overwrite)
    report = api.evaluate_with(config, say=cli.say)
    print(format_report(report))
    if config.confusion_matrix:
        print("confusion matrix (test):")
        print(format_confusion_matrix(report["test"]["confusion_matrix"]))
    if config.metrics_file:
        cli.write_output(config.metrics_file, report)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
