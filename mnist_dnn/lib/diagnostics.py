"""TensorBoard diagnostics at each evaluation, in `log_dir/diagnostics`.

- `weights/<variable>`: histograms of every trainable variable;
- `gradients/<variable>` (histograms) and `gradient_norm/<variable>`, `gradient_norm/global`
  (scalars): gradients of the loss on one validation batch (the first 500 images);
- `confusion_matrix`: an image of the validation confusion matrix (rows true class, columns
  predicted, each row scaled to its own count: white = all of that class), and
  `confusion_matrix_counts`, the counts as a text table;
- `misclassified`: up to 24 misclassified validation digits, each above a strip showing its
  true class (green, left) and the predicted one (red, right), drawn with a built-in 3x5
  digit font (no matplotlib). The description lists them as `true->predicted`.
"""

import os

import numpy as np
import tensorflow as tf

from mnist_dnn.lib import data, evaluation

GRADIENT_BATCH = 500
MAX_MISCLASSIFIED = 24
GRID_COLUMNS = 8
_CELL = 16  # pixels per confusion-matrix cell
_GLYPH_SCALE = 2
# 3 wide x 5 high digits, one string per row.
_FONT = {
    0: ("###", "#.#", "#.#", "#.#", "###"), 1: (".#.", "##.", ".#.", ".#.", "###"),
    2: ("###", "..#", "###", "#..", "###"), 3: ("###", "..#", "###", "..#", "###"),
    4: ("#.#", "#.#", "###", "..#", "..#"), 5: ("###", "#..", "###", "..#", "###"),
    6: ("###", "#..", "###", "#.#", "###"), 7: ("###", "..#", ".#.", ".#.", ".#."),
    8: ("###", "#.#", "###", "#.#", "###"), 9: ("###", "#.#", "###", "..#", "###"),
}


def glyph(digit: int) -> np.ndarray:
    """The digit as a bool mask [5 * scale, 3 * scale]."""
    mask = np.array([[c == "#" for c in row] for row in _FONT[digit]])
    return np.kron(mask, np.ones((_GLYPH_SCALE, _GLYPH_SCALE), bool))


def labelled_tile(image: np.ndarray, true: int, predicted: int) -> np.ndarray:
    """A float RGB tile [28 + 14, 28, 3]: the digit, then its true (green) and predicted (red) class."""
    size = data.IMAGE_SIZE
    tile = np.zeros((size + 14, size, 3), np.float32)
    tile[:size] = image.reshape(size, size, 1)
    for digit, left, color in ((true, 4, (0.2, 1.0, 0.2)), (predicted, size - 10, (1.0, 0.25, 0.25))):
        mask = glyph(digit)
        tile[size + 2 : size + 2 + mask.shape[0], left : left + mask.shape[1]][mask] = color
    return tile


def misclassified_grid(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """A grid image [H, W, 3] of the first misclassified examples, and their `true->predicted` names."""
    wrong = np.flatnonzero(labels != predictions)[:MAX_MISCLASSIFIED]
    tiles = [np.pad(labelled_tile(images[i], int(labels[i]), int(predictions[i])), ((1, 1), (1, 1), (0, 0)),
                    constant_values=0.35) for i in wrong]  # a grey frame around each
    names = [f"{labels[i]}->{predictions[i]}" for i in wrong]
    if not tiles:
        return np.zeros((1, 1, 3), np.float32), names
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % GRID_COLUMNS)
    rows = [np.concatenate(tiles[r : r + GRID_COLUMNS], axis=1) for r in range(0, len(tiles), GRID_COLUMNS)]
    return np.concatenate(rows, axis=0), names


def confusion_image(matrix: list[list[int]]) -> np.ndarray:
    """The confusion matrix as a grayscale RGB image [160, 160, 3], each row normalized."""
    counts = np.asarray(matrix, np.float32)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    # sqrt so that small error rates stay visible next to the bright diagonal
    cells = np.kron(np.sqrt(rates), np.ones((_CELL, _CELL), np.float32))
    return np.repeat(cells[:, :, None], 3, axis=2)


def counts_markdown(matrix: list[list[int]]) -> str:
    header = "| true \\ predicted | " + " | ".join(map(str, range(len(matrix)))) + " |"
    rule = "|" + "---|" * (len(matrix) + 1)
    rows = [f"| **{t}** | " + " | ".join(map(str, row)) + " |" for t, row in enumerate(matrix)]
    return "\n".join([header, rule, *rows])


def _name(variable) -> str:
    return getattr(variable, "path", None) or variable.name.split(":")[0]


class Diagnostics:
    """Writes the diagnostics of one run; does nothing when disabled."""

    def __init__(self, log_dir: str, model, loss_fn, validation_split: data.Split, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.writer = tf.summary.create_file_writer(os.path.join(log_dir, "diagnostics"))
        self.model, self.loss_fn = model, loss_fn
        self.images = data.to_float(validation_split.images)
        self.labels = validation_split.labels
        self.predict_fn = evaluation.make_predict_fn(model)

    def write(self, step: int, metrics: evaluation.Metrics) -> None:
        if not self.enabled:
            return
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(self.images[:GRADIENT_BATCH], training=False)
            loss = self.loss_fn(self.labels[:GRADIENT_BATCH], logits)
        gradients = tape.gradient(loss, variables)
        predictions = tf.argmax(self.predict_fn(self.images), axis=1, output_type=tf.int32).numpy()
        grid, names = misclassified_grid(self.images.numpy(), self.labels.numpy(), predictions)
        with self.writer.as_default(step=step):
            for variable, gradient in zip(variables, gradients):
                tf.summary.histogram(f"weights/{_name(variable)}", variable)
                tf.summary.histogram(f"gradients/{_name(variable)}", gradient)
                tf.summary.scalar(f"gradient_norm/{_name(variable)}", tf.norm(gradient))
            tf.summary.scalar("gradient_norm/global", tf.linalg.global_norm(gradients))
            if metrics.confusion_matrix:
                tf.summary.image("confusion_matrix", confusion_image(metrics.confusion_matrix)[None],
                                 description="Validation confusion matrix: rows true class 0-9 (top to bottom), "
                                 "columns predicted class 0-9 (left to right); brightness sqrt(row share).")
                tf.summary.text("confusion_matrix_counts", counts_markdown(metrics.confusion_matrix))
            tf.summary.image("misclassified", grid[None],
                             description=f"First {len(names)} misclassified validation digits, row by row, "
                             f"labelled true (green, left) and predicted (red, right): {', '.join(names)}")
        self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
