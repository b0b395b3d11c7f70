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

from mnist_dnn.cli import startup

startup.interrupt_quietly(__name__)  # first: Ctrl-C during the imports below is one line, not a traceback

import sys

from absl import flags

from mnist_dnn.cli import app as cli
from mnist_dnn.lib.experiments import sweeps
from mnist_dnn import train  # defines the training flags that the sweep passes on
from mnist_dnn.lib.errors import UsageError

flags.DEFINE_multi_string("grid", [], "An axis of the grid: NAME=V1,V2,... (repeat for more axes); "
                          "list values join their elements with '-', e.g. hidden_units=128,256-128.")
flags.DEFINE_string("root", None, "Folder of the sweep: one subfolder per run, sweep.json, report.{csv,md,png}.")
FLAGS = flags.FLAGS
SWEEP_FLAGS = ("grid", "root")
# The flags of mnist_dnn.train: those the package defines (not TensorFlow's or absl's), but the sweep's own.
TRAIN_FLAGS = sorted({f.name for module, defined in FLAGS.flags_by_module_dict().items()
                      if module.startswith("mnist_dnn.") for f in defined} - set(SWEEP_FLAGS))


def list_flags() -> set[str]:
    return {name for name in TRAIN_FLAGS if isinstance(FLAGS[name].parser, flags.ListParser)}


def check_value(name: str, value: str) -> None:
    """Parses a grid value as the training flag would (types, lists, enums)."""
    if name not in TRAIN_FLAGS:
        raise UsageError(f"--grid names --{name}, which is not a flag of mnist_dnn.train")
    try:
        parsed = FLAGS[name].parser.parse(value)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--grid value {value!r} is not valid for --{name}: {e}") from None
    if name == "hidden_units":
        cli.parse_int_list(name, parsed)


def base_args(grid_names) -> list[str]:
    """The training flags given (command line or flagfiles), but those of the grid and those the
    sweep sets per run (--ckpt_dir, --log_dir, --result_file: a single run's flagfile may set them)."""
    skipped = set(grid_names) | set(sweeps.RUN_FLAGS)
    return [FLAGS[n].serialize() for n in TRAIN_FLAGS if FLAGS[n].present and n not in skipped]


def run_config(run: sweeps.Run):
    """The TrainConfig that `run` trains with: the flags given, then its combination."""
    saved = {name: (FLAGS[name].value, FLAGS[name].present) for name in run.params}
    try:
        for arg in run.args:
            name, value = arg[2:].split("=", 1)
            FLAGS[name].parse(value)
        return train.config_from_flags()
    finally:
        for name, (value, present) in saved.items():
            FLAGS[name].value, FLAGS[name].present = value, present


def main(argv):
    del argv
    from mnist_dnn.lib.experiments import reports  # after cli.run's quiet start-up: it imports TensorFlow

    if not FLAGS.root:
        raise UsageError("--root is required: the folder of the sweep's runs, e.g. --root=runs/lr-width")
    sweeps.check_root(FLAGS.root)
    lists = list_flags()
    axes = [sweeps.parse_axis(spec, lists, check_value) for spec in FLAGS.grid]
    sweeps.check_axes(axes)
    args = base_args({a.name for a in axes})
    runs = sweeps.expand(axes, lists)
    for run in runs:  # every combination passes train's own validation before anything is written
        run_config(run).validate()
    sweeps.record(FLAGS.root, sweeps.describe(axes, args, runs))
    print(f"Sweep of {len(runs)} runs in {FLAGS.root}: {' x '.join(f'{a.name} ({len(a.values)})' for a in axes)}",
          flush=True)
    try:
        sweeps.run_all(FLAGS.root, runs, args, [sys.executable, "-m", train.__name__], out=cli.say)
    finally:
        reports.report(FLAGS.root, FLAGS.data_dir, cli.idx_dir(FLAGS), out=cli.say)


def run():
    cli.run(main, presets=True)


if __name__ == "__main__":
    run()
