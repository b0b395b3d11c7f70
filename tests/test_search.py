"""The search (Optuna): the space, pruning from the validation action, the worker loop, resuming, the report.

Fast tier: in process, on the tiny synthetic data. Slow tier: the tool in subprocesses on the real
MNIST (a SIGKILLed search resumed, two searches sharing a root) and a real PostgreSQL server.
"""

import csv
import dataclasses
import json
import os
import signal

import numpy as np
import optuna
import pytest
import tensorflow as tf

from conftest import tiny_config
from mnist_dnn.lib import reports, search, studies, trials
from mnist_dnn.lib.config import ConfigError, ModelConfig
from mnist_dnn.lib.run_dir import RunDir
from mnist_dnn.lib.training import TrainResult

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
    studies.record_root(config)
    studies.open_study(config, search.describe(space), create=True)
    if pruner:
        monkeypatch.setattr(studies, "make_pruner", lambda *args: pruner)
    lines = []
    code = trials.work(trials.make_plan(config, space, base), 0, lines.append)
    monkeypatch.undo()
    study = studies.load_from_root(str(root))
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
    assert studies.progress(study) == (3, 0, 0)  # counted once: --trials is honoured in total


@pytest.mark.slow  # four tiny trainings in process: ~10 s alone, a minute on the loaded machine
def test_a_finished_search_run_again_trains_nothing(searched):
    code, lines, snapshot, study = searched["again"]
    assert code == 0 and lines == [] and len(snapshot) == 4


@pytest.mark.slow  # four tiny trainings in process: ~10 s alone, a minute on the loaded machine
def test_the_report_of_a_search_root_ranks_its_trials_and_draws_optunas_pictures(searched):
    pytest.importorskip("matplotlib")
    root = str(searched["root"])
    lines = []
    rows = reports.report(root, out=lines.append)
    study = studies.load_from_root(root)
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
