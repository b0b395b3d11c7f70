"""The best checkpoint, early stopping and --which=best (the confusion matrix: test_sweep.py)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mnist_dnn.lib.core import checkpoints, evaluation
from mnist_dnn.lib.trainer import training
from mnist_dnn.lib.core.checkpoint_store import Best
from mnist_dnn.lib.core.run_dir import RunDir
from mnist_dnn.lib.errors import CheckpointError
from conftest import tiny_config


def _best_json(tmp_path):
    return json.loads((tmp_path / "ckpt" / "best" / "best.json").read_text())


@pytest.mark.slow
def test_the_best_validation_checkpoint_is_kept_apart_from_the_pruned_latest(tiny_data, tmp_path, monkeypatch):
    # A scripted validation accuracy: the best is at step 20, then it gets worse.
    accuracies = iter([0.5, 0.9, 0.7, 0.6, 0.8])
    real = evaluation.evaluate_split

    def scripted(predict_fn, split, batch_size=100):
        m = real(predict_fn, split, batch_size)
        return evaluation.Metrics(m.loss, next(accuracies), m.examples, m.per_class_accuracy, m.confusion_matrix)

    monkeypatch.setattr(evaluation, "evaluate_split", scripted)
    result = training.train(tiny_config(tiny_data, tmp_path, max_steps=50, keep_checkpoints=1))
    ckpt = str(tmp_path / "ckpt")
    assert result.step == 50 and not result.early_stopped
    assert tf.train.latest_checkpoint(ckpt).endswith("model.ckpt-50")
    assert not os.path.exists(os.path.join(ckpt, "model.ckpt-20.index"))  # pruned from the latest...
    assert checkpoints.resolve_checkpoint(ckpt, which="best").endswith(os.path.join("best", "model.ckpt-20"))
    best = _best_json(tmp_path)
    assert best["step"] == 20 and best["validation"]["accuracy"] == 0.9
    assert result.best == Best(20, best["validation"]["loss"], 0.9)
    # ...and its weights are those of step 20, not of the end.
    model, _, path, step = checkpoints.restore_model(ckpt, which="best")
    assert step == 20
    reader = tf.train.load_checkpoint(result.checkpoint)
    name = "optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"
    assert not np.array_equal(reader.get_tensor(name), tf.train.load_checkpoint(path).get_tensor(name))

    # A resumed run remembers the best: a lower accuracy than 0.9 does not replace it.
    accuracies = iter([0.85, 0.95])
    monkeypatch.setattr(evaluation, "evaluate_split", lambda *a, **k: evaluation.Metrics(1.0, next(accuracies), 1, []))
    training.train(tiny_config(tiny_data, tmp_path, max_steps=60, keep_checkpoints=1, diagnostics=False))
    assert _best_json(tmp_path)["step"] == 20
    training.train(tiny_config(tiny_data, tmp_path, max_steps=70, keep_checkpoints=1, diagnostics=False))
    assert _best_json(tmp_path) == {"step": 70, "validation": {"loss": 1.0, "accuracy": 0.95}}
    assert os.listdir(tmp_path / "ckpt" / "best") != [] and checkpoints.resolve_checkpoint(ckpt, which="best").endswith("-70")
    assert len([n for n in os.listdir(tmp_path / "ckpt" / "best") if n.endswith(".index")]) == 1


@pytest.mark.slow
def test_early_stopping_stops_after_patience_evaluations_and_saves(tiny_data, tmp_path, monkeypatch, capsys):
    accuracies = iter([0.5, 0.9, 0.8, 0.9, 0.95])
    monkeypatch.setattr(evaluation, "evaluate_split", lambda *a, **k: evaluation.Metrics(1.0, next(accuracies), 1, []))
    config = tiny_config(tiny_data, tmp_path, max_steps=100, early_stopping_patience=2, checkpoint_every=50,
                         diagnostics=False)
    result = training.train(config)
    # best 0.9 at step 20; 30 and 40 are no better (a tie is no improvement): stop at 40.
    assert result.early_stopped and result.step == 40
    assert result.checkpoint.endswith("model.ckpt-40")
    assert "Stopped early at step 40" in capsys.readouterr().out
    # Run again: it says it already stopped and trains no further.
    again = training.train(config)
    assert again.step == 40 and again.early_stopped
    assert "Already stopped early at step 40" in capsys.readouterr().out


def test_a_malformed_best_json_is_a_checkpoint_error(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text("{")
    with pytest.raises(CheckpointError, match="best.json is malformed"):
        RunDir(str(tmp_path)).read_best()


def test_a_checkpoint_is_rebuilt_from_the_config_of_its_own_run(tiny_run, tmp_path):
    folder, result = tiny_run
    best_path = checkpoints.resolve_checkpoint(str(folder / "ckpt"), which="best")
    assert RunDir.of_checkpoint(best_path).path == str(folder / "ckpt")  # best/ is described by its parent
    _, config, path, step = checkpoints.restore_model(str(folder / "ckpt"), which="best")
    assert path == best_path and config.model.hidden_units == (32,)
    # An explicit checkpoint of another folder is rebuilt from that folder's config.
    _, config, path, step = checkpoints.restore_model(str(tmp_path / "elsewhere"), checkpoint=result.checkpoint)
    assert step == 30 and config.model.hidden_units == (32,)
