"""The search (Optuna): the space, pruning from the validation action, the worker loop, resuming, the report.

Fast tier: in process, on the tiny synthetic data. Slow tier: the tool in subprocesses on the real
MNIST (a SIGKILLed search resumed, two searches sharing a root) and a real PostgreSQL server.
"""

import contextlib
import csv
import dataclasses
import glob
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import optuna
import pytest
import tensorflow as tf

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from conftest import ROOT, assert_one_line_error, hparams, scalars, tiny_config
from test_sweep import wait_for
from mnist_dnn.lib.core import evaluation
from mnist_dnn.lib.experiments import reports, roots, search, trials
from mnist_dnn.lib.config import ConfigError, ModelConfig
from mnist_dnn.lib.core.run_dir import RunDir
from mnist_dnn.lib.trainer.training import TrainResult

FLAGS = {"learning_rate", "hidden_units", "dropout", "batch_size", "optimizer"}


def parse(spec):
    return search.parse_param(spec, FLAGS.__contains__, lambda name, value: None)


def test_the_space_reads_each_kind():
    assert parse("learning_rate=loguniform:1e-4:1e-1") == search.Param("learning_rate", "loguniform", 1e-4, 0.1)
    assert parse("dropout=uniform:0:0.5") == search.Param("dropout", "uniform", 0.0, 0.5)
    assert parse("batch_size=int:32:128") == search.Param("batch_size", "int", 32, 128)
    assert parse("hidden_units=choice:128,256-128").choices == ("128", "256-128")
    assert parse("learning_rate=loguniform:1e-4:1e-1").spec() == "learning_rate=loguniform:0.0001:0.1"
    with pytest.raises(ConfigError, match="low bound 0.5 must be below"):
        parse("dropout=uniform:0.5:0.1")


def test_a_trial_config_takes_each_value_as_its_field_type(tmp_path):
    base = search.TrainConfig(model=ModelConfig("dense", (60, 30)))
    config = search.trial_config(base, {"hidden_units": "256-128", "dropout": "0.25", "batch_size": "64",
                                        "optimizer": "sgd", "learning_rate": "0.003"}, str(tmp_path / "t"))
    assert config.model == ModelConfig("dense", (256, 128), 0.25)
    assert (config.batch_size, config.optimizer, config.learning_rate) == (64, "sgd", 0.003)
    assert config.ckpt_dir == str(tmp_path / "t" / "ckpt") and config.log_dir == str(tmp_path / "t" / "logs")


def test_the_grid_is_every_combination_of_choices_and_ints():
    space = [parse("batch_size=int:32:34"), parse("optimizer=choice:sgd,adam")]
    assert search.grid_size(space) == 6
    with pytest.raises(ConfigError, match="grid takes choice and int"):
        search.check_space([parse("dropout=uniform:0:0.5")], "grid")


def test_train_result_round_trips_through_json(tiny_run):
    result = tiny_run[1]
    again = TrainResult.from_json(result.to_json())
    assert again.best == result.best and again.step == result.step == 30
    assert again.validation.accuracy == result.validation.accuracy
    assert json.loads(result.to_json())["validation"]["loss"] == result.validation.loss


