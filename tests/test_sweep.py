"""Sweeps and their report, on the real MNIST: a 2x2 grid killed after its first run, then resumed."""

import csv
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT, assert_one_line_error, copy_run, hparams, run_cli, scalars, synthetic_split, tiny_config
from mnist_dnn.lib.core import data, evaluation
from mnist_dnn.lib.experiments import reports, roots, sweeps
from mnist_dnn.lib.trainer import diagnostics, training
from mnist_dnn.lib.core.run_dir import RunDir
from mnist_dnn.lib.errors import UsageError

RUNS = ["learning_rate=0.01,hidden_units=32", "learning_rate=0.01,hidden_units=64-32",
        "learning_rate=0.001,hidden_units=32", "learning_rate=0.001,hidden_units=64-32"]


def sweep_command(base, root):
    return [sys.executable, "-m", "mnist_dnn.sweep", f"--flagfile={base}", "--grid=learning_rate=0.01,0.001",
            "--grid=hidden_units=32,64-32", f"--root={root}"]


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def lock_is_free(ckpt_dir):
    folder = os.open(ckpt_dir, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(folder)
    return True


@pytest.fixture(scope="module")
def swept(real_data, tmp_path_factory):
    """Runs the sweep, SIGKILLs it during its second run, reruns the same command."""
    tmp = tmp_path_factory.mktemp("sweep")
    base, root = tmp / "base.cfg", tmp / "runs"
    # A single run's flagfile sets --ckpt_dir: the sweep replaces it for each run.
    base.write_text(f"--model=dense\n--max_steps=200\n--eval_every=100\n--log_every=50\n--checkpoint_every=50\n"
                    f"--ckpt_dir=elsewhere\n--data_dir={real_data.data_dir}\n")
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DNN_IDX_DIR"}
    with open(tmp / "first.log", "w") as log:
        first = subprocess.Popen(sweep_command(base, root), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        second_ckpt = root / RUNS[1] / "ckpt"
        wait_for(lambda: (second_ckpt / "checkpoint").exists() or first.poll() is not None)
        first.send_signal(signal.SIGKILL)
        first.wait()
    wait_for(lambda: lock_is_free(second_ckpt))  # the orphaned run got SIGTERM, saved and stopped
    interrupted = {name: sorted(os.listdir(root / name)) if (root / name).exists() else None for name in RUNS}
    interrupted_step = RunDir(str(second_ckpt)).steps()[-1]
    rerun = subprocess.run(sweep_command(base, root), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return dict(root=root, interrupted=interrupted, interrupted_step=interrupted_step, rerun=rerun,
                first_log=(tmp / "first.log").read_text(), real_data=real_data, base=base)


@pytest.mark.slow
def test_a_killed_sweep_resumes_where_it_stopped(swept):
    interrupted, rerun = swept["interrupted"], swept["rerun"]
    assert "done.json" in interrupted[RUNS[0]], swept["first_log"][-3000:]
    assert "done.json" not in interrupted[RUNS[1]] and "ckpt" in interrupted[RUNS[1]]
    assert interrupted[RUNS[2]] is None and interrupted[RUNS[3]] is None
    assert 0 < swept["interrupted_step"] < 200
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"[1/4] {RUNS[0]}: done already, skipped" in rerun.stdout
    assert f"[2/4] {RUNS[1]}: resuming" in rerun.stdout
    assert f"[3/4] {RUNS[2]}: starting" in rerun.stdout
    for name in RUNS:
        done = json.loads((swept["root"] / name / "done.json").read_text())
        assert done["steps"] == 200 and done["wall_time_s"] > 0 and done["examples_per_second"] > 0
        assert done["resumed_from_step"] == (swept["interrupted_step"] if name == RUNS[1] else 0)
        assert "--ckpt_dir=elsewhere" not in done["command"]
        assert f"--ckpt_dir={swept['root'] / name / 'ckpt'}" in done["command"]
    assert json.loads((swept["root"] / RUNS[1] / "done.json").read_text())["resumed_from_step"] == swept["interrupted_step"]


@pytest.mark.slow
def test_the_report_ranks_all_runs_with_the_test_accuracy_of_their_best_checkpoint(swept):
    root = swept["root"]
    with open(root / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["run"] for r in rows) == sorted(RUNS)
    accuracies = [float(r["best_val_accuracy"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True) and [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    for row in rows:
        best = RunDir(str(root / row["run"] / "ckpt")).read_best()
        assert (row["status"], int(row["steps"])) == ("done", 200)
        assert float(row["best_val_accuracy"]) == best.accuracy > 0.85 and int(row["best_step"]) == best.step
        assert row["learning_rate"] + row["hidden_units"] in row["run"].replace("learning_rate=", "").replace(",hidden_units=", "")
        assert float(row["wall_time_s"]) > 0 and float(row["examples_per_second"]) > 1000
    # The table's test accuracy is what `evaluate --which=best` says, here on the resumed run.
    resumed = next(r for r in rows if r["run"] == RUNS[1])
    assert resumed["resumed_from_step"] == str(swept["interrupted_step"])
    metrics = root.parent / "m.json"
    evaluated = run_cli("evaluate", f"--ckpt_dir={root / RUNS[1] / 'ckpt'}", "--which=best", "--confusion_matrix",
                        f"--data_dir={swept['real_data'].data_dir}", f"--metrics_file={metrics}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(metrics.read_text())
    assert float(resumed["test_accuracy_of_best"]) == report["test"]["accuracy"]
    assert report["step"] == int(resumed["best_step"])
    assert report["checkpoint"].endswith(os.path.join("ckpt", "best", f"model.ckpt-{resumed['best_step']}"))
    check_confusion_matrix(report, evaluated.stdout, swept["real_data"])
    # Printed and in Markdown too, in the same order.
    printed = [line.split()[1:3] for line in swept["rerun"].stdout.splitlines() if line.strip()[:2] in ("1 ", "2 ", "3 ", "4 ")]
    assert printed == [[r["learning_rate"], r["hidden_units"]] for r in rows]
    markdown = (root / "report.md").read_text().splitlines()
    assert len(markdown) == 6 and markdown[0].startswith("| rank | learning_rate | hidden_units |")
    assert f"{float(rows[0]['test_accuracy_of_best']):.2%}" in markdown[2]


def test_the_reports_test_accuracy_is_that_of_the_best_checkpoint_not_the_latest(tiny_run, tiny_data, tmp_path):
    """A run whose latest checkpoint (step 40: the best's logits moved one class along) is far worse than its
    best: the report's test accuracy is numpy's forward pass of the best checkpoint's weights on the test images."""
    folder = copy_run(tiny_run, tmp_path / "root" / "run")
    run = RunDir(str(folder / "ckpt"))
    state = training.build_state(tiny_config(tiny_data, folder))
    state.checkpoint.read(run.best_checkpoint()).assert_existing_objects_matched()  # TensorFlow's reader, not the tools'
    weights = [v.numpy().astype(np.float64) for v in state.model.trainable_variables]
    for variable in state.model.trainable_variables[-2:]:  # the output layer's kernel and bias
        variable.assign(np.roll(variable.numpy(), 1, axis=-1))
    state.step.assign(40)
    run.save(state.checkpoint, 40, state.weights(), keep=2)
    images, labels = synthetic_split(500, seed=2)  # the tiny data's test split, as conftest writes it

    def numpy_accuracy(kernel, bias, out_kernel, out_bias):
        hidden = np.maximum(images.reshape(-1, 784) / 255.0 @ kernel + bias, 0)
        return float(np.mean((hidden @ out_kernel + out_bias).argmax(1) == labels))

    best, latest = numpy_accuracy(*weights), numpy_accuracy(*weights[:2], *(np.roll(w, 1, -1) for w in weights[2:]))
    assert best > 0.5 and latest < 0.3
    row = reports.collect_row(str(tmp_path / "root"), "run", {}, data_dir=tiny_data.data_dir)
    assert run.latest().endswith("model.ckpt-40") and row.best_step != 40
    assert row.test_accuracy == pytest.approx(best, abs=1e-6)


def check_confusion_matrix(report, stdout, real_data):
    """The printed and stored test confusion matrix agree with the labels and the accuracies."""
    matrix = np.array(report["test"]["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 10000
    labels = data.load_splits(real_data)["test"].labels.numpy()
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(labels, minlength=10))  # rows: true classes
    assert np.trace(matrix) / 10000 == pytest.approx(report["test"]["accuracy"])
    np.testing.assert_allclose(np.diag(matrix) / matrix.sum(axis=1), report["test"]["per_class_accuracy"])
    assert matrix.sum() - np.trace(matrix) > 0  # a real model makes mistakes: off-diagonal counts are there
    printed = stdout.split("confusion matrix (test):\n")[1].splitlines()
    assert printed[0].startswith("rows: true class")
    assert [int(v) for v in printed[2].split()] == [0, *matrix[0]]
    assert [int(v) for v in printed[11].split()] == [9, *matrix[9]]


@pytest.mark.slow
def test_report_png_shows_the_curves(swept):
    pytest.importorskip("matplotlib", reason="the test extra installs matplotlib")
    image = tf.io.decode_png(tf.io.read_file(str(swept["root"] / "report.png")))
    height, width = image.shape[:2]
    assert 300 <= height <= 1000 and 600 <= width <= 2000
    assert len(np.unique(image.numpy().reshape(-1, image.shape[2]), axis=0)) > 20  # not blank


@pytest.mark.slow
def test_report_png_plots_each_runs_own_curves(swept, monkeypatch, tmp_path):
    """The lines drawn are every run's validation accuracy and training loss, as TensorBoard stores them."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rows = [reports.Row(name, {"run": name}, "done") for name in RUNS]
    assert reports.plot(str(swept["root"]), ["run"], rows, str(tmp_path / "report.png"))
    accuracy_axes, loss_axes = figures[0].axes
    for axes, split, tag in ((accuracy_axes, "validation", "accuracy"), (loss_axes, "train", "loss")):
        drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()}
        for name in RUNS:
            expected = scalars(swept["root"] / name / "logs", f"{split}/{tag}")
            assert len(expected) >= 2
            assert drawn[name] == (sorted(expected), [expected[k] for k in sorted(expected)])  # not run=<name>


def test_report_png_of_many_trials_holds_their_legend_without_a_layout_warning(monkeypatch, tmp_path):
    """40 trials' labels once ran off the figure, and matplotlib warned "Tight layout not applied"."""
    plt = pytest.importorskip("matplotlib.pyplot", reason="the test extra installs matplotlib")

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    names = ["trial", "learning_rate", "hidden_units", "dropout", "augment_shift"]
    rows = [reports.Row(f"trial-{i:04d}", {"trial": f"trial-{i:04d}", "learning_rate": "0.0007842",
                                            "hidden_units": "1024-1024", "dropout": "0.1254", "augment_shift": "2"},
                        "complete") for i in range(40)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reports.plot(str(tmp_path), names, rows, str(tmp_path / "report.png"))
    figure = figures[0]
    legend = figure.legends[0].get_window_extent()
    assert len(figure.legends[0].get_texts()) == 40
    assert figure.bbox.x0 <= legend.x0 and legend.x1 <= figure.bbox.x1
    assert figure.bbox.y0 <= legend.y0 and legend.y1 <= figure.bbox.y1
    for axes in figure.axes:  # the plots keep their room above the legend
        assert axes.get_window_extent().height >= 250 and axes.get_window_extent().y0 > legend.y1


@pytest.mark.slow
def test_every_run_of_a_sweep_shows_its_hyperparameters_in_tensorboard(swept):
    for name in RUNS:
        stored = hparams(swept["root"] / name / "logs")
        assert stored["learning_rate"] == pytest.approx(float(name.split(",")[0].split("=")[1]))
        assert stored["hidden_units"] == name.split("hidden_units=")[1]


@pytest.mark.slow
def test_report_without_matplotlib_says_how_to_get_the_picture(swept, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    asked = []
    monkeypatch.setattr(evaluation, "evaluate_checkpoint", lambda *a, **k: asked.append(k["which"]) or {"test": {"accuracy": 0.5}})
    root = tmp_path / "runs"
    shutil.copytree(swept["root"], root, ignore=shutil.ignore_patterns("report.*"))
    lines = []
    rows = reports.report(str(root), out=lines.append)
    assert len(rows) == 4 and any(reports.PLOTS_HINT in line for line in lines)
    table = lines[0].splitlines()
    assert table[0].split()[:3] == ["rank", "learning_rate", "hidden_units"] and len(table) == 5
    assert (root / "report.csv").exists() and not (root / "report.png").exists()
    assert asked == ["best"] * 4  # the test accuracy is that of each run's best checkpoint


@pytest.mark.slow
def test_training_writes_image_and_histogram_diagnostics(swept):
    folder = swept["root"] / RUNS[1] / "logs"
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    tags = {t.removeprefix("diagnostics/") for t in acc.Tags()["tensors"] if t.startswith("diagnostics/")}
    assert {"confusion_matrix", "misclassified", "gradient_norm/global", "confusion_matrix_counts"} <= tags
    assert any(t.startswith("weights/") for t in tags) and any(t.startswith("gradients/") for t in tags)
    assert acc.SummaryMetadata("diagnostics/misclassified").plugin_data.plugin_name == "images"
    assert [e.step for e in acc.Tensors("diagnostics/confusion_matrix")][-1] == 200
    width, height, png = tf.make_ndarray(acc.Tensors("diagnostics/confusion_matrix")[-1].tensor_proto)
    assert tf.io.decode_png(png).shape == (int(height), int(width), 3) == (196, 188, 3)
    event = acc.Tensors("diagnostics/misclassified")[-1]
    shown = acc.SummaryMetadata("diagnostics/misclassified").summary_description.split(": ")[1].split(", ")
    assert 0 < len(shown) <= diagnostics.MAX_MISCLASSIFIED and all("->" in s for s in shown)
    assert tf.io.decode_png(tf.make_ndarray(event.tensor_proto)[2]).shape[2] == 3


@pytest.mark.parametrize("specs, expected", [
    (["learning_rate=0.1,1e-3", "hidden_units=128,256-128"],
     [("learning_rate=0.1,hidden_units=128", ("--learning_rate=0.1", "--hidden_units=128")),
      ("learning_rate=0.1,hidden_units=256-128", ("--learning_rate=0.1", "--hidden_units=256,128")),
      ("learning_rate=1e-3,hidden_units=128", ("--learning_rate=1e-3", "--hidden_units=128")),
      ("learning_rate=1e-3,hidden_units=256-128", ("--learning_rate=1e-3", "--hidden_units=256,128"))]),
])
def test_grid_values_expand_to_every_combination(specs, expected):
    axes = [sweeps.parse_axis(s, {"hidden_units"}, lambda name, value: None) for s in specs]
    assert [(r.name, r.args) for r in sweeps.expand(axes, {"hidden_units"})] == expected


@pytest.mark.parametrize("specs, fragment", [
    (["learning_rate"], "must be NAME=VALUE1,VALUE2"),
    (["learning_rate=0.1,,0.2"], "empty value"),
    (["learning_rate=0.1,0.1"], "repeats a value"),
    (["ckpt_dir=a,b"], "cannot vary `ckpt_dir`"),
    (["seed=1", "seed=2"], "more than once"),
    ([], "at least one `grid`="),
])
def test_malformed_grids_are_usage_errors(specs, fragment):
    with pytest.raises(UsageError, match=fragment):
        sweeps.check_axes([sweeps.parse_axis(s, set(), lambda name, value: None) for s in specs])


@pytest.mark.slow
def test_bad_grid_values_are_one_line_usage_errors_that_write_nothing(tmp_path):
    # Values are checked by the training flags' own parsers, before any run starts.
    result = run_cli("sweep", f"--root={tmp_path / 'runs'}", "--grid=hidden_units=128:256-128", cwd=ROOT)
    assert_one_line_error(result, 2, "--hidden_units must be comma-separated integers")
    result = run_cli("sweep", f"--root={tmp_path / 'runs'}", "--grid=learning_rat=0.1", cwd=ROOT)
    assert_one_line_error(result, 2, "not a flag of mnist_dnn.train")
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_root_holding_another_sweep_is_refused(swept):
    stored = json.loads((swept["root"] / "sweep.json").read_text())
    sweeps.record(str(swept["root"]), stored)  # the same sweep: fine
    other = {**stored, "grid": {**stored["grid"], "learning_rate": ["0.5", "0.01"]}}
    with pytest.raises(UsageError, match="holds another sweep"):
        sweeps.record(str(swept["root"]), other)


@pytest.mark.slow
def test_report_of_a_folder_that_is_no_sweep_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="sweep.json is missing"):
        reports.report(str(tmp_path))


# issue 27: the same sweep started twice: a run the other sweep is training is busy, not failed.
@pytest.mark.slow
def test_the_same_sweep_started_twice_trains_each_run_once_and_calls_the_others_busy(tiny_data, tmp_path):
    base, root = tmp_path / "base.cfg", tmp_path / "runs"
    base.write_text(f"--model=dense\n--max_steps=20\n--eval_every=20\n--log_every=20\n--checkpoint_every=20\n"
                    f"--data_dir={tiny_data.data_dir}\n")
    command = [sys.executable, "-m", "mnist_dnn.sweep", f"--flagfile={base}", "--grid=learning_rate=0.01,0.001",
               f"--root={root}"]
    sweeps_ = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    results = [(s.wait(timeout=600), *s.communicate()) for s in sweeps_]
    assert sorted(code for code, _, _ in results) in ([0, 75], [75, 75]), results
    for code, out, err in results:
        assert "failed (exit" not in out and "runs failed" not in err and "Traceback" not in err, (out, err)
        if code == 75:
            assert "busy: another process is training it; skipped (not failed)" in out
            assert [line for line in err.splitlines() if line.startswith("error: ")] == [
                line for line in err.splitlines() if "being trained by another process" in line and "none failed" in line]
    names = sorted(n for n in os.listdir(root) if (root / n).is_dir())
    assert len(names) == 2
    for name in names:  # each trained once, to the end
        done = json.loads((root / name / "done.json").read_text())
        assert done["steps"] == 20 and done["resumed_from_step"] == 0
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already, skipped") == 2, again.stdout + again.stderr


def test_a_run_held_by_another_sweep_is_skipped_as_busy_and_nothing_starts(tmp_path):
    """The real race, two sweeps at once: test_the_same_sweep_started_twice_..."""
    runs = [sweeps.Run("a=1", {"a": "1"}, ("--a=1",)), sweeps.Run("a=2", {"a": "2"}, ("--a=2",))]
    held = []
    for run in runs:
        folder = roots.run_dir(str(tmp_path), run.name)
        os.makedirs(folder)
        held.append(os.open(folder, os.O_RDONLY))
        fcntl.flock(held[-1], fcntl.LOCK_EX)  # as the other sweep holds it
    lines = []
    try:
        with pytest.raises(sweeps.SweepBusy, match=r"2 of 2 runs are being trained by another process \(a=1, a=2\)"):
            sweeps.run_all(str(tmp_path), runs, [], [sys.executable, "-c", "raise SystemExit(3)"], out=lines.append)
    finally:
        for handle in held:
            os.close(handle)
    assert lines == [f"[{i}/2] {run.name}: busy: another process is training it; skipped (not failed)"
                     for i, run in enumerate(runs, 1)]
    assert sweeps.SweepBusy.exit_code == 75 and all(os.listdir(tmp_path / run.name) == [] for run in runs)


@pytest.mark.slow
def test_each_run_of_two_sweeps_is_its_own_trial_in_tensorboards_hparams(tiny_data, tmp_path):
    """TensorBoard groups HParams sessions by trial id: two runs that shared one (a sweep's `logs`, two sweeps'
    `learning_rate=0.01`) showed as one row, their metrics averaged. Read as `tensorboard --logdir` reads them."""
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    for root in ("a", "b"):  # the same grid twice, side by side under one parent
        result = run_cli("sweep", "--grid=learning_rate=0.01,0.001", "--hidden_units=16", "--max_steps=20",
                         "--log_every=10", "--eval_every=20", "--nodiagnostics", f"--data_dir={tiny_data.data_dir}",
                         f"--root={tmp_path / root}", cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(tmp_path))
    multiplexer.Reload()
    trials = {}
    for run, tags in multiplexer.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        if metadata.SESSION_START_INFO_TAG in tags:
            content = tags[metadata.SESSION_START_INFO_TAG]
            trials[run] = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.group_name
    assert sorted(trials) == sorted(f"{root}/learning_rate={lr}/logs" for root in "ab" for lr in ("0.01", "0.001"))
    assert len(set(trials.values())) == 4, trials
    for run, trial in trials.items():  # named after its run, and ending with the id its run folder keeps
        folder = tmp_path / os.path.dirname(run)
        assert trial == f"{folder.name} ({RunDir(str(folder / 'ckpt')).load_config().run_id})"
