"""evaluate_split against an independent numpy computation on the logits of a fixed model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_dnn.lib.core import data, evaluation

SIZE, BATCH_SIZE = 37, 10  # 3 full batches and a ragged last one of 7


@pytest.fixture(scope="module")
def fixed_model_and_split():
    """A logistic regression with fixed weights, and a split it gets partly right (class 9 absent)."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 9, SIZE)
    images = rng.integers(0, 256, (SIZE, data.NUM_PIXELS))
    weights = rng.normal(0, 0.05, (data.NUM_PIXELS, data.NUM_CLASSES))
    for c in range(data.NUM_CLASSES):  # pixel c votes for class c: about half of the predictions are right
        images[labels == c, c] = 255
        weights[c, c] = 6.0
    bias = rng.normal(0, 0.5, data.NUM_CLASSES)
    model = keras.Sequential([keras.Input((data.NUM_PIXELS,)), keras.layers.Dense(data.NUM_CLASSES)])
    model.layers[0].set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    split = data.Split(tf.constant(images, tf.uint8), tf.constant(labels, tf.int32))
    return model, split, (images / 255.0) @ weights + bias


def numpy_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """The figures from float64 logits: mean cross-entropy, accuracy, per-class accuracy, confusion."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    predictions = logits.argmax(axis=1)
    confusion = np.zeros((data.NUM_CLASSES, data.NUM_CLASSES), np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    with np.errstate(invalid="ignore"):
        per_class = np.diag(confusion) / confusion.sum(axis=1)  # NaN for a class without examples
    return {
        "loss": -log_probabilities[np.arange(len(labels)), labels].mean(),
        "accuracy": (predictions == labels).mean(),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion,
    }


def test_evaluate_split_matches_numpy_on_the_logits_of_a_fixed_model(fixed_model_and_split):
    model, split, logits = fixed_model_and_split
    expected = numpy_metrics(logits, split.labels.numpy())
    assert 0.2 < expected["accuracy"] < 0.9  # neither all right nor all wrong: a wrong count shows

    metrics = evaluation.evaluate_split(evaluation.make_predict_fn(model), split, BATCH_SIZE)

    assert metrics.examples == SIZE
    np.testing.assert_allclose(metrics.loss, expected["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics.accuracy, expected["accuracy"], rtol=1e-12)
    np.testing.assert_allclose(metrics.per_class_accuracy, expected["per_class_accuracy"], rtol=1e-12)
    assert np.isnan(metrics.per_class_accuracy[9])
    np.testing.assert_array_equal(metrics.confusion_matrix, expected["confusion_matrix"])
    np.testing.assert_array_equal(metrics.predictions, logits.argmax(axis=1))


def test_a_dataset_named_must_be_the_run_s_own_and_is_checked_before_any_data_is_read(tiny_run, tiny_data):
    """issue 27, item 3: evaluate --dataset=fashion_mnist scored a MNIST run on MNIST without a word."""
    from mnist_dnn.lib.errors import UsageError

    ckpt_dir, loaded = str(tiny_run[0] / "ckpt"), []

    def load_splits(config):
        loaded.append(config.dataset)
        return data.load_splits(config)

    with pytest.raises(UsageError, match="is fashion_mnist, but .*model.ckpt-30 was trained on mnist"):
        evaluation.evaluate_checkpoint(ckpt_dir, data_dir=tiny_data.data_dir, idx_dir=tiny_data.idx_dir,
                                       load_splits=load_splits, dataset="fashion_mnist")
    assert loaded == []
    for dataset in ("mnist", None):
        report = evaluation.evaluate_checkpoint(ckpt_dir, data_dir=tiny_data.data_dir, idx_dir=tiny_data.idx_dir,
                                                load_splits=load_splits, dataset=dataset)
        assert report["step"] == 30
    assert loaded == ["mnist", "mnist"]