def test_a_pruned_trial_stops_through_the_loop_with_a_checkpoint(tiny_data, tmp_path):
    """Optuna's ThresholdPruner prunes below 2.0 accuracy: always, at the first validation (step 10)."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    folder = str(tmp_path / "trial-0000")
    config = tiny_config(tiny_data, tmp_path / "trial-0000")
    study.optimize(lambda trial: trials.train_trial(trial, folder, config, {}, lambda line: None), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [10]
    assert RunDir(config.ckpt_dir).steps() == [10]  # saved at the stop, not at 20 or 30
    with open(os.path.join(folder, "result.json")) as f:
        result = TrainResult.from_json(f.read())
    assert result.pruned and not result.early_stopped and result.step == 10
    assert trial.intermediate_values[10] == result.validation.accuracy == result.best.accuracy
    # TensorBoard's HParams: the trial's session (named by its folder), its end, and its state (2: pruned).
    assert scalars(config.log_dir, "search/state") == {0: 2.0}
    assert hparams(config.log_dir)["hidden_units"] == "32"
    run_id = RunDir(config.ckpt_dir).load_config().run_id
    assert session(config.log_dir).session_start_info.group_name == f"trial-0000 ({run_id})"
    assert session(config.log_dir, "end").session_end_info.status == api_pb2.STATUS_SUCCESS


def session(log_dir, which="start"):
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    return plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")[f"_hparams_/session_{which}_info"])


class SignalAt:
    """A pruner that never prunes, but sends this process SIGTERM at `step` (as a kill of the search would)."""

    def __init__(self, step):
        self.step = step

    def prune(self, study, trial):
        if trial.last_step == self.step and not trial.system_attrs.get("retry_history"):
            os.kill(os.getpid(), signal.SIGTERM)
        return False


def run_work(tiny_data, root, total, monkeypatch, pruner=None, sampler="random"):
    config = search.SearchConfig(root=str(root), trials=total, sampler=sampler, pruner="none", search_seed=1)
    space = [parse("learning_rate=loguniform:1e-3:1e-1"), parse("hidden_units=choice:16,32")]
    base = dataclasses.replace(tiny_config(tiny_data, root / "unused"), max_steps=30)
    search.record_root(config)
    search.open_study(config, search.describe(space), create=True)
    if pruner:
        monkeypatch.setattr(search, "make_pruner", lambda *args: pruner)
    lines = []
    code = trials.work(trials.make_plan(config, space, base), 0, lines.append)
    monkeypatch.undo()
    study = search.load_from_root(str(root))
    return code, lines, states(study), study


@pytest.fixture(scope="module")
def searched(tiny_data, tmp_path_factory):
    """2 trials; then a 3rd interrupted by SIGTERM at step 20 and queued again; then the rerun, and another."""
    root = tmp_path_factory.mktemp("search") / "root"
    monkeypatch = pytest.MonkeyPatch()
    first = run_work(tiny_data, root, 2, monkeypatch)
    interrupted = run_work(tiny_data, root, 3, monkeypatch, pruner=SignalAt(20))
    resumed = run_work(tiny_data, root, 3, monkeypatch)
    again = run_work(tiny_data, root, 3, monkeypatch)
    return dict(root=root, first=first, interrupted=interrupted, resumed=resumed, again=again)


def states(study):
    return [(t.number, t.state.name, t.user_attrs.get("folder")) for t in study.get_trials()]


@pytest.mark.slow  # four tiny trainings in process: ~10 s alone, a minute on the loaded machine
def test_a_search_runs_its_trials_as_run_folders(searched):
    code, lines, snapshot, study = searched["first"]
    assert code == 0
    assert snapshot == [(0, "COMPLETE", "trial-0000"), (1, "COMPLETE", "trial-0001")]
    for trial in study.get_trials()[:2]:
        folder = searched["root"] / trial.user_attrs["folder"]
        best = RunDir(str(folder / "ckpt")).read_best()
        assert trial.value == best.accuracy and sorted(trial.intermediate_values) == [10, 20, 30]
        with open(folder / "result.json") as f:
            assert TrainResult.from_json(f.read()).best == best
        assert (folder / "done.json").exists() and (folder / "train.log").exists()
        assert 1e-3 <= trial.params["learning_rate"] <= 1e-1 and trial.params["hidden_units"] in ("16", "32")
        assert f"trial {trial.number} complete" in " ".join(lines)


@pytest.mark.slow  # four tiny trainings in process: ~10 s alone, a minute on the loaded machine
def test_an_interrupted_trial_is_queued_again_and_resumes_from_its_checkpoint(searched):
    code, lines, snapshot, study = searched["interrupted"]
    assert code == 128 + signal.SIGTERM
    assert snapshot[2:] == [(2, "FAIL", "trial-0002"), (3, "WAITING", "trial-0002")]
    code, lines, snapshot, study = searched["resumed"]
    assert code == 0
    assert snapshot[2:] == [(2, "FAIL", "trial-0002"), (3, "COMPLETE", "trial-0002")]
    assert study.trials[3].params == study.trials[2].params
    assert "trial 3 resuming in" in lines[0]
    with open(searched["root"] / "trial-0002" / "result.json") as f:
        result = TrainResult.from_json(f.read())
    assert (result.start_step, result.step) == (20, 30)
    assert search.progress(study) == (3, 0, 0)  # counted once: --trials is honoured in total


@pytest.mark.slow  # four tiny trainings in process: ~10 s alone, a minute on the loaded machine
def test_a_finished_search_run_again_trains_nothing(searched):
    code, lines, snapshot, study = searched["again"]
    assert code == 0 and lines == [] and len(snapshot) == 4


@pytest.mark.slow  # four tiny trainings in process: ~10 s alone, a minute on the loaded machine
def test_the_report_of_a_search_root_ranks_its_trials_and_draws_optunas_pictures(searched, tiny_data):
    pytest.importorskip("matplotlib")
    root = str(searched["root"])
    lines = []
    rows = reports.report(root, data_dir=tiny_data.data_dir, out=lines.append)
    study = search.load_from_root(root)
    values = {t.user_attrs["folder"]: t.value for t in study.trials if t.state.name == "COMPLETE"}
    assert [r.name for r in rows] == sorted(values, key=lambda name: -values[name])
    assert [r.best_accuracy for r in rows] == sorted(values.values(), reverse=True)
    assert {r.status for r in rows} == {"complete"}
    best = max(values, key=values.get)
    assert any(line.startswith("Best trial:") and f"{root}/{best}" in line for line in lines)
    assert f"{root}/{best}" in open(os.path.join(root, "report.md")).read()
    with open(os.path.join(root, "report.csv")) as f:
        assert [r["trial"] for r in csv.DictReader(f)] == [r.name for r in rows]
    for name in ("optimization_history.png", "param_importances.png"):
        image = tf.io.decode_png(tf.io.read_file(os.path.join(root, name))).numpy()
        assert image.shape[0] >= 300 and len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 20


# --- Fast: what each trial trains, each worker's seed, where a retried trial resumes (issue 38) ---------------


def any_flag(name):
    return True


def start_study(root, space, **settings):
    config = search.SearchConfig(root=str(root), pruner="none", **settings)
    search.record_root(config)
    search.open_study(config, search.describe(space), create=True)
    return config


def test_each_trial_trains_the_model_and_widths_its_params_name(tiny_data, tmp_path, monkeypatch):
    """A space over --model: the model built for each trial (RawDNN or Keras' Sequential, its kernels' shapes) is
    the one the trial's params in the study name; the training itself is replaced by that build."""
    from mnist_dnn.lib.core import models
    from mnist_dnn.lib.core.checkpoint_store import Best
    from mnist_dnn.lib.trainer import training

    built = {}

    def build_instead_of_training(config, say, on_validation, **unused):
        model = models.create_model(config.model)
        kernels = [tuple(v.shape) for v in model.trainable_variables if len(v.shape) == 2]
        built[os.path.dirname(config.ckpt_dir)] = (isinstance(model, models.RawDNN), model.name, kernels)
        best = Best(10, 1.0, 0.5 + 0.1 * len(built))
        return TrainResult(config.max_steps, 0, None, best=best)

    monkeypatch.setattr(training, "train", build_instead_of_training)
    space = [search.parse_param(spec, any_flag, lambda name, value: None)
             for spec in ("model=choice:raw,dense", "hidden_units=choice:16,32-8")]
    config = start_study(tmp_path / "root", space, trials=4, sampler="grid")
    base = tiny_config(tiny_data, tmp_path / "unused", model=ModelConfig("dense", (64,)))
    assert trials.work(trials.make_plan(config, space, base), 0, lambda line: None) == 0
    study = search.load_from_root(str(tmp_path / "root"))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    combinations = set()
    for trial in study.trials:
        is_raw, name, kernels = built[str(tmp_path / "root" / trial.user_attrs["folder"])]
        widths = [784, *map(int, trial.params["hidden_units"].split("-")), 10]
        assert (is_raw, name) == (trial.params["model"] == "raw", trial.params["model"])
        assert kernels == list(zip(widths[:-1], widths[1:]))
        combinations.add((name, trial.params["hidden_units"]))
    assert combinations == {("raw", "16"), ("raw", "32-8"), ("dense", "16"), ("dense", "32-8")}


