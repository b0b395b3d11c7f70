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

from absl import flags

from mnist_dnn import api

cli.define_train_flags(api.TrainConfig)  # passed to each run
flags.DEFINE_multi_string("grid", [], "An axis of the grid: NAME=V1,V2,... (repeat for more axes); "
                          "list values join their elements with '-', e.g. hidden_units=128,256-128.")
flags.DEFINE_string("root", None, "Folder of the sweep: one subfolder per run, sweep.json, report.{csv,md,png}.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    given = {name: FLAGS[name].serialize() for name in FLAGS if FLAGS[name].present}  # passed on to each run
    api.sweep(FLAGS.root, FLAGS.grid, train_settings=cli.tool_settings(api.TrainConfig), given_args=given, say=cli.say)


def run():
    cli.run(main, presets=True)


if __name__ == "__main__":
    run()
