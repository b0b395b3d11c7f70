"""Run a grid of training runs, then rank them.

Every training flag (from the command line or flagfiles) is passed to each run; each
--grid=NAME=V1,V2,... adds an axis (a list-valued flag joins one value's elements with
`-`). Runs go to --root/<combination>/{ckpt,logs,train.log}. Rerunning the same command
skips finished runs and resumes an interrupted one. At the end: the report of
`python -m mnist_dnn.report --root=...`.

Example (learning rate 0.003, 0.001 x hidden units 60-30, 256-128, in runs/sweep_example;
configs/sweep_example.cfg):

    python -m mnist_dnn.sweep --preset=sweep_example
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

import functools
import sys

from absl import flags

from mnist_dnn.api import TrainConfig
from mnist_dnn.lib.experiments import sweeps

cli.define_train_flags()  # passed to each run
flags.DEFINE_multi_string("grid", [], "An axis of the grid: NAME=V1,V2,... (repeat for more axes); "
                          "list values join their elements with '-', e.g. hidden_units=128,256-128.")
flags.DEFINE_string("root", None, "Folder of the sweep: one subfolder per run, sweep.json, report.{csv,md,png}.")
FLAGS = flags.FLAGS
# The flags of mnist_dnn.train, which a sweep passes on to its runs.
PASSED_FLAGS = sorted({*sweeps.TRAIN_FLAGS, "result_file", "overwrite"})


def base_args(grid_names) -> list[str]:
    """The training flags given (command line or flagfiles), but those of the grid and those the
    sweep sets per run (--ckpt_dir, --log_dir, --result_file: a single run's flagfile may set them)."""
    skipped = set(grid_names) | set(sweeps.RUN_FLAGS)
    return [FLAGS[n].serialize() for n in PASSED_FLAGS if FLAGS[n].present and n not in skipped]


def main(argv):
    del argv
    from mnist_dnn.lib.experiments import reports  # after cli.run's quiet start-up: it imports TensorFlow

    sweeps.check_root(FLAGS.root)
    check = functools.partial(sweeps.check_value, "grid")
    axes = [sweeps.parse_axis(spec, sweeps.LIST_FLAGS, check) for spec in FLAGS.grid]
    sweeps.check_axes(axes)
    args = base_args({a.name for a in axes})
    runs = sweeps.expand(axes, sweeps.LIST_FLAGS)
    sweeps.check_runs(cli.tool_settings(TrainConfig), runs)  # before anything is written
    sweeps.record(FLAGS.root, sweeps.describe(axes, args, runs))
    print(f"Sweep of {len(runs)} runs in {FLAGS.root}: {' x '.join(f'{a.name} ({len(a.values)})' for a in axes)}",
          flush=True)
    try:
        sweeps.run_all(FLAGS.root, runs, args, [sys.executable, "-m", "mnist_dnn.train"], out=cli.say)
    finally:
        reports.report(FLAGS.root, data_dir=FLAGS.data_dir, idx_dir=cli.idx_dir(FLAGS), out=cli.say)


def run():
    cli.run(main, presets=True)


if __name__ == "__main__":
    run()
