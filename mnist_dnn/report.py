"""Rank the runs of a sweep, or the trials of a search.

Prints the table (best validation accuracy first; test accuracy of each run's best
checkpoint) and writes report.csv, report.md and report.png (with matplotlib) in --root.
On a search root (mnist_dnn.search) it also names the best trial's folder and draws Optuna's
optimization_history.png and param_importances.png.

Example:

    python -m mnist_dnn.report --root=runs/sweep_example
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

from absl import flags

from mnist_dnn import api

flags.DEFINE_string("root", None, "Folder of a sweep or a search (written by mnist_dnn.sweep or mnist_dnn.search).")
cli.define_config_flags(api.RunData, only=("data_dir", "idx_dir"))
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.root:
        raise api.UsageError("--root is required: the folder of a sweep or a search, e.g. --root=runs/lr-width")
    api.report(FLAGS.root, data_dir=FLAGS.data_dir, idx_dir=cli.idx_dir(FLAGS), say=cli.say)


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
