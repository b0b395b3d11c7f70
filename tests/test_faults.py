"""Training that never loses work: kills, damaged checkpoints, locks, full disks (subprocesses)."""

import glob
import json
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
from mnist_dnn.lib.run_dir import RunDir

pytestmark = pytest.mark.slow

# Kill points tried by the SIGKILL test; docs/faults.md quotes this number.
KILLS = 6


def _train_args(data_dir, ckpt_dir, *extra):
    return [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={data_dir}", f"--ckpt_dir={ckpt_dir}",
            f"--log_dir={ckpt_dir}-logs", "--hidden_units=32", "--dropout=0.2", "--batch_size=64",
            "--deterministic", "--log_every=1", "--eval_every=1000", *extra]


def _model_values(ckpt_dir):
    reader = tf.train.load_checkpoint(RunDir(str(ckpt_dir)).latest())
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith(("model/", "optimizer/", "step"))]
    return {n: reader.get_tensor(n) for n in names}


def _start(args):
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for_checkpoint(process, ckpt_dir, newer_than: int = -1) -> int:
    """Waits until the run folder holds a checkpoint past `newer_than`; returns its step."""
    deadline = time.time() + 300
    while time.time() < deadline:
        steps = RunDir(str(ckpt_dir)).steps() if os.path.isdir(ckpt_dir) else []
        if steps and steps[-1] > newer_than:
            return steps[-1]
        if process.poll() is not None:
            raise AssertionError(f"the trainer ended early: {process.returncode}, {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


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
        _wait_for_checkpoint(process, killed_dir, max(killed_at, default=-1))
        time.sleep(rng.uniform(0.0, 0.3))  # lands between steps, in saves, in validation
        process.send_signal(signal.SIGKILL)
        process.communicate()
        killed_at.append(RunDir(str(killed_dir)).steps()[-1])
        if kill == KILLS - 1:  # the last kill also loses TensorFlow's state file
            os.remove(killed_dir / "checkpoint")
    assert max(killed_at) < 400, killed_at  # every kill landed before the end
    result_file = tmp_path / "result.json"
    finished = subprocess.run(args + [f"--result_file={result_file}"], capture_output=True, text=True, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads(result_file.read_text())
    assert result["start_step"] == killed_at[-1] and result["resumed_from"].endswith(f"model.ckpt-{killed_at[-1]}")
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
    result_file = tmp_path / "result.json"
    resumed = subprocess.run(_train_args(tiny_data.data_dir, ckpt, "--max_steps=15", *base,
                                         f"--result_file={result_file}"), capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping" in resumed.stderr and "model.ckpt-10: it is damaged" in resumed.stderr
    assert json.loads(result_file.read_text())["start_step"] == 5


def test_a_second_trainer_on_the_same_folder_is_refused_until_the_first_dies(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = _start(_train_args(tiny_data.data_dir, ckpt, "--max_steps=100000000", "--checkpoint_every=5"))
    try:
        _wait_for_checkpoint(first, ckpt)
        second = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=20")[3:], cwd=ROOT)
        assert_one_line_error(second, 1, "another training run is using", str(ckpt))
        for leftover in glob.glob(str(ckpt / "*.lock")):  # deleting files cannot let a second trainer in
            os.remove(leftover)
        third = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=20")[3:], cwd=ROOT)
        assert_one_line_error(third, 1, "another training run is using")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    after = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=5")[3:], cwd=ROOT)
    assert after.returncode == 0, after.stderr[-2000:]


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
        latest = RunDir(str(ckpt)).latest()
        assert latest is not None and not glob.glob(str(ckpt / "*_temp*"))  # no half-written save left behind
        model, _, _, step = checkpoints.restore_model(str(ckpt))
        assert step == RunDir(str(ckpt)).steps()[-1] > 0
    finally:
        subprocess.run(["umount", str(disk)], check=True)