def test_workers_sharing_a_search_seed_draw_different_points_and_the_same_ones_again(tmp_path, monkeypatch):
    """--workers=3 --search_seed=S: each worker's sampler (as `work` makes it) proposes its own first point, and
    the same S proposes the same points again; another S, another point for worker 0."""
    space = [search.parse_param("learning_rate=loguniform:1e-4:1e-1", any_flag, lambda name, value: None)]
    make_sampler = search.make_sampler

    class Made(Exception):
        pass

    def first_point(search_seed: int, worker: int) -> float:
        config = start_study(tmp_path / f"root-{search_seed}", space, trials=6, workers=3, search_seed=search_seed)
        made = []

        def record(*args):
            made.append(make_sampler(*args))
            raise Made()  # before any training

        monkeypatch.setattr(search, "make_sampler", record)
        with pytest.raises(Made):
            trials.work(trials.make_plan(config, space, search.TrainConfig()), worker, lambda line: None)
        monkeypatch.undo()
        study = optuna.create_study(direction="maximize", sampler=made[0])
        trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        return trial.params["learning_rate"]

    points = [first_point(7, worker) for worker in range(3)]
    assert len(set(points)) == 3, points
    assert [first_point(7, worker) for worker in range(3)] == points
    assert first_point(8, 0) not in points[:1]


def test_a_retried_trial_resumes_from_the_checkpoint_in_its_own_folder(tiny_data, tmp_path, monkeypatch):
    """Trial 0 is stopped by SIGTERM at step 10 and queued again; the retry (trial 1) trains in trial-0000 from its
    checkpoint at step 10, with trial 0's params, and no other folder is made."""
    root = tmp_path / "root"
    space = [search.parse_param("learning_rate=loguniform:1e-3:1e-1", any_flag, lambda name, value: None)]
    config = start_study(root, space, trials=1, sampler="random", search_seed=1)
    plan = trials.make_plan(config, space, tiny_config(tiny_data, tmp_path / "unused", max_steps=20))
    monkeypatch.setattr(search, "make_pruner", lambda *args: SignalAt(10))
    assert trials.work(plan, 0, lambda line: None) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert RunDir(str(root / "trial-0000" / "ckpt")).steps() == [10]
    lines = []
    assert trials.work(plan, 0, lines.append) == 0
    study = search.load_from_root(str(root))
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert study.trials[1].params == study.trials[0].params
    assert sorted(p.name for p in root.glob("trial-*")) == ["trial-0000"]
    with open(root / "trial-0000" / "result.json") as f:
        result = TrainResult.from_json(f.read())
    assert (result.start_step, result.step) == (10, 20)
    assert result.resumed_from == str(root / "trial-0000" / "ckpt" / "model.ckpt-10")
    assert "trial 1 resuming in" in lines[0]


