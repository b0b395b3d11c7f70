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

import dataclasses
import functools
import os
import signal

from absl import flags

from mnist_dnn.lib import files
from mnist_dnn.lib.experiments import roots, search, studies, sweeps, trials
from mnist_dnn.lib.config import ConfigError, TrainConfig
from mnist_dnn.lib.errors import Error

cli.define_train_flags()  # the base of every trial
cli.define_config_flags(search.SearchConfig)
flags.DEFINE_multi_string("space", [], "An axis of the search space: NAME=KIND:ARGS with KIND one of "
                          f"{', '.join(search.KINDS)}, e.g. learning_rate=loguniform:1e-4:1e-1 or "
                          "hidden_units=choice:128,256-128 (repeat for more axes).")
FLAGS = flags.FLAGS


class SearchError(Error):
    """The search stopped before its end (interrupted, or its workers failed)."""


def check_root(config: search.SearchConfig) -> None:
    files.check_link("root", config.root, "pass a folder for the search's trials")
    if os.path.exists(config.root) and not os.path.isdir(config.root):
        raise ConfigError("root", f"{config.root} is a file; pass a folder for the search's trials")
    if studies.is_search_root(config.root):
        stored = studies.read_root(config.root)
        if {**stored, "storage": studies.without_password(stored.get("storage"))} != studies.root_description(config):
            where = studies.shown(stored.get("storage") or f"its {roots.STUDY_FILE}")
            raise ConfigError("root", f"{config.root} holds the trials of another study ({stored['study_name']} in "
                              f"{where}); pass another --root")


def open_study(config: search.SearchConfig, space) -> None:
    """Creates the study, or checks that the stored one has this space, before anything is written."""
    description = search.describe(space)
    if config.storage or studies.default_storage_exists(config):
        studies.open_study(config, description, create=True)
    studies.record_root(config, cli.say)
    studies.open_study(config, description, create=True)


def main(argv):
    del argv
    from mnist_dnn.lib.core import data  # after cli.run's quiet start-up: they import TensorFlow
    from mnist_dnn.lib.experiments import reports

    config = cli.tool_config(search.SearchConfig)
    if config.storage is None and os.environ.get(studies.STORAGE_ENV):
        config = dataclasses.replace(config, storage=os.environ[studies.STORAGE_ENV])
    config.validate()
    check_root(config)
    if config.storage:
        studies.check_storage_url(config.storage)
    check = functools.partial(sweeps.check_value, "space")
    space = [search.parse_param(spec, sweeps.TRAIN_FLAGS.__contains__, check) for spec in FLAGS.space]
    search.check_space(space, config.sampler)
    base = cli.tool_config(TrainConfig)
    base.validate()
    search.check_space_against(base, space)
    data.prepare(base.data)  # once, here: workers importing it at the same time would race
    open_study(config, space)
    plan = trials.make_plan(config, space, base)
    say = cli.say
    say(f"Search of {plan.total} trials in {config.root} ({config.sampler} sampler, {config.pruner} pruner): "
        + " x ".join(p.spec() for p in space))
    try:
        codes = trials.run_workers(plan, say)
    finally:
        reports.report(config.root, data_dir=FLAGS.data_dir, idx_dir=cli.idx_dir(FLAGS), out=say)
    interrupted = [c for c in codes if c in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGTERM)]
    if interrupted:
        raise SearchError("interrupted (the trials saved a checkpoint); run the same command to resume")
    if any(codes):
        raise SearchError(f"{sum(map(bool, codes))} worker(s) failed (exit codes {codes}); see the lines above")


def run():
    cli.run(main, presets=True)


if __name__ == "__main__":
    run()
