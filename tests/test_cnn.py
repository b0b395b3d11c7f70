"""The convolutional models (cnn, lenet5): their layers against numpy, both runners, exact resume.

Fast tests use a cnn of 4 and 8 filters on a few synthetic images; the real MNIST (the
cnn_fast preset's accuracy) and the kills of a training process are in the slow tier.
"""

import dataclasses
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from numpy.lib.stride_tricks import sliding_window_view

from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT, hparams, run_cli, synthetic_split, tiny_config
from mnist_dnn.lib.core import data, models
from mnist_dnn.lib.trainer import steps, training
from mnist_dnn.lib.config import TrainConfig
from mnist_dnn.lib.errors import UsageError
from mnist_dnn.lib.core.run_dir import RunDir

SMALL_CNN = models.make_config("cnn", (16,), 0.25, (4, 8))
STAGED_CNN = models.make_config("cnn", (16,), 0.25, (4, 4, 8, 8), pool_every=2)  # cnn_best's shape, narrower


def test_cnn_has_the_peers_layers_and_lenet5_the_classic_ones():
    cnn = models.create_model(models.make_config("cnn"))
    assert [tuple(v.shape) for v in cnn.trainable_variables] == [
        (3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (12 * 12 * 64, 128), (128,), (128, 10), (10,)]
    lenet = models.create_model(models.make_config("lenet5"))
    assert [tuple(v.shape) for v in lenet.trainable_variables] == [
        (5, 5, 1, 6), (6,), (5, 5, 6, 16), (16,), (5 * 5 * 16, 120), (120,), (120, 84), (84,), (84, 10), (10,)]
    assert lenet.count_params() == 61_706  # LeNet-5's count with 28x28 inputs padded as 32x32 ones


def test_pool_every_pools_after_each_group_of_convolutions():
    model = models.create_model(STAGED_CNN)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Reshape", "Conv2D", "Conv2D", "MaxPooling2D", "Conv2D", "Conv2D", "MaxPooling2D", "Dropout",
                     "Flatten", "Dense", "Dropout", "Dense"]
    # 28 -> 26 -> 24 -> pool 12 -> 10 -> 8 -> pool 4: 4x4x8 features reach the dense layer
    assert model.layers[9].kernel.shape == (4 * 4 * 8, 16)


def numpy_forward(model, flat_images: np.ndarray) -> np.ndarray:
    """The model's logits at inference, layer by layer in float64 numpy (NHWC, as Keras)."""
    x = flat_images.astype(np.float64)
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Reshape":
            x = x.reshape(-1, 28, 28, 1)
        elif kind == "Conv2D":
            kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
            if layer.padding == "same":
                pad = kernel.shape[0] // 2
                x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            windows = sliding_window_view(x, kernel.shape[:2], axis=(1, 2))  # [B, H', W', C, kh, kw]
            x = np.maximum(np.einsum("bhwcij,ijcf->bhwf", windows, kernel) + bias, 0)
        elif kind == "MaxPooling2D":
            b, h, w, c = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        elif kind == "Flatten":
            x = x.reshape(len(x), -1)
        elif kind == "Dense":
            kernel, bias = (np.asarray(w, np.float64) for w in layer.get_weights())
            x = x @ kernel + bias
            x = np.maximum(x, 0) if layer.activation.__name__ == "relu" else x
        elif kind != "Dropout":
            raise AssertionError(f"no numpy version of {kind}")
    return x


@pytest.mark.parametrize("config", [SMALL_CNN, STAGED_CNN, models.make_config("lenet5")], ids=str)
def test_the_convnets_compute_what_numpy_computes(config):
    model = models.create_model(config, seed=4)
    images = np.random.default_rng(0).random((3, 784)).astype(np.float32)
    logits = model(tf.constant(images), training=False).numpy()
    np.testing.assert_allclose(logits, numpy_forward(model, images), rtol=1e-4, atol=1e-5)