# --- Fast: a shared study's storage URL and report (issue 36, item 4; issue 37, item 7) ---

SECRET_URL = "postgresql+psycopg://ann:p%40ss@db.example:5432/studies?sslmode=require"
PLAIN_URL = "postgresql+psycopg://ann@db.example:5432/studies?sslmode=require"


def test_a_storage_url_is_written_without_its_password_and_connected_with_the_environments(monkeypatch):
    assert search.shown(SECRET_URL, masked=False) == PLAIN_URL
    assert search.shown(PLAIN_URL, masked=False) == PLAIN_URL and search.shown(None, masked=False) is None
    assert search.shown("sqlite:////data/study.db", masked=False) == "sqlite:////data/study.db"
    assert search.shown(SECRET_URL) == "postgresql+psycopg://ann:***@db.example:5432/studies?sslmode=require"
    monkeypatch.delenv(search.STORAGE_ENV, raising=False)
    assert search.connect_url(PLAIN_URL) == PLAIN_URL  # libpq looks in ~/.pgpass itself
    monkeypatch.setenv(search.STORAGE_ENV, SECRET_URL)
    assert search.connect_url(PLAIN_URL) == SECRET_URL
    assert search.connect_url(PLAIN_URL.replace("ann@", "bob@")) == PLAIN_URL.replace("ann@", "bob@")  # not its
    other_password = SECRET_URL.replace("p%40ss", "other")
    assert search.connect_url(other_password) == other_password  # the flag's own password first


def test_an_older_search_json_holding_the_password_is_read_then_written_again_without_it(tmp_path):
    (tmp_path / "search.json").write_text(json.dumps({"study_name": "shared", "storage": SECRET_URL}))
    assert search.read_root(str(tmp_path))["storage"] == SECRET_URL  # still read: the report connects with it
    said = []
    search.record_root(search.SearchConfig(root=str(tmp_path), storage=PLAIN_URL, study_name="shared"), said.append)
    assert json.loads((tmp_path / "search.json").read_text()) == {"study_name": "shared", "storage": PLAIN_URL}
    assert said == [f"{tmp_path / 'search.json'} held the storage's password: written again without it (give it in "
                    f"`storage`, {search.STORAGE_ENV} or ~/.pgpass)"]
    search.record_root(search.SearchConfig(root=str(tmp_path), storage=SECRET_URL, study_name="shared"), said.append)
    assert len(said) == 1 and b"p%40ss" not in (tmp_path / "search.json").read_bytes()
    new = tmp_path / "new"
    search.record_root(search.SearchConfig(root=str(new), storage=SECRET_URL, study_name="shared"), said.append)
    assert json.loads((new / "search.json").read_text())["storage"] == PLAIN_URL and len(said) == 1


