"""Training that never loses work: kills, damaged checkpoints, locks, divergence, full disks."""

import glob
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, assert_one_line_error, run_cli
from mnist_dnn.lib import checkpoints

# Kill points tried by the SIGKILL test; the README quotes this number.
KILLS = 6


def _train_args(data_dir, ckpt_dir, *extra):
    return [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={data_dir}", f"--ckpt_dir={ckpt_dir}",
            f"--log_dir={ckpt_dir}-logs", "--hidden_units=32", "--dropout=0.2", "--batch_size=64",
            "--deterministic", "--log_every=1", "--eval_every=1000", *extra]


def _model_values(ckpt_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(ckpt_dir)))
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith(("model/", "optimizer/", "step"))]
    return {n: reader.get_tensor(n) for n in names}


def _start(args):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for_step(process, min_step=1) -> int:
    """Reads progress until a step >= min_step is printed; returns it."""
    for line in process.stdout:
        if line.startswith("step ") and int(line.split()[1].rstrip(":")) >= min_step:
            return int(line.split()[1].rstrip(":"))
    raise AssertionError(f"the trainer ended early: {process.wait()}, {process.stderr.read()[-2000:]}")


def test_sigkill_at_any_point_resumes_to_bit_identical_weights(tiny_data, tmp_path):
    max_steps = ["--max_steps=400", "--checkpoint_every=3"]
    whole = subprocess.run(_train_args(tiny_data.data_dir, tmp_path / "whole", *max_steps),
                           capture_output=True, text=True, cwd=ROOT)
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    args = _train_args(tiny_data.data_dir, killed_dir, *max_steps, "--steps_per_call=1")
    rng = random.Random(0)
    killed_at = []
    for kill in range(KILLS):
        # Every other run saves at every step, so its kill lands in the middle of a save.
        process = _start(args + (["--checkpoint_every=1"] if kill % 2 else []))
        first = _wait_for_step(process)
        time.sleep(rng.uniform(0.0, 0.3))  # lands between steps, in saves, in validation
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate()
        steps = [int(line.split()[1].rstrip(":")) for line in out.splitlines() if line.startswith("step ")]
        killed_at.append(max(steps, default=first))
    assert max(killed_at) < 400, killed_at  # every kill landed before the end
    finished = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "Resumed from" in finished.stdout
    print("killed after steps", killed_at)

    expected, got = _model_values(tmp_path / "whole"), _model_values(killed_dir)
    assert got.keys() == expected.keys() and len(expected) > 10
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_complete_one(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    base = ["--checkpoint_every=5", "--steps_per_call=5"]
    assert subprocess.run(_train_args(tiny_data.data_dir, ckpt, "--max_steps=10", *base), cwd=ROOT).returncode == 0
    data_file = glob.glob(str(ckpt / "model.ckpt-10.data-*"))[0]
    with open(data_file, "r+b") as f:
        f.truncate(100)
    resumed = subprocess.run(_train_args(tiny_data.data_dir, ckpt, "--max_steps=15", *base),
                             capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping unreadable checkpoint" in resumed.stdout and "at step 5" in resumed.stdout


def test_a_second_trainer_on_the_same_folder_is_refused_until_the_first_dies(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = _start(_train_args(tiny_data.data_dir, ckpt, "--max_steps=100000000", "--checkpoint_every=100000"))
    try:
        _wait_for_step(first, 1)
        second = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=20")[3:], cwd=ROOT)
        assert_one_line_error(second, 1, "another training run is using", str(ckpt))
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    third = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=5")[3:], cwd=ROOT)
    assert third.returncode == 0, third.stderr[-2000:]


def test_a_diverging_run_stops_with_the_step_and_never_saves_non_finite_weights(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    result = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--optimizer=sgd", "--learning_rate=1e6",
                                           "--max_steps=1000", "--checkpoint_every=1", "--steps_per_call=1")[3:],
                     cwd=ROOT)
    assert_one_line_error(result, 1, "NaN or infinite at step", "Last good checkpoint")
    saved = glob.glob(str(ckpt / "model.ckpt-*.index"))
    for index in saved:
        reader = tf.train.load_checkpoint(index[: -len(".index")])
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.isfinite(value).all(), (index, name)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root (CI runs as root)")
def test_a_full_disk_is_a_clear_error_and_earlier_checkpoints_stay_intact(tiny_data, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(disk)], check=True)
    try:
        ckpt = disk / "ckpt"
        result = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=200", "--checkpoint_every=5",
                                               "--keep_checkpoints=100")[3:], cwd=ROOT)
        assert_one_line_error(result, 1, "cannot write a checkpoint", "earlier checkpoints are intact")
        latest = tf.train.latest_checkpoint(str(ckpt))
        assert latest is not None
        model, _, _, step = checkpoints.restore_model(str(ckpt))
        assert step == checkpoints.checkpoint_step(latest) > 0
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_log_dir_that_is_a_file_is_refused_before_training(tiny_data, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("keep me")
    result = run_cli("train", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={tmp_path / 'ckpt'}",
                     f"--log_dir={not_a_folder}", cwd=ROOT)
    assert_one_line_error(result, 2, "--log_dir", "not a writable folder")
    assert not_a_folder.read_text() == "keep me"
