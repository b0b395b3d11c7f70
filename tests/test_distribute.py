"""tf.distribute: mirrored over virtual CPUs, and a two-worker cluster on localhost."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

import pytest

from conftest import ROOT, run_cli, scalars
from mnist_dnn.lib.core.run_dir import RunDir

pytestmark = pytest.mark.slow  # real MNIST, subprocesses, several workers


def _train_losses(log_dir):
    return np.array(list(scalars(log_dir, "train/loss").values()))


def test_mirrored_on_two_virtual_cpus_follows_the_single_device_loss_curve(tiny_data, tmp_path):
    # SGD: a wrong loss divisor on the replicas would scale every step (Adam would hide it in its normalization).
    common = [f"--data_dir={tiny_data.data_dir}", "--max_steps=50", "--log_every=1", "--steps_per_call=5",
              "--batch_size=64", "--hidden_units=32", "--optimizer=sgd", "--learning_rate=0.1"]
    # The single device runs the same tf.data loop as mirrored (the compiled loop is compared in test_training).
    for name, extra in (("one", ["--nojit_compile"]), ("mirrored", ["--strategy=mirrored", "--virtual_cpus=2"])):
        result = run_cli("train", *common, *extra, f"--ckpt_dir={tmp_path / name}", f"--log_dir={tmp_path / (name + '-logs')}")
        assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 CPUs, tf.data pipeline" in result.stdout.splitlines()[0]
    one, mirrored = _train_losses(tmp_path / "one-logs"), _train_losses(tmp_path / "mirrored-logs")
    assert len(one) == len(mirrored) == 50
    np.testing.assert_allclose(mirrored, one, rtol=1e-5)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_cluster(args, scratch, results=None):
    """Starts the two workers; with `results` (a folder), worker i writes its --result_file there as i.json."""
    ports = _free_ports(2)
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(scratch)}
        env.pop("MNIST_DNN_IDX_DIR", None)
        result_file = [f"--result_file={results / f'{index}.json'}"] if results else []
        processes.append(subprocess.Popen([sys.executable, "-m", "mnist_dnn.train", "--strategy=multi_worker", *args,
                                           *result_file],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    return processes


def _results(folder) -> list[dict]:
    return [json.loads((folder / f"{index}.json").read_text()) for index in range(2)]


def test_two_workers_train_to_one_checkpoint_folder_that_evaluate_restores(real_data, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ckpt = tmp_path / "ckpt"
    args = [f"--data_dir={real_data.data_dir}", f"--ckpt_dir={ckpt}", f"--log_dir={tmp_path / 'logs'}",
            "--learning_rate=0.003", "--max_steps=400", "--checkpoint_every=100", "--eval_every=400"]
    outputs = [p.communicate(timeout=400) for p in _start_cluster(args, scratch, tmp_path)]
    assert [result.get("step") for result in _results(tmp_path)] == [400, 400], [err[-2000:] for _, err in outputs]
    assert sorted(os.listdir(scratch)) == []  # the other worker's checkpoints were deleted
    assert len(os.listdir(tmp_path / "logs")) == 1  # summaries come from the chief only, one file
    evaluated = run_cli("evaluate", f"--ckpt_dir={ckpt}", f"--data_dir={real_data.data_dir}",
                        f"--metrics_file={tmp_path / 'm.json'}")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["step"] == 400 and report["validation"]["accuracy"] >= 0.95


def test_a_killed_worker_fails_the_cluster_clearly_and_a_restart_resumes(tiny_data, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    ckpt = tmp_path / "ckpt"
    common = [f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={ckpt}", f"--log_dir={tmp_path / 'logs'}",
              "--checkpoint_every=20", "--log_every=20", "--steps_per_call=10", "--eval_every=100000"]
    chief, worker = _start_cluster([*common, "--max_steps=100000000"], scratch)
    deadline = time.monotonic() + 300
    while not [s for s in RunDir(str(ckpt)).steps() if s >= 60] and time.monotonic() < deadline:
        time.sleep(0.1)
    worker.send_signal(signal.SIGKILL)
    worker.communicate()
    started = time.monotonic()
    out, err = chief.communicate(timeout=300)
    assert chief.returncode == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "lost contact with another worker" in errors[0], err[-2000:]
    assert "Traceback" not in err
    saved_step = int(errors[0].rsplit("model.ckpt-", 1)[1])
    assert saved_step >= 60, errors[0]
    print(f"cluster failure detected in {time.monotonic() - started:.1f} s")

    restarted = _start_cluster([*common, f"--max_steps={saved_step + 40}"], scratch, tmp_path)
    outputs = [p.communicate(timeout=300) for p in restarted]
    for result, (_, err) in zip(_results(tmp_path), outputs):
        assert result.get("resumed_from") == f"{ckpt}/model.ckpt-{saved_step}", err[-2000:]
        assert (result["start_step"], result["step"]) == (saved_step, saved_step + 40)


@pytest.mark.slow
def test_a_mirrored_run_on_virtual_cpus_resumes_although_its_log_folder_is_read_first(tiny_data, tmp_path):
    """train reads the run's log folder (whose events they are) before it configures the devices: reading
    them with a TensorFlow op made --virtual_cpus fail on every resume."""
    args = [f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={tmp_path / 'run'}", "--strategy=mirrored",
            "--virtual_cpus=2", "--hidden_units=16", "--log_every=10", "--eval_every=20", "--checkpoint_every=10"]
    first = run_cli("train", *args, "--max_steps=20")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_cli("train", *args, "--max_steps=40")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Resumed from" in second.stdout and "Done at step 40" in second.stdout