def test_the_report_of_a_root_ranks_the_trials_other_roots_trained_from_what_the_study_holds(tmp_path, monkeypatch):
    """Trials trained on other hosts (no folder here): their best reported validation and its step, their host and
    folder; the plot's labels name each trial once (they said `trial=trial-0000`)."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    space = [parse("learning_rate=loguniform:1e-3:1e-1")]
    config = start_study(tmp_path / "here", space)
    study = search.load_from_root(config.root)
    distributions = {"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)}
    reported = {0: {10: 0.5, 20: 0.8, 30: 0.8}, 1: {10: 0.6, 20: 0.9, 30: 0.7}, 2: {10: 0.3}}
    for number, values in reported.items():
        state = optuna.trial.TrialState.PRUNED if number == 2 else optuna.trial.TrialState.COMPLETE
        study.add_trial(optuna.trial.create_trial(
            state=state, value=None if number == 2 else max(values.values()),
            params={"learning_rate": 0.01 * (number + 1)},
            distributions=distributions, intermediate_values=values,
            user_attrs={"folder": f"trial-000{number}", "host": f"host-{number}", "root": f"/runs/{number}"}))
    names, rows = reports.collect(config.root)
    assert names == ["trial", "learning_rate"]
    assert [(r.name, r.status, r.steps, r.best_accuracy, r.best_step, r.host, r.folder) for r in rows] == [
        ("trial-0001", "complete", 30, 0.9, 20, "host-1", "/runs/1/trial-0001"),
        ("trial-0000", "complete", 30, 0.8, 20, "host-0", "/runs/0/trial-0000"),  # the first step at its best
        ("trial-0002", "pruned", 10, 0.3, 10, "host-2", "/runs/2/trial-0002")]
    grid = reports.table(names, rows)
    assert grid[0][-2:] == ["host", "folder"] and grid[1][-2:] == ["host-1", "/runs/1/trial-0001"]
    assert reports.best_trial_line(config.root, study).startswith("Best trial: 1 in /runs/1/trial-0001 on host-1 ")
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    assert reports.plot(config.root, names, rows, str(tmp_path / "report.png"))
    labels = [line.get_label() for line in figures[0].axes[0].get_lines()]
    assert labels == ["trial-0001, learning_rate=0.02", "trial-0000, learning_rate=0.01",
                      "trial-0002, learning_rate=0.03"]


@pytest.mark.parametrize("finished", [3, 10])
def test_the_importance_plot_says_when_it_rests_on_fewer_than_10_finished_trials(finished, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    space = [parse("learning_rate=loguniform:1e-3:1e-1"), parse("dropout=uniform:0:0.5")]
    config = start_study(tmp_path, space)
    study = search.load_from_root(config.root)
    rng = np.random.default_rng(0)
    distributions = {"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True),
                     "dropout": optuna.distributions.FloatDistribution(0, 0.5)}
    for number in range(finished + 2):  # and two pruned trials, which do not count
        learning_rate, dropout = 10 ** rng.uniform(-3, -1), rng.uniform(0, 0.5)
        state = optuna.trial.TrialState.COMPLETE if number < finished else optuna.trial.TrialState.PRUNED
        study.add_trial(optuna.trial.create_trial(
            state=state, value=0.9 - dropout / 10 if state.name == "COMPLETE" else None,
            params={"learning_rate": learning_rate, "dropout": dropout}, distributions=distributions,
            intermediate_values={10: 0.5}))
    figures, said = [], []
    monkeypatch.setattr(plt, "close", figures.append)
    assert reports.plot_study(study, config.root, said.append) == [str(tmp_path / n) for n in roots.STUDY_PLOTS]
    importances = figures[1].axes[0].get_title()
    caveat = "param_importances.png: from 3 finished trials only: a rough guide until 10 or more"
    assert said == ([caveat] if finished < 10 else [])
    assert ("(from 3 finished trials only" in importances) == (finished < 10), importances
    assert "from" not in figures[0].axes[0].get_title()  # the history shows every trial as it is


def test_the_search_extra_brings_what_the_plots_extra_does():
    """The report's pictures needed a second extra (issue 36, item 5): `[search]` holds all that `[plots]` does."""
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    extras = {name: {line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")}
              for name, value in setup["options.extras_require"].items()}
    assert extras["plots"] and extras["plots"] <= extras["search"], extras


# --- The tool in subprocesses: a SIGKILLed search resumed by two searches at once; PostgreSQL. ---

def search_command(base, root, *extra):
    return [sys.executable, "-m", "mnist_dnn.search", f"--flagfile={base}", f"--root={root}", "--sampler=random",
            "--pruner=none", "--space=learning_rate=loguniform:1e-3:1e-2", "--space=hidden_units=choice:16,32",
            *extra]


def trial_states(root, storage=None):
    study = search.load_from_root(str(root)) if storage is None else optuna.load_study(study_name="mnist_dnn",
                                                                                        storage=storage)
    return study.get_trials()


@pytest.fixture(scope="module")
def killed_then_shared(real_data, tmp_path_factory):
    """A search of 6 trials on 2 workers, SIGKILLed once a trial has a checkpoint; then two searches at once."""
    tmp = tmp_path_factory.mktemp("search_kill")
    base, root = tmp / "base.cfg", tmp / "root"
    base.write_text(f"--model=dense\n--max_steps=300\n--eval_every=100\n--log_every=100\n--checkpoint_every=100\n"
                    f"--nodiagnostics\n--data_dir={real_data.data_dir}\n--trials=6\n--workers=2\n--search_seed=0\n")
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DNN_IDX_DIR"}
    with open(tmp / "first.log", "w") as log:
        first = subprocess.Popen(search_command(base, root), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        wait_for(lambda: any(root.glob("trial-*/ckpt/checkpoint")) or first.poll() is not None, timeout=300)
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The orphaned workers got SIGTERM, saved and stopped: every one, not only those that had a ckpt/ by then.
    wait_for(lambda: not session_processes(first.pid), timeout=10)
    after_kill = [(t.number, t.state.name, t.user_attrs.get("folder")) for t in trial_states(root)]
    checkpoints = {ckpt.parent.name: RunDir(str(ckpt)).steps() for ckpt in root.glob("trial-*/ckpt")}
    both = [subprocess.Popen(search_command(base, root), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in both]
    return dict(root=root, after_kill=after_kill, checkpoints=checkpoints, outputs=outputs,
                codes=[p.returncode for p in both], first_log=(tmp / "first.log").read_text())


@pytest.mark.slow
def test_a_killed_search_resumes_its_trials_and_two_searches_share_the_rest(killed_then_shared):
    run = killed_then_shared
    said = [line for out in run["outputs"] for line in out.splitlines() if "error" in line or "failed" in line]
    assert run["codes"] == [0, 0], said or run["outputs"]  # the lines that say why first (pytest cuts long ones)
    interrupted = [folder for number, state, folder in run["after_kill"] if state == "FAIL"]
    assert interrupted and all(state in ("FAIL", "WAITING", "COMPLETE") for _, state, _ in run["after_kill"])
    final = trial_states(run["root"])
    complete = [t for t in final if t.state.name == "COMPLETE"]
    folders = [t.user_attrs["folder"] for t in complete]
    assert len(complete) == 6 and len(set(folders)) == 6  # --trials in total; no trial trained twice
    assert sorted(p.name for p in run["root"].glob("trial-*")) == sorted(folders)  # no folder shared or left over
    for folder in interrupted:  # queued again, trained in its own folder, from its checkpoint
        with open(run["root"] / folder / "result.json") as f:
            result = TrainResult.from_json(f.read())
        steps = run["checkpoints"].get(folder) or [0]
        assert result.step == 300 and result.start_step == steps[-1]
    assert any(r.start_step > 0 for r in [TrainResult.from_json((run["root"] / f / "result.json").read_text())
                                         for f in interrupted])
    assert all(" complete: " in out for out in run["outputs"]), run["outputs"]  # both contributed
    assert all("Best trial:" in out for out in run["outputs"])
    cxx_lines = [line for out in run["outputs"] for line in out.splitlines() if re.match(r"[IWE]\d{4} ", line)]
    assert cxx_lines == []  # no C++ line from any worker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return shutil.which(name) or (found[-1] if found else None)


@contextlib.contextmanager
def postgres_server(password=None):
    """A PostgreSQL server of its own on a loopback port in a temporary folder, stopped after the tests; its URL.
    With `password`, the user postgres needs it over TCP (scram-sha-256), and the URL leaves it out.

    .ci/run installs the server (the Debian package postgresql). As root, the server runs as the
    package's postgres user, since PostgreSQL refuses to run as root.
    """
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server here (initdb, pg_ctl); .ci/run installs it: apt-get install postgresql")
    as_user = []
    folder = tempfile.mkdtemp(prefix="mnist_dnn-pg-")
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    os.chmod(folder, 0o755)
    data, port = os.path.join(folder, "data"), _free_port()
    auth = ["--auth=trust"]
    if password:
        with open(os.path.join(folder, "pwfile"), "w") as f:
            f.write(password + "\n")
        os.chmod(f.name, 0o644)
        auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={f.name}"]
    subprocess.run([*as_user, initdb, "-D", data, "-U", "postgres", *auth], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    subprocess.run([*as_user, pg_ctl, "-D", data, "-o", options, "-l", os.path.join(folder, "log"), "-w", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


PASSWORD = "s3cret-Pw-5f1e"  # a string no file of a search could hold by chance


@pytest.fixture(scope="module")
def postgres_password():
    """A server whose user needs a password; the URL without it."""
    with postgres_server(PASSWORD) as url:
        yield url


@pytest.mark.slow
def test_two_roots_share_one_study_on_postgresql_and_each_reports_all_of_it(postgres_password, tiny_data, tmp_path):
    """Two machines (two roots) on one PostgreSQL study that needs a password: the second runs only what the first
    left, and the report of either root ranks all three trials, with their host and folder (issue 36, item 4). The
    password comes from MNIST_DNN_STORAGE (root a) or a pgpass file (root b); no file of either root holds it, and
    a's search.json, written with it as the code before wrote it, is read, then written again without it."""
    url = postgres_password
    full = url.replace("postgres@", f"postgres:{PASSWORD}@")
    base = tmp_path / "base.cfg"
    base.write_text(f"--hidden_units=16\n--max_steps=30\n--eval_every=10\n--log_every=10\n--checkpoint_every=10\n"
                    f"--batch_size=64\n--nodiagnostics\n--nojit_compile\n--data_dir={tiny_data.data_dir}\n"
                    f"--storage={url}\n--study_name=shared\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "search.json").write_text(json.dumps({"study_name": "shared", "storage": full}))
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:postgres:{PASSWORD}\n")
    pgpass.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k not in ("MNIST_DNN_IDX_DIR", search.STORAGE_ENV)}
    passwords = {"a": {search.STORAGE_ENV: full}, "b": {"PGPASSFILE": str(pgpass)}}
    results = [subprocess.run(search_command(base, tmp_path / machine, f"--trials={trials}"), cwd=ROOT,
                              env={**env, **passwords[machine]}, capture_output=True, text=True, timeout=600)
               for machine, trials in (("a", 2), ("b", 3))]
    for result in results:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"{tmp_path / 'a' / 'search.json'} held the storage's password: written again" in results[0].stdout
    study = optuna.load_study(study_name="shared", storage=full)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(p.name for p in (tmp_path / "a").glob("trial-*")) == ["trial-0000", "trial-0001"]
    assert sorted(p.name for p in (tmp_path / "b").glob("trial-*")) == ["trial-0002"]
    folders = {f"trial-000{i}": str(tmp_path / ("a" if i < 2 else "b") / f"trial-000{i}") for i in range(3)}
    values = {t.user_attrs["folder"]: t.value for t in study.trials}
    for machine in "ab":
        assert json.loads((tmp_path / machine / "search.json").read_text()) == {"study_name": "shared", "storage": url}
        report = subprocess.run([sys.executable, "-m", "mnist_dnn.report", f"--root={tmp_path / machine}"], cwd=ROOT,
                                env={**env, **passwords["b" if machine == "a" else "a"]}, capture_output=True,
                                text=True, timeout=300)
        assert report.returncode == 0, report.stderr[-2000:]
        with open(tmp_path / machine / "report.csv") as f:
            rows = list(csv.DictReader(f))
        assert [r["trial"] for r in rows] == sorted(values, key=lambda name: -values[name])  # all, ranked
        assert [float(r["best_val_accuracy"]) for r in rows] == sorted(values.values(), reverse=True)
        assert {r["trial"]: r["folder"] for r in rows} == folders
        assert {r["host"] for r in rows} == {socket.gethostname()}
        best = max(values, key=values.get)
        assert f"Best trial: {int(best[-4:])} in {folders[best]} on {socket.gethostname()} " in report.stdout
    no_password = subprocess.run([sys.executable, "-m", "mnist_dnn.report", f"--root={tmp_path / 'b'}"], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=300)
    assert_one_line_error(no_password, 2, f"the storage {url} needs a password", search.STORAGE_ENV, "~/.pgpass")
    for path in tmp_path.glob("[ab]/**/*"):
        assert not path.is_file() or PASSWORD.encode() not in path.read_bytes(), path


# The one waiting trial of a study (a trial queued again) asked for by four processes at the same moment: one takes
# it. SQLite's transactions began at their first write, after the read, so several took it and trained it in one
# folder; one of them then failed (`another training run is using ...`), and the other exited 1 when it reported to
# the trial the first had failed. (The intermittent failure of the killed-search test above.)
POP_WAITING = """
import os, sys, time
from mnist_dnn.lib.experiments import search
url, folder, rounds, me = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
storage = search.open_storage(url)
for r in range(rounds):
    study = search.optuna().load_study(study_name=f"race-{r}", storage=storage)
    open(os.path.join(folder, f"ready-{r}-{me}"), "w").close()
    while not os.path.exists(os.path.join(folder, f"go-{r}")):
        time.sleep(0.0002)
    print(r, study._pop_waiting_trial_id() is not None, flush=True)
"""


@pytest.mark.slow
def test_one_waiting_trial_asked_for_by_four_processes_at_once_goes_to_one(tmp_path):
    url, rounds = f"sqlite:///{tmp_path / 'study.db'}", 20
    for r in range(rounds):
        optuna.create_study(study_name=f"race-{r}", storage=search.open_storage(url)).enqueue_trial({})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    askers = [subprocess.Popen([sys.executable, "-c", POP_WAITING, url, str(tmp_path), str(rounds), str(i)], env=env,
                               stdout=subprocess.PIPE, text=True) for i in range(4)]
    for r in range(rounds):
        wait_for(lambda: len(list(tmp_path.glob(f"ready-{r}-*"))) == 4, timeout=120)
        (tmp_path / f"go-{r}").touch()
    taken = [line.split() for asker in askers for line in asker.communicate(timeout=120)[0].splitlines()]
    assert sorted(int(r) for r, took in taken if took == "True") == list(range(rounds))


# --- A search SIGKILLed at random moments, ten times, then run to its end (issue 37). ---

KILLS, KILL_TRIALS, KILL_STEPS = 10, 6, 40


def session_processes(sid: int) -> list[str]:
    """The live processes of session `sid` (a search started in a session of its own, and all it started)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            if os.getsid(int(pid)) == sid and state != "Z":
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    command = f.read().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{pid} {command[:150]}")
        except (OSError, IndexError):  # ended in between
            continue
    return found


# When to kill, after a random delay of up to 1.5 s: since the start (the search or its workers starting,
# importing), or since a worker's line that a trial started (training, saving) or ended (the study written).
MOMENTS = {"start": None, "trial start": re.compile(r"\] trial \d+ (starting|resuming) in"),
           "trial end": re.compile(r"\] trial \d+ (complete|pruned)")}


def kill_at_random_moments(base, root, env, log_path) -> None:
    """Starts the search KILLS times and SIGKILLs it at a random moment; 5 s after each kill none of its processes
    may be left, and none may have printed a traceback."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for attempt in range(KILLS):
        moment, delay = rng.choice(list(MOMENTS)), rng.uniform(0, 1.5)
        with open(log_path, "ab") as log:
            log.write(f"=== attempt {attempt} (seed {seed}): kill {delay:.1f} s after {moment}\n".encode())
            log.flush()
            start = log.tell()
            search_ = subprocess.Popen(search_command(base, root), cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        said = lambda: log_path.read_bytes()[start:].decode(errors="replace")  # noqa: E731
        wait_for(lambda: search_.poll() is not None or moment == "start" or MOMENTS[moment].search(said()), 300)
        time.sleep(delay)
        search_.kill()
        search_.wait()
        deadline = time.monotonic() + 5
        while session_processes(search_.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = session_processes(search_.pid)
        for pid in (int(p.split()[0]) for p in left):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"attempt {attempt} (seed {seed}), 5 s after the kill:\n" + "\n".join(left)
        assert "Traceback" not in said() and "Exception ignored" not in said(), said()[-3000:]


@pytest.mark.slow
def test_ctrl_c_as_the_workers_start_ends_the_search_without_a_traceback(tiny_data, tmp_path):
    """The search starts its workers with SIGINT and SIGTERM blocked until their handler is in place: a Ctrl-C
    (SIGINT to the terminal's process group) while they start printed KeyboardInterrupt tracebacks."""
    base = tmp_path / "base.cfg"
    base.write_text(f"--hidden_units=16\n--max_steps=30\n--nojit_compile\n--data_dir={tiny_data.data_dir}\n"
                    "--trials=2\n--workers=2\n")
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DNN_IDX_DIR"}
    search_ = subprocess.Popen(search_command(base, tmp_path / "root"), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    while not any("worker process(es)" in line for line in lines):
        lines.append(search_.stdout.readline())
        assert lines[-1], "".join(lines)
    os.killpg(search_.pid, signal.SIGINT)
    output = "".join(lines) + search_.communicate(timeout=120)[0]
    assert search_.returncode == 1 and "error: interrupted" in output, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
    wait_for(lambda: not session_processes(search_.pid), timeout=10)


def killed_ten_times(tiny_data, tmp_path, storage=None):
    base, root = tmp_path / "base.cfg", tmp_path / "root"
    base.write_text(f"--hidden_units=16\n--max_steps={KILL_STEPS}\n--eval_every=20\n--log_every=10\n"
                    "--checkpoint_every=10\n--batch_size=64\n--nodiagnostics\n--nojit_compile\n"
                    f"--data_dir={tiny_data.data_dir}\n--trials={KILL_TRIALS}\n--workers=2\n--search_seed=0\n"
                    + (f"--storage={storage}\n--study_name=killed\n" if storage else ""))
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DNN_IDX_DIR"}
    kill_at_random_moments(base, root, env, tmp_path / "killed.log")
    end = subprocess.run(search_command(base, root), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert end.returncode == 0, end.stdout[-3000:] + end.stderr[-3000:]
    check_whole(root, tiny_data, end.stdout, tmp_path, env)


def check_whole(root, tiny_data, output, tmp_path, env):
    """The study reads; --trials counted once each, none lost; every trial's folder evaluates; the best exports."""
    trials_ = search.load_from_root(str(root)).get_trials()
    counted = [t for t in trials_ if search.counts_toward_total(t)]
    assert [t.state.name for t in counted] == ["COMPLETE"] * KILL_TRIALS, states_of(trials_)
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials_), states_of(trials_)  # none running or waiting
    folders = [t.user_attrs["folder"] for t in counted]
    assert len(set(folders)) == KILL_TRIALS, states_of(trials_)  # no trial counted twice
    assert sorted(p.name for p in root.glob("trial-*")) == sorted(folders), states_of(trials_)  # none lost
    retried = {n for t in trials_ for n in t.system_attrs.get("retry_history", [])}
    stopped = [t.number for t in trials_ if t.state.name == "FAIL" and not t.user_attrs.get("surplus")]
    assert set(stopped) <= retried, states_of(trials_)  # each interrupted trial was queued again
    for trial in counted:
        folder = root / trial.user_attrs["folder"]
        assert TrainResult.from_json((folder / "result.json").read_text()).step == KILL_STEPS
        report = evaluation.evaluate_checkpoint(str(folder / "ckpt"), data_dir=tiny_data.data_dir)
        assert report["step"] == KILL_STEPS and 0 < report["test"]["accuracy"] <= 1
    best = max(counted, key=lambda t: t.value)
    named = re.search(r"^Best trial: (\d+) in (\S+) ", output, re.M)
    assert named and int(named[1]) == best.number and named[2] == str(root / best.user_attrs["folder"]), output
    exported = subprocess.run([sys.executable, "-m", "mnist_dnn.export", f"--ckpt_dir={named[2]}/ckpt", "--which=best",
                               f"--export_dir={tmp_path / 'export'}"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
    assert exported.returncode == 0 and (tmp_path / "export" / "1" / "saved_model.pb").is_file(), exported.stderr


def states_of(trials_):
    return [(t.number, t.state.name, t.user_attrs.get("folder"), t.system_attrs.get("retry_history")) for t in trials_]


@pytest.mark.slow
def test_a_search_killed_ten_times_at_random_moments_leaves_no_worker_and_ends_whole(tiny_data, tmp_path):
    killed_ten_times(tiny_data, tmp_path)


@pytest.mark.slow
def test_a_search_on_postgresql_killed_ten_times_leaves_no_worker_and_ends_whole(postgres, tiny_data, tmp_path):
    killed_ten_times(tiny_data, tmp_path, storage=postgres)