def test_cnn_dropout_acts_in_training_only():
    model = models.create_model(models.make_config("cnn", (16,), 0.5, (4,)), seed=1)
    images = tf.random.uniform([4, 784], seed=2)
    inference = model(images, training=False).numpy()
    np.testing.assert_array_equal(inference, model(images, training=False).numpy())
    assert not np.allclose(inference, model(images, training=True).numpy())


@pytest.fixture(scope="module")
def split() -> data.Split:
    images, labels = synthetic_split(40, seed=5)  # batches of 16: two full and one of 8 per epoch
    return data.Split(tf.constant(images.reshape(-1, 784)), tf.constant(labels.astype(np.int32)))


def train_steps(split, calls, **overrides):
    config = TrainConfig(**{**dict(model=SMALL_CNN, batch_size=16), **overrides})
    state = training.build_state(config)
    runner = steps.make_runner(config, state, steps.TrainMetrics(), split)
    for num_steps in calls:
        runner(num_steps)
    return state, runner


def test_on_a_cpu_the_in_memory_loop_runs_convnets_without_xla_and_mlps_with_it():
    on_gpu = bool(tf.config.list_logical_devices("GPU"))
    assert steps.xla_for(SMALL_CNN) == on_gpu and steps.xla_for(models.make_config("lenet5")) == on_gpu
    assert steps.xla_for(models.make_config("dense"))


