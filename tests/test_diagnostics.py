"""The diagnostics a validation writes, against numpy: histograms, gradient norms, misclassified digits."""

import keras
import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from mnist_dnn.lib.core import data, evaluation
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
    diagnostics.Diagnostics(writer, model, split).write(7, metrics.predictions, metrics.confusion_matrix)
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


def test_the_confusion_image_has_the_matrix_and_labelled_axes():
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 50, (10, 10)) + np.diag(rng.integers(500, 900, 10))
    image = diagnostics.confusion_image(matrix.tolist())
    top, left, cell = diagnostics.MATRIX_TOP, diagnostics.MATRIX_LEFT, 16
    assert image.shape == (top + 160 + 4, left + 160 + 4, 3)
    expected = np.sqrt(matrix / matrix.sum(axis=1, keepdims=True))
    cells = image[top : top + 160, left : left + 160, 0]
    np.testing.assert_allclose(cells[::cell, ::cell], expected, rtol=1e-6)
    np.testing.assert_allclose(cells[cell - 1 :: cell, cell - 1 :: cell], expected, rtol=1e-6)
    green = (image[..., 1] > 0.9) & (image[..., 0] < 0.5)
    red = (image[..., 0] > 0.9) & (image[..., 1] < 0.5)
    assert not (green | red)[top : top + 160, left : left + 160].any()  # the labels stay in the margin
    h, w = diagnostics.GLYPH_HEIGHT, diagnostics.GLYPH_WIDTH
    for c in range(10):  # row numbers left of the matrix (green), column numbers above it (red)
        row_label = green[top + c * cell + (cell - h) // 2 :][:h, left - 4 - w : left - 4]
        column_label = red[top - 4 - h : top - 4, left + c * cell + (cell - w) // 2 :][:, :w]
        np.testing.assert_array_equal(row_label, diagnostics.glyph(c))
        np.testing.assert_array_equal(column_label, diagnostics.glyph(c))
    t = np.array([[1, 1, 1], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]], bool).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(diagnostics.glyph("T"), t)
    title = red[4 : 4 + h].any(axis=0)
    assert np.flatnonzero(np.diff(title.astype(int)) == 1).size == len("PREDICTED")  # 9 separate letters
    true_title = green[top : top + 160, 4 : 4 + w].any(axis=1)
    assert np.flatnonzero(np.diff(true_title.astype(int)) == 1).size == len("TRUE")
    np.testing.assert_array_equal(green[top:, 4 : 4 + w][np.flatnonzero(true_title)[0]:][:h], t)



def test_misclassified_grid_draws_true_and_predicted_digits():
    images = np.zeros((5, 784), np.float32)
    labels, predictions = np.array([1, 2, 3, 4, 5]), np.array([1, 7, 3, 0, 5])
    grid, names = diagnostics.misclassified_grid(images, labels, predictions)
    assert names == ["2->7", "4->0"]
    tile = grid[1:-1, 1:31 - 1]  # first tile inside its frame: the digit, then the label strip
    strip = tile[30:42]
    green, red = strip[..., 1] > strip[..., 0], strip[..., 0] > strip[..., 1]
    np.testing.assert_array_equal(green[:, 4:10][:10], diagnostics.glyph(2))
    np.testing.assert_array_equal(red[:, 18:24][:10], diagnostics.glyph(7))
