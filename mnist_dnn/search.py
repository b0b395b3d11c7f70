"""Search hyperparameters with Optuna: TPE (or random, or a grid), pruning, parallel workers.

Every training flag (command line, flagfiles, presets) is the base of each trial; each
--space=NAME=KIND:ARGS is one axis:

    learning_rate=loguniform:1e-4:1e-1    dropout=uniform:0:0.5    batch_size=int:32:256
    hidden_units=choice:128,256-128,512-256 (a list value joins its elements with '-')
    optimizer=choice:sgd,adam

Each trial is an ordinary run folder, --root/trial-NNNN/ (ckpt/, logs/, train.log,
result.json), so evaluate, export and TensorBoard work on it. A trial whose validation
accuracy falls behind (--pruner) stops at that evaluation with a checkpoint saved. The study
lives in --root/study.db, or in --storage (PostgreSQL, MySQL), which several machines can share.
Rerun the same command after a crash or a kill: finished trials stay, an interrupted one resumes
from its checkpoint, and --trials counts all of them. At the end: the report, as
`python -m mnist_dnn.report --root=...` writes it.

Example (configs/search_example.cfg):

    python -m mnist_dnn.search --preset=search_example
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

from absl import flags

from mnist_dnn import api

cli.define_train_flags(api.TrainConfig)  # the base of every trial
cli.define_config_flags(api.SearchConfig)
flags.DEFINE_multi_string("space", [], "An axis of the search space: NAME=KIND:ARGS with KIND one of "
                          f"{', '.join(api.SEARCH_KINDS)}, e.g. learning_rate=loguniform:1e-4:1e-1 or "
                          "hidden_units=choice:128,256-128 (repeat for more axes).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    api.search(cli.tool_config(api.SearchConfig), FLAGS.space, cli.tool_config(api.TrainConfig), say=cli.say)


def run():
    cli.run(main, presets=True)


if __name__ == "__main__":
    run()
