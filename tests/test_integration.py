"""End to end on the real MNIST: train, then evaluate the checkpoint in a new process."""

import json

import pytest

from conftest import ROOT, run_cli
from mnist_dnn.lib.core import models
from mnist_dnn.lib.trainer import training

pytestmark = pytest.mark.slow  # real MNIST, subprocesses, several workers


def test_dense_adam_learns_mnist_and_evaluate_reports_the_same_accuracy(real_data, tmp_path):
    config = training.TrainConfig(
        model=models.make_config("dense"), data=real_data, optimizer="adam", learning_rate=0.002,
        max_steps=600, eval_every=600, ckpt_dir=str(tmp_path / "ckpt"), log_dir=str(tmp_path / "logs"),
    )
    result = training.train(config)
    assert result.validation.examples == 5000
    assert result.validation.accuracy >= 0.95, result.validation

    metrics_file = tmp_path / "metrics.json"
    evaluated = run_cli("evaluate", f"--ckpt_dir={tmp_path / 'ckpt'}", f"--data_dir={real_data.data_dir}",
                        f"--metrics_file={metrics_file}", cwd=ROOT)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(metrics_file.read_text())
    assert report["step"] == 600 and report["checkpoint"].endswith("model.ckpt-600")
    assert report["validation"]["examples"] == 5000 and report["test"]["examples"] == 10000
    assert report["validation"]["accuracy"] == result.validation.accuracy
    assert abs(report["validation"]["loss"] - result.validation.loss) < 1e-6
    assert report["test"]["accuracy"] >= 0.95
    assert len(report["test"]["per_class_accuracy"]) == 10
    assert f"{report['test']['accuracy']:.2%}" in evaluated.stdout


def test_the_course_models_reach_their_accuracy_on_mnist(real_data, tmp_path):
    for name, optimizer, rate, floor in (("raw", "sgd", 0.5, 0.95), ("logistic", "sgd", 0.5, 0.90)):
        config = training.TrainConfig(
            model=models.make_config(name), data=real_data, optimizer=optimizer, learning_rate=rate,
            max_steps=800, eval_every=800, ckpt_dir=str(tmp_path / name), log_dir=str(tmp_path / "logs" / name),
        )
        assert training.train(config).validation.accuracy >= floor, name
