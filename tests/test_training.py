"""Training end to end, in process on tiny data: what a run writes, resume, progress, TensorBoard."""

import dataclasses
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT, call_tool, copy_run, folder_hashes, hparams, run_cli, scalars, tiny_config, write_idx_folder
from mnist_dnn.lib.core import data, models
from mnist_dnn.lib.core.checkpoint_store import CheckpointStore
from mnist_dnn.lib.trainer import actions, steps, summaries, training
from mnist_dnn.lib.config import ModelConfig
from mnist_dnn.lib.errors import UsageError
from mnist_dnn.lib.core.run_dir import RunDir


def test_every_optimizer_name_builds_that_optimizer():
    expected = {"sgd": ("SGD", 0.0, False), "momentum": ("SGD", 0.9, False), "nesterov": ("SGD", 0.9, True),
                "adam": ("Adam",), "adamw": ("AdamW",), "rmsprop": ("RMSprop",), "adagrad": ("Adagrad",)}
    assert set(expected) == set(training.OPTIMIZERS)
    for name, (kind, *sgd) in expected.items():
        optimizer = training.make_optimizer(name, 0.1)
        assert type(optimizer).__name__ == kind and float(optimizer.learning_rate) == pytest.approx(0.1)
        if sgd:
            assert (optimizer.momentum, optimizer.nesterov) == tuple(sgd)


def test_the_default_log_dir_follows_the_run_folder_whatever_the_hyperparameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = training.TrainConfig(model=models.make_config("raw", (10, 20)), optimizer="sgd", learning_rate=0.1)
    assert training.check_folders(config)[1] == os.path.join("checkpoints", "logs")
    assert training.check_folders(dataclasses.replace(config, ckpt_dir="runs/x"))[1] == os.path.join("runs/x", "logs")
    assert os.listdir(tmp_path) == []  # checked, nothing written


def test_training_writes_step_named_checkpoints_config_summaries_hparams_and_the_model_graph(tiny_run):
    folder, result = tiny_run
    assert (result.step, result.start_step, result.resumed_from) == (30, 0, None)
    assert result.checkpoint.endswith("model.ckpt-30") and result.validation.accuracy > 0.5
    names = sorted(os.path.basename(p) for p in glob.glob(str(folder / "ckpt" / "model.ckpt-*.index")))
    assert names == ["model.ckpt-20.index", "model.ckpt-30.index"]  # keep_checkpoints=2
    stored = RunDir(str(folder / "ckpt")).load_config()
    assert stored.model == ModelConfig("dense", (32,)) and stored.resume["batch_size"] == 64
    assert sorted(scalars(folder / "logs", "train/loss")) == [10, 20, 30]
    assert sorted(scalars(folder / "logs", "validation/accuracy")) == [10, 20, 30]
    run = event_accumulator.EventAccumulator(str(folder / "logs"))
    run.Reload()
    graph_ops = {node.op for node in run.Graph().node}
    assert "MatMul" in graph_ops and "Relu" in graph_ops  # the model's forward pass
    stored = hparams(folder / "logs")
    assert stored["hidden_units"] == "32" and stored["batch_size"] == "64" and stored["optimizer"] == "adam"


def test_progress_lines_carry_step_total_percent_and_eta_and_the_run_is_described(tiny_data, tmp_path, capsys):
    training.train(tiny_config(tiny_data, tmp_path, max_steps=20, jit_compile=None))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Training dense 784-32-10 with adam lr=0.001, batch 64, steps 0->20 on 1 CPU, XLA-compiled")
    progress = [line for line in out if line.startswith("step ") and "ETA" in line]
    assert progress[0].startswith("step 10/20 (50%): loss") and "includes compiling" in progress[0]
    assert progress[1].startswith("step 20/20 (100%)") and "includes" not in progress[1]


