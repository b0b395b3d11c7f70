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

from conftest import ROOT, scalars
from mnist_dnn.lib import checkpoints, data, models, training
from mnist_dnn.lib.errors import UsageError


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
    ("lr_schedule", "step", "constant, cosine"), ("augment_shift", 9, "augment_shift"),
    ("augment_shift", -1, "augment_shift"),
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


def test_jit_compile_with_several_devices_is_refused(tmp_path):
    config = training.TrainConfig(ckpt_dir=str(tmp_path / "ckpt"), jit_compile=True, strategy="mirrored")
    with pytest.raises(UsageError, match="--jit_compile runs on one device"):
        training.train(config)


def _final_weights(result):
    reader = tf.train.load_checkpoint(result.checkpoint)
    # The model's weights are stored once, under the optimizer that tracks them.
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("optimizer/_trainable_variables/")}


@pytest.mark.parametrize("augment_shift", [0, 2])
def test_the_compiled_loop_trains_as_the_tf_data_pipeline_does(tiny_data, tmp_path, augment_shift):
    # 40 steps of 64 over 1000 examples: two epoch ends with a batch of 40, same batches in both loops.
    # SGD, because Adam would magnify float rounding differences in near-zero gradients.
    results = [training.train(tiny_config(tiny_data, tmp_path / str(jit), jit_compile=jit, max_steps=40,
                                          optimizer="sgd", learning_rate=0.1, augment_shift=augment_shift))
               for jit in (True, False)]
    compiled, pipeline = map(_final_weights, results)
    assert len(compiled) > 3
    for name in compiled:
        np.testing.assert_allclose(compiled[name], pipeline[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert results[0].validation.loss == pytest.approx(results[1].validation.loss, rel=1e-4)


def test_the_compiled_loop_compiles_once_over_ragged_epochs_and_varying_step_counts(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    state = training.build_state(config)
    split = data.load_splits(tiny_data)["train"]  # 1000 examples: batches of 64 end with 40
    run_steps = training.make_runner(config, state, training.TrainMetrics(), split)
    for num_steps in (1, 7, 20, 3, 16):
        run_steps(num_steps)
    assert int(state.step) == 47  # crossed two epoch ends, each with a batch of 40
    assert run_steps.loop.experimental_get_tracing_count() == 1


def test_the_compiled_loop_stops_before_a_non_finite_step(tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    state = training.build_state(config)
    split = data.load_splits(tiny_data)["train"]
    run_steps = training.make_runner(config, state, training.TrainMetrics(), split)
    run_steps(3)
    before = [v.numpy() for v in state.model.trainable_variables]
    state.model.trainable_variables[0].assign(state.model.trainable_variables[0] * np.inf)
    broken = [v.numpy() for v in state.model.trainable_variables]
    with pytest.raises(training.NonFiniteLoss):
        run_steps(5)
    assert int(state.step) == 3
    for old, new in zip(broken, state.model.trainable_variables):
        np.testing.assert_array_equal(old, new.numpy())
    assert not np.array_equal(before[0], broken[0])


def test_cosine_schedule_decays_to_zero_at_max_steps_and_resumes_on_the_curve(tiny_data, tmp_path):
    cosine = dict(lr_schedule="cosine", learning_rate=0.01, max_steps=40, keep_checkpoints=5)
    whole = training.train(tiny_config(tiny_data, tmp_path / "whole", **cosine))
    curve = scalars(tmp_path / "whole" / "logs" / "train", "learning_rate")
    assert curve[20] == pytest.approx(0.005, rel=1e-3) and curve[40] == pytest.approx(0.0, abs=1e-7)
    # A run stopped at step 20: its folder as it was then.
    stopped = tmp_path / "stopped" / "ckpt"
    stopped.mkdir(parents=True)
    for path in glob.glob(os.path.dirname(whole.checkpoint) + "/model.ckpt-20.*") + glob.glob(
            os.path.dirname(whole.checkpoint) + "/" + checkpoints.CONFIG_FILE):
        subprocess.run(["cp", path, str(stopped)], check=True)
    tf.compat.v1.train.update_checkpoint_state(str(stopped), str(stopped / "model.ckpt-20"),
                                               all_model_checkpoint_paths=[str(stopped / "model.ckpt-20")],
                                               all_model_checkpoint_timestamps=[time.time()])
    with pytest.raises(UsageError, match="learning rate schedule; resume with the same --lr_schedule"):
        training.train(tiny_config(tiny_data, tmp_path / "stopped", max_steps=40, learning_rate=0.01))
    training.train(tiny_config(tiny_data, tmp_path / "stopped", **cosine))
    resumed = scalars(tmp_path / "stopped" / "logs" / "train", "learning_rate")
    assert resumed == pytest.approx({step: curve[step] for step in (30, 40)})