def test_both_runners_train_a_cnn_alike(split):
    in_memory, runner = train_steps(split, (2, 3))
    pipeline, _ = train_steps(split, (2, 3), jit_compile=False)
    assert isinstance(runner, steps.CompiledRunner) and int(in_memory.step) == int(pipeline.step) == 5
    for a, b in zip(in_memory.model.weights, pipeline.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_xla_loop_trains_a_cnn_as_the_onednn_loop_does(split):
    """What a GPU runs: the same loop compiled by XLA. Without dropout: its masks differ by design
    (Threefry words inside XLA, Philox outside; test_threefry checks each)."""
    config = TrainConfig(model=models.make_config("cnn", (16,), 0.0, (4, 8)), batch_size=16)
    states = []
    for xla in (True, False):
        state = training.build_state(config)
        steps.CompiledRunner(state, steps.TrainMetrics(), split, 16, 0, xla=xla)(5)
        states.append(state)
    for a, b in zip(states[0].model.weights, states[1].model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def checkpoint_values(path) -> dict:
    reader = tf.train.load_checkpoint(path)
    names = set(reader.get_variable_to_shape_map()) - {"save_counter/.ATTRIBUTES/VARIABLE_VALUE",
                                                       "_CHECKPOINTABLE_OBJECT_GRAPH"}
    return {name: reader.get_tensor(name) for name in names}


@pytest.mark.slow
def test_a_resumed_cnn_run_is_bit_identical_to_an_uninterrupted_one(tiny_data, tmp_path):
    settings = dict(model=SMALL_CNN, max_steps=6, batch_size=16, deterministic=True, augment_shift=1,
                    augment_rotate=10.0, augment_scale=0.1, jit_compile=None, log_every=3, eval_every=3,
                    checkpoint_every=3)
    whole = training.train(tiny_config(tiny_data, tmp_path / "whole", **settings))
    training.train(tiny_config(tiny_data, tmp_path / "parts", **{**settings, "max_steps": 4}))
    resumed = training.train(tiny_config(tiny_data, tmp_path / "parts", **settings))
    assert resumed.start_step == 4 and resumed.step == 6
    expected, got = checkpoint_values(whole.checkpoint), checkpoint_values(resumed.checkpoint)
    assert got.keys() == expected.keys() and len(expected) > 10
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_a_cnn_run_records_its_filters_graph_hparams_and_diagnostics(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data, tmp_path, model=SMALL_CNN, max_steps=2, batch_size=16, jit_compile=None,
                         log_every=2, eval_every=2, checkpoint_every=2, diagnostics=True)
    training.train(config)
    stored = json.loads((tmp_path / "ckpt" / "model_config.json").read_text())
    assert (stored["name"], stored["conv_filters"], stored["hidden_units"]) == ("cnn", [4, 8], [16])
    assert RunDir(config.ckpt_dir).load_config().model == SMALL_CNN
    assert capsys.readouterr().out.startswith("Training cnn conv 4-8, 16, 10 (dropout 0.25) with adam")
    assert hparams(tmp_path / "logs")["conv_filters"] == "4-8"
    run = event_accumulator.EventAccumulator(str(tmp_path / "logs"))
    run.Reload()
    assert {"Conv2D", "MaxPool", "Relu", "MatMul"} <= {node.op for node in run.Graph().node}
    diagnosed = event_accumulator.EventAccumulator(str(tmp_path / "logs"), size_guidance={"tensors": 0})
    diagnosed.Reload()
    tags = {t.removeprefix("diagnostics/") for t in diagnosed.Tags()["tensors"] if t.startswith("diagnostics/")}
    kernels = [v for v in tags if v.startswith("weights/") and v.endswith("kernel")]
    assert len(kernels) == 4 and {"confusion_matrix", "misclassified"} <= tags, tags


def test_a_pooled_cnn_run_records_its_pools_and_a_resume_without_them_is_refused(tiny_data, tmp_path, capsys):
    config = tiny_config(tiny_data, tmp_path, model=STAGED_CNN, max_steps=2, batch_size=16, log_every=2,
                         eval_every=2, checkpoint_every=2)
    training.train(config)
    assert json.loads((tmp_path / "ckpt" / "model_config.json").read_text())["pool_every"] == 2
    assert RunDir(config.ckpt_dir).load_config().model == STAGED_CNN
    assert capsys.readouterr().out.startswith("Training cnn conv 4-4/8-8, 16, 10 (dropout 0.25)")
    assert hparams(tmp_path / "logs")["pool_every"] == "2"
    one_pool = dataclasses.replace(config, model=dataclasses.replace(STAGED_CNN, pool_every=0), max_steps=4)
    with pytest.raises(UsageError, match="holds a run of cnn conv 4-4/8-8, 16 on mnist, not cnn conv 4-4-8-8, 16"):
        training.train(one_pool)


# --- Slow: the real MNIST, and a killed process ---------------------------------------------


@pytest.mark.slow
def test_the_cnn_fast_preset_reaches_99_percent_on_mnist(real_data, tmp_path):
    """The whole preset, as a user runs it (220 s on 2 cores shared with other jobs, load 5-12)."""
    result_file = tmp_path / "result.json"
    result = run_cli("train", "--preset=cnn_fast", f"--data_dir={real_data.data_dir}", f"--ckpt_dir={tmp_path}/ckpt",
                     f"--log_dir={tmp_path}/logs", f"--result_file={result_file}", cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    evaluated = run_cli("evaluate", f"--ckpt_dir={tmp_path}/ckpt", f"--data_dir={real_data.data_dir}",
                        f"--metrics_file={tmp_path}/metrics.json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.990, metrics


@pytest.mark.slow
def test_a_cnn_killed_mid_run_resumes_to_bit_identical_weights(tiny_data, tmp_path):
    def args(folder):
        return [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={tiny_data.data_dir}", "--model=cnn",
                "--conv_filters=4,8", "--hidden_units=16", "--dropout=0.25", "--batch_size=16", "--max_steps=60",
                "--checkpoint_every=2", "--steps_per_call=1", "--eval_every=1000", "--deterministic",
                f"--ckpt_dir={folder}", f"--log_dir={folder}-logs"]

    whole = subprocess.run(args(tmp_path / "whole"), capture_output=True, text=True, cwd=ROOT)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = tmp_path / "killed"
    process = subprocess.Popen(args(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 300
    while not (killed.is_dir() and RunDir(str(killed)).steps()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = RunDir(str(killed)).steps()[-1]
    assert killed_at < 60
    finished = subprocess.run(args(killed), capture_output=True, text=True, cwd=ROOT)
    assert finished.returncode == 0 and f"Resumed from {killed}/model.ckpt-{killed_at}" in finished.stdout
    expected = checkpoint_values(RunDir(str(tmp_path / "whole")).latest())
    got = checkpoint_values(RunDir(str(killed)).latest())
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