def test_examples_per_second_and_the_eta_leave_out_validation_and_saving(tiny_data, tmp_path, monkeypatch):
    """On a fake clock each training step takes 1 s, each validation 100 s and each save 50 s: 64 examples a
    step make 64 examples/s in every line and in the result, and the elapsed time and ETA count 1 s a step."""
    now = [1000.0]
    monkeypatch.setattr(actions, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def taking(seconds, work):  # `work`, taking `seconds(*args)` on the clock
        def run(*args):
            work(*args)
            now[0] += seconds(*args)
        return run

    make_runner, save, validate = steps.make_runner, CheckpointStore.save, actions.Validation.__call__
    monkeypatch.setattr(steps, "make_runner", lambda *a, **k: taking(lambda num_steps: num_steps, make_runner(*a, **k)))
    monkeypatch.setattr(CheckpointStore, "save", taking(lambda *args: 50, save))
    monkeypatch.setattr(actions.Validation, "__call__", taking(lambda self, step: 100, validate))
    lines = []
    result = training.train(tiny_config(tiny_data, tmp_path, max_steps=30), say=lines.append)
    progress = [re.search(r"^step (\d+)/30 .*, ([\d,]+) examples/s.*; elapsed (\S+), ETA (\S+)$", line)
                for line in lines if line.startswith("step ") and "ETA" in line]
    assert [m.groups() for m in progress] == [("10", "64", "0:10", "0:20"), ("20", "64", "0:20", "0:10"),
                                               ("30", "64", "0:30", "0:00")]
    assert result.examples_per_second == pytest.approx(64.0)
    assert now[0] == 1000 + 30 + 3 * 100 + 3 * 50  # the pauses did happen


def test_one_training_is_one_run_in_tensorboard_with_its_parts_as_tag_prefixes(tiny_data, tmp_path):
    """TensorBoard's runs are the folders that hold event files: a training's logs/train, logs/validation and
    logs/diagnostics were three runs beside logs/ (issue 36, item 5). Now logs/ holds every part, and one file."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer

    training.train(tiny_config(tiny_data, tmp_path / "run", max_steps=20, diagnostics=True), say=lambda line: None)
    board = plugin_event_multiplexer.EventMultiplexer(tensor_size_guidance={"tensors": 0})
    board.AddRunsFromDirectory(str(tmp_path))  # as `tensorboard --logdir` finds runs
    board.Reload()
    assert list(board.Runs()) == [os.path.join("run", "logs")]
    tags = board.Runs()[os.path.join("run", "logs")]["tensors"]
    assert {"train/loss", "train/accuracy", "train/learning_rate", "validation/loss", "validation/accuracy",
            "diagnostics/gradient_norm/global", "diagnostics/confusion_matrix",
            "_hparams_/session_start_info"} <= set(tags)
    assert len(glob.glob(str(tmp_path / "run" / "logs" / "*tfevents*"))) == 1  # TensorBoard follows one file a folder


def test_a_resumed_run_writes_its_graph_once_so_tensorboard_does_not_warn_of_a_second(tiny_data, tmp_path):
    """Two graph events in one run folder make TensorBoard's reader log a warning (a search's workers printed it)."""
    for max_steps in (10, 20):
        training.train(tiny_config(tiny_data, tmp_path / "run", max_steps=max_steps), say=lambda line: None)
    files = sorted(glob.glob(str(tmp_path / "run" / "logs" / "*tfevents*")))
    graphs = [event for path in files for event in tf.compat.v1.train.summary_iterator(path) if event.graph_def]
    assert len(files) == 2 and len(graphs) == 1
    hparams_starts = [path for path in files if "_hparams_/session_start_info" in
                      {v.tag for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value}]
    assert hparams_starts == files  # the resumed run still tells HParams its settings


def test_the_report_reads_the_curves_of_runs_written_before_and_after_the_parts_moved_into_one_folder(tmp_path):
    """A run of the old layout (logs/validation, tag `accuracy`) resumed into the new (logs/, `validation/accuracy`)."""
    from mnist_dnn.lib.experiments import reports

    logs = tmp_path / "logs"
    for folder, tag, points in ((logs / "validation", "accuracy", {10: 0.5, 20: 0.6}),
                                (logs, "validation/accuracy", {20: 0.65, 30: 0.7})):
        writer = tf.summary.create_file_writer(str(folder))
        for step, value in points.items():
            summaries.log_scalars(writer, step, **{tag: value})
        writer.close()
    steps_, values = reports.read_scalars(str(logs / "validation"), "accuracy")  # as the public API was called
    assert steps_.tolist() == [10, 20, 30] and values.tolist() == pytest.approx([0.5, 0.65, 0.7])  # the resume's last
    assert reports.read_scalars(str(logs), "validation/accuracy")[0].tolist() == [20, 30]
    assert reports.read_scalars(str(logs / "train"), "loss")[0].tolist() == []


def test_each_hparams_column_shows_its_own_setting(tiny_data, tmp_path):
    """Every setting TensorBoard's HParams lists given a value of its own, read back from the event files. Whole
    numbers are text: the dashboard shows a number to 5 significant digits, a batch size of 48 as 48.000."""
    config = tiny_config(tiny_data, tmp_path, model=ModelConfig("dense", (24, 12), 0.25), optimizer="sgd",
                         learning_rate=0.05, lr_schedule="cosine", batch_size=48, max_steps=10, augment_shift=1,
                         augment_rotate=7.0, augment_scale=0.15, seed=3)
    training.train(config, say=lambda line: None)
    assert hparams(tmp_path / "logs") == pytest.approx({
        "model": "dense", "hidden_units": "24-12", "conv_filters": "none", "pool_every": "0", "dropout": 0.25,
        "optimizer": "sgd", "learning_rate": 0.05, "lr_schedule": "cosine", "batch_size": "48", "max_steps": "10",
        "augment_shift": "1", "augment_rotate": 7.0, "augment_scale": 0.15, "seed": "3", "dataset": "mnist"})


@pytest.mark.slow
def test_resume_continues_from_the_saved_step_exactly_as_an_uninterrupted_run(tiny_data, tmp_path):
    settings = dict(max_steps=40, deterministic=True, model=models.make_config("dense", (32,), 0.2), augment_shift=2,
                    jit_compile=None)
    whole = training.train(tiny_config(tiny_data, tmp_path / "whole", **settings))
    training.train(tiny_config(tiny_data, tmp_path / "parts", **{**settings, "max_steps": 17}))
    resumed = training.train(tiny_config(tiny_data, tmp_path / "parts", **settings))
    assert resumed.start_step == 17 and resumed.resumed_from.endswith("model.ckpt-17")
    a, b = tf.train.load_checkpoint(whole.checkpoint), tf.train.load_checkpoint(resumed.checkpoint)
    names = set(a.get_variable_to_shape_map()) - {"save_counter/.ATTRIBUTES/VARIABLE_VALUE", "_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert len(names) > 10
    for name in names:
        np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)


@pytest.mark.parametrize("damage", [None] + [pytest.param(d, marks=pytest.mark.slow)
                                              for d in (b"", b"\0" * 100, b"\xff\xfe\xfd not utf-8")])
def test_a_missing_or_damaged_state_file_resumes_from_the_newest_checkpoint_and_changes_none(tiny_run, tiny_data,
                                                                                               tmp_path, damage):
    copy_run(tiny_run, tmp_path)
    state_file = tmp_path / "ckpt" / "checkpoint"
    state_file.unlink() if damage is None else state_file.write_bytes(damage)
    checkpoint_files = lambda: {p: h for p, h in folder_hashes(tmp_path / "ckpt").items()  # noqa: E731
                                if "model.ckpt" in p and os.path.dirname(p) == str(tmp_path / "ckpt")}
    before = checkpoint_files()
    finished = training.train(tiny_config(tiny_data, tmp_path))
    assert (finished.start_step, finished.step) == (30, 30) and checkpoint_files() == before
    resumed = training.train(tiny_config(tiny_data, tmp_path, max_steps=40))
    assert resumed.start_step == 30 and resumed.step == 40
    after = checkpoint_files()
    assert all(after.get(path) == digest for path, digest in before.items() if "-30." in path)


def test_restore_brings_back_adam_moments_and_step(tiny_run, tiny_data, tmp_path):
    folder, result = tiny_run
    fresh = training.build_state(tiny_config(tiny_data, tmp_path))
    fresh.checkpoint.restore(result.checkpoint).assert_consumed()
    assert int(fresh.step) == 30
    slots = [v for v in fresh.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    assert len(slots) == 2 * len(fresh.model.trainable_variables)
    assert all(np.any(v.numpy() != 0) for v in slots)


def test_a_finished_run_says_so_and_writes_nothing(tiny_run, tiny_data, tmp_path, capsys):
    copy_run(tiny_run, tmp_path)
    before = folder_hashes(tmp_path)
    result = training.train(tiny_config(tiny_data, tmp_path))
    assert result.step == result.start_step == 30 and "Already finished" in capsys.readouterr().out
    assert folder_hashes(tmp_path) == before


def test_resuming_with_another_model_or_dataset_is_refused_and_touches_nothing(tiny_run, tiny_data, tmp_path):
    copy_run(tiny_run, tmp_path)
    before = folder_hashes(tmp_path)
    with pytest.raises(UsageError, match="holds a run of dense 32 on mnist, not raw 128 on mnist"):
        training.train(tiny_config(tiny_data, tmp_path, model=models.make_config("raw"), max_steps=40))
    with pytest.raises(UsageError, match="not dense 32 on fashion_mnist"):
        fashion = dataclasses.replace(tiny_data, dataset="fashion_mnist")
        training.train(tiny_config(tiny_data, tmp_path, max_steps=40, data=fashion))
    assert folder_hashes(tmp_path) == before


@pytest.mark.slow
def test_resume_uses_the_learning_rate_of_the_command_line(tiny_data, tmp_path):
    training.train(tiny_config(tiny_data, tmp_path, max_steps=10, learning_rate=0.01))
    result = training.train(tiny_config(tiny_data, tmp_path, max_steps=20, learning_rate=0.001))
    reader = tf.train.load_checkpoint(result.checkpoint)
    assert reader.get_tensor("optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE") == pytest.approx(0.001)


@pytest.mark.slow
def test_cosine_schedule_decays_to_zero_at_max_steps_and_resumes_on_the_curve(tiny_data, tmp_path):
    cosine = dict(lr_schedule="cosine", learning_rate=0.01, max_steps=40, keep_checkpoints=5)
    training.train(tiny_config(tiny_data, tmp_path / "whole", **cosine))
    curve = scalars(tmp_path / "whole" / "logs", "train/learning_rate")
    assert curve[20] == pytest.approx(0.005, rel=1e-3) and curve[40] == pytest.approx(0.0, abs=1e-7)
    training.train(tiny_config(tiny_data, tmp_path / "parts", **{**cosine, "max_steps": 20}))
    with pytest.raises(UsageError, match="--lr_schedule=cosine, not --lr_schedule=constant"):
        training.train(tiny_config(tiny_data, tmp_path / "parts", max_steps=40, learning_rate=0.01))
    training.train(tiny_config(tiny_data, tmp_path / "parts", **cosine))
    resumed = scalars(tmp_path / "parts" / "logs", "train/learning_rate")
    assert {step: resumed[step] for step in (30, 40)} == pytest.approx({step: curve[step] for step in (30, 40)})


@pytest.mark.slow
def test_a_diverging_run_stops_with_the_step_and_saves_no_non_finite_weights(tiny_data, tmp_path):
    result = call_tool("train", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                       f"--log_dir={tmp_path / 'logs'}", "--optimizer=sgd", "--learning_rate=1e6", "--max_steps=1000",
                       "--checkpoint_every=1", "--steps_per_call=1", "--hidden_units=32", "--dropout=0",
                       "--batch_size=64", "--eval_every=1000", "--nodiagnostics")
    # The loss turns NaN, or the weights overflow first: either way one line, and nothing non-finite saved.
    assert result.returncode == 1 and ("NaN or infinite at step" in result.stderr or "not all finite" in result.stderr)
    run = RunDir(str(tmp_path / "ckpt"))
    for step in run.steps():
        reader = tf.train.load_checkpoint(run.checkpoint_path(step))
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            assert not np.issubdtype(np.asarray(value).dtype, np.floating) or np.isfinite(value).all(), (step, name)


@pytest.mark.slow
def test_the_runner_step_count_matches_what_the_controller_asked(tiny_data, tmp_path):
    """steps_per_call smaller than every period: the runner returns at each multiple, nothing is skipped."""
    result = training.train(tiny_config(tiny_data, tmp_path, max_steps=25, steps_per_call=3, log_every=5))
    assert result.step == 25 and sorted(scalars(tmp_path / "logs", "train/loss")) == [5, 10, 15, 20, 25]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_at_the_current_step_then_exits(tiny_data, tmp_path):
    """No periodic save in reach: the only checkpoint in the folder is the one the signal asked for."""
    ckpt, result_file = tmp_path / "ckpt", tmp_path / "result.json"
    args = [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={ckpt}",
            f"--log_dir={tmp_path / 'logs'}", "--max_steps=10000000", "--checkpoint_every=1000000",
            "--eval_every=50", "--steps_per_call=7", f"--result_file={result_file}", "--nodiagnostics"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 120
    best = RunDir(str(ckpt))  # the first validation (step 50) saves best/: training is under way
    while not (os.path.isdir(best.best_dir) and best.steps(best.best_dir)) and time.time() < deadline:
        assert process.poll() is None, process.stderr.read()[-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    result = json.loads(result_file.read_text())
    assert result["stopped_by_signal"] == signal.SIGTERM and result["step"] >= 50
    assert result["checkpoint"] == str(ckpt / f"model.ckpt-{result['step']}")
    assert RunDir(str(ckpt)).steps() == [result["step"]]
    assert f"Stopped by signal {signal.SIGTERM} at step {result['step']}" in out


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["done", "diverged"])
def test_the_process_ends_with_every_summary_on_disk(tiny_data, tmp_path, ending):
    """The tools end their process without Python's teardown: the summaries must be flushed by then,
    and the exit handlers run (AutoGraph removes its temporary files in one)."""
    lr, log_every = {"done": ("0.001", 10), "diverged": ("1e6", 1)}[ending]
    (tmp_path / "tmp").mkdir()
    result = run_cli("train", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                     f"--log_dir={tmp_path / 'logs'}", "--optimizer=sgd", f"--learning_rate={lr}", "--max_steps=60",
                     f"--log_every={log_every}", "--eval_every=20", "--batch_size=64", "--hidden_units=32",
                     env_extra={"TMPDIR": str(tmp_path / "tmp")})
    assert result.returncode == {"done": 0, "diverged": 1}[ending], result.stderr
    assert os.listdir(tmp_path / "tmp") == []
    logged = sorted(scalars(tmp_path / "logs", "train/loss"))
    printed = [int(line.split()[1].split("/")[0]) for line in result.stdout.splitlines() if line.startswith("step ")
               and "/" in line.split()[1]]
    stopped_at = 61 if ending == "done" else int(re.search(r"NaN or infinite at step (\d+)", result.stderr)[1])
    assert logged == printed and logged[-1] == stopped_at - 1
    if ending == "done":
        assert sorted(scalars(tmp_path / "logs", "validation/accuracy")) == [20, 40, 60]
        assert 60 in scalars(tmp_path / "logs", "diagnostics/gradient_norm/global")


def test_the_library_prints_nothing_itself_every_line_goes_to_say(tiny_data, tmp_path, capsys, monkeypatch):
    lines = []
    write_idx_folder(tmp_path / "idx", n_train=1000, n_test=100)  # an import to tell of, too: a small one
    fresh_data = dataclasses.replace(tiny_data, data_dir=str(tmp_path / "tfds"), idx_dir=str(tmp_path / "idx"))
    monkeypatch.setattr(data, "check_canonical", lambda *args: None)  # the tiny IDX files are not the official ones
    from tensorflow_datasets.core.utils import tqdm_utils
    monkeypatch.setattr(tqdm_utils, "_active", False)  # TFDS's own bars, the host's choice, as the tools make it
    config = tiny_config(fresh_data, tmp_path, max_steps=10, eval_every=10, checkpoint_every=10)
    training.train(config, say=lines.append)
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    assert lines[0].startswith("Importing mnist from") and any(line.startswith("Training dense") for line in lines)
    assert any("step 10/10" in line for line in lines) and "Done at step 10" in lines[-1]


def test_runs_of_the_same_settings_log_into_their_own_run_folders_and_a_resume_appends_to_its_own(tiny_data, tmp_path):
    for name in ("a", "b"):
        training.train(tiny_config(tiny_data, tmp_path / name, log_dir=None, max_steps=20))
    training.train(tiny_config(tiny_data, tmp_path / "a", log_dir=None, max_steps=30))  # resumed
    logs = {name: tmp_path / name / "ckpt" / "logs" for name in ("a", "b")}
    assert sorted(scalars(logs["a"], "validation/accuracy")) == [10, 20, 30]
    assert sorted(scalars(logs["b"], "validation/accuracy")) == [10, 20]
    trials = {name: summaries.logged_trials(str(folder)) for name, folder in logs.items()}
    assert len(trials["a"]) == 2 and len(set(trials["a"])) == 1  # the start and the resume: one trial
    assert trials["b"][0] != trials["a"][0] and trials["b"][0].startswith("ckpt (")
    assert not (tmp_path / "logs").exists() and not os.path.exists("logs/dense-32-adam-0.001-b64")
