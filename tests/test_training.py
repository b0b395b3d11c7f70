import filecmp
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT
from mnist_dnn import checkpoints, data, models, training
from mnist_dnn.errors import UsageError


def tiny_config(tiny_data, tmp_path, **overrides):
    settings = dict(model=models.make_config("dense", (32,)), data=tiny_data, ckpt_dir=str(tmp_path / "ckpt"),
                    log_dir=str(tmp_path / "logs"), max_steps=30, log_every=10, eval_every=10,
                    checkpoint_every=10, keep_checkpoints=2, batch_size=64, steps_per_call=7)
    settings.update(overrides)
    return training.TrainConfig(**settings)


@pytest.mark.parametrize("field, value, message", [
    ("optimizer", "adamax", "adam, adamw"), ("learning_rate", 0.0, "learning_rate"),
    ("learning_rate", -1.0, "learning_rate"), ("batch_size", 0, "batch_size"),
    ("max_steps", -5, "max_steps"), ("steps_per_call", 0, "steps_per_call"),
])
def test_out_of_range_settings_are_refused_before_anything_is_written(tmp_path, field, value, message):
    config = training.TrainConfig(ckpt_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "logs"), **{field: value})
    with pytest.raises(UsageError, match=message):
        training.train(config)
    assert not os.listdir(tmp_path)


def test_every_optimizer_name_builds_an_optimizer():
    for name in training.OPTIMIZERS:
        assert float(training.make_optimizer(name, 0.1).learning_rate) == pytest.approx(0.1)


def test_default_log_dir_names_the_hyperparameters():
    config = training.TrainConfig(model=models.make_config("raw", (10, 20)), optimizer="sgd", learning_rate=0.1)
    assert training.default_log_dir(config) == os.path.join("logs", "raw-10-20-sgd-0.1-b128")


def test_training_writes_step_named_checkpoints_config_and_summaries(tiny_data, tmp_path):
    result = training.train(tiny_config(tiny_data, tmp_path))
    assert result.step == 30 and result.checkpoint.endswith("model.ckpt-30")
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "ckpt" / "model.ckpt-*.index")))
    assert names == ["model.ckpt-20.index", "model.ckpt-30.index"]  # keep_checkpoints=2
    assert checkpoints.load_run_config(str(tmp_path / "ckpt")) == checkpoints.RunConfig(models.make_config("dense", (32,)))
    tags = {}
    for split in ("train", "validation"):
        acc = event_accumulator.EventAccumulator(str(tmp_path / "logs" / split), size_guidance={"tensors": 0})
        acc.Reload()
        tags[split] = set(acc.Tags()["tensors"])
        steps = [e.step for e in acc.Tensors("loss")]
        assert steps == [10, 20, 30]
        if split == "train":  # the traced graph of the train step
            assert acc.SummaryMetadata("train_step").plugin_data.plugin_name == "graph_run_metadata_graph"
    assert tags["train"] == {"loss", "accuracy", "learning_rate", "train_step"}
    assert tags["validation"] == {"loss", "accuracy"}


def test_resume_continues_from_the_saved_step_exactly_as_an_uninterrupted_run(tiny_data, tmp_path):
    whole = training.train(tiny_config(tiny_data, tmp_path / "a", max_steps=30))
    training.train(tiny_config(tiny_data, tmp_path / "b", max_steps=13))
    resumed = training.train(tiny_config(tiny_data, tmp_path / "b", max_steps=30))
    assert resumed.step == 30
    a = tf.train.load_checkpoint(whole.checkpoint)
    b = tf.train.load_checkpoint(resumed.checkpoint)
    names = set(a.get_variable_to_shape_map()) - {"save_counter/.ATTRIBUTES/VARIABLE_VALUE", "_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert len(names) > 10
    for name in names:
        np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)


def test_restore_brings_back_adam_moments_and_step(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    state = training.build_state(config)
    step_fn = training.make_train_step(state.model, state.optimizer, state.step, training.TrainMetrics())
    step_fn(tf.random.uniform([8, 784], seed=1), tf.range(8) % 10)
    path = state.checkpoint.save(str(tmp_path / "ck"))
    fresh = training.build_state(config)
    fresh.checkpoint.restore(path).assert_consumed()
    assert int(fresh.step) == 1
    slots = [v for v in state.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    assert len(slots) == 2 * len(state.model.trainable_variables)
    assert all(np.any(v.numpy() != 0) for v in slots)
    for old, new in zip(state.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(old.numpy(), new.numpy(), err_msg=old.path)


def test_a_finished_run_says_so_and_writes_nothing(tiny_data, tmp_path, capsys):
    training.train(tiny_config(tiny_data, tmp_path, max_steps=10))
    before = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "**"), recursive=True)}
    result = training.train(tiny_config(tiny_data, tmp_path, max_steps=10))
    assert result.step == 10 and "Already finished" in capsys.readouterr().out
    assert before == {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "**"), recursive=True)}


def test_resuming_with_another_model_is_refused_and_touches_nothing(tiny_data, tmp_path):
    training.train(tiny_config(tiny_data, tmp_path, max_steps=10))
    snapshot = tmp_path / "snapshot"
    subprocess.run(["cp", "-a", str(tmp_path / "ckpt"), str(snapshot)], check=True)
    other = tiny_config(tiny_data, tmp_path, model=models.make_config("raw"), max_steps=20)
    with pytest.raises(UsageError, match="holds checkpoints of"):
        training.train(other)
    comparison = filecmp.dircmp(str(snapshot), str(tmp_path / "ckpt"))
    assert not (comparison.diff_files or comparison.left_only or comparison.right_only)


def test_the_train_loop_traces_once_over_ragged_batches_and_varying_step_counts(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    state = training.build_state(config)
    train_step = training.make_train_step(state.model, state.optimizer, state.step, training.TrainMetrics())
    train_loop = training.make_train_loop(train_step)
    split = data.load_splits(tiny_data)["train"]  # 1000 examples: batches of 64 end with 40
    iterator = iter(data.train_batches(split, 64, seed=0))
    for num_steps in (1, 7, 20, 3, 16):
        train_loop(iterator, tf.constant(num_steps, tf.int64))
    assert int(state.step) == 47  # crossed two epoch ends, each with a batch of 40
    assert train_loop.experimental_get_tracing_count() == 1
    assert train_step.experimental_get_tracing_count() == 1


def test_sigterm_saves_a_checkpoint_at_the_current_step_then_exits(tiny_data, tmp_path):
    args = [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={tiny_data.data_dir}",
            f"--ckpt_dir={tmp_path / 'ckpt'}", f"--log_dir={tmp_path / 'logs'}", "--max_steps=10000000",
            "--log_every=50", "--checkpoint_every=1000000", "--eval_every=1000000", "--steps_per_call=10"]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in process.stdout:
        if line.startswith("step 100:"):
            break
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Stopped by signal" in out
    saved = tf.train.latest_checkpoint(str(tmp_path / "ckpt"))
    step = checkpoints.checkpoint_step(saved)
    assert step >= 100 and f"at step {step}" in out


def test_resume_uses_the_learning_rate_of_the_command_line(tiny_data, tmp_path):
    training.train(tiny_config(tiny_data, tmp_path, max_steps=10, learning_rate=0.01))
    result = training.train(tiny_config(tiny_data, tmp_path, max_steps=20, learning_rate=0.001))
    reader = tf.train.load_checkpoint(result.checkpoint)
    assert reader.get_tensor("optimizer/_learning_rate/.ATTRIBUTES/VARIABLE_VALUE") == pytest.approx(0.001)
