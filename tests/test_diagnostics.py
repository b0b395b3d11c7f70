"""The diagnostics a validation writes, against numpy: histograms, gradient norms, misclassified digits."""

import keras
import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from mnist_dnn.lib.core import data, evaluation, models
from mnist_dnn.lib.trainer import diagnostics


def test_histograms_and_gradient_norms_match_numpy_on_a_fixed_logistic_regression(tmp_path):
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (600, 784)).astype(np.uint8), rng.integers(0, 10, 600).astype(np.int32)
    weights, bias = rng.normal(0, 0.01, (784, 10)).astype(np.float32), rng.normal(0, 0.1, 10).astype(np.float32)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    model.layers[0].set_weights([weights, bias])
    split = data.Split(tf.constant(images), tf.constant(labels))
    metrics = evaluation.evaluate_split(evaluation.make_predict_fn(model), split)
    writer = tf.summary.create_file_writer(str(tmp_path))
    diagnostics.Diagnostics(writer, model, models.mean_loss, split).write(7, metrics)
    writer.close()

    # Mean cross-entropy over the first 500 images: d/dW = X^T (softmax - onehot) / N.
    x = images[: diagnostics.GRADIENT_BATCH].astype(np.float64) / 255.0
    logits = x @ weights + bias
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    error = (probabilities - np.eye(10)[labels[: diagnostics.GRADIENT_BATCH]]) / len(x)
    kernel_gradient, bias_gradient = x.T @ error, error.sum(0)

    acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    acc.Reload()
    value = {tag.removeprefix("diagnostics/"): tf.make_ndarray(acc.Tensors(tag)[0].tensor_proto)
             for tag in acc.Tags()["tensors"]}
    assert all(tag.startswith("diagnostics/") for tag in acc.Tags()["tensors"])  # the run's part, in its folder
    assert {event.step for tag in acc.Tags()["tensors"] for event in acc.Tensors(tag)} == {7}
    kernel = next(tag for tag in value if tag.startswith("gradient_norm/") and tag.endswith("kernel"))
    np.testing.assert_allclose(value[kernel], np.linalg.norm(kernel_gradient), rtol=1e-4)
    np.testing.assert_allclose(value["gradient_norm/global"],
                               np.sqrt(np.sum(kernel_gradient**2) + np.sum(bias_gradient**2)), rtol=1e-4)
    histogram = value[kernel.replace("gradient_norm/", "weights/")]  # [buckets, 3]: left, right, count
    assert histogram[:, 2].sum() == weights.size
    np.testing.assert_allclose([histogram[0, 0], histogram[-1, 1]], [weights.min(), weights.max()], rtol=1e-6)
    shown = acc.SummaryMetadata("diagnostics/misclassified").summary_description.split(": ")[1].split(", ")
    wrong = np.flatnonzero(logits.argmax(1) != labels[: diagnostics.GRADIENT_BATCH])
    assert shown[0] == f"{labels[wrong[0]]}->{logits[wrong[0]].argmax()}"
