"""TensorBoard diagnostics at each evaluation, in the run's log folder under the tags diagnostics/...: histograms of
the weights and of their gradients on the first 500 validation images, and their norms; the validation confusion matrix
as an image (each row scaled to its count) and as counts; up to 24 misclassified digits, each above its true (green) and
predicted (red) class in a built-in 3x5 digit font (no matplotlib)."""

import numpy as np
import tensorflow as tf
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.histogram.summary_v2 import histogram_pb
from tensorboard.plugins.scalar.summary_v2 import scalar_pb

from mnist_dnn.lib.core import data
from mnist_dnn.lib.core.models import per_example_loss

PART = "diagnostics"  # the tags' prefix in the run's TensorBoard folder
GRADIENT_BATCH = 500
MAX_MISCLASSIFIED = 24
GRID_COLUMNS = 8
_CELL = 16  # pixels per confusion-matrix cell
_GLYPH_SCALE = 2
# 3 wide x 5 high digits and the letters of the axis titles, one string per row.
_FONT = {
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
    "C": (".##", "#..", "#..", "#..", ".##"), "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"), "I": ("###", ".#.", ".#.", ".#.", "###"),
    "P": ("##.", "#.#", "##.", "#..", "#.."), "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "T": ("###", ".#.", ".#.", ".#.", ".#."), "U": ("#.#", "#.#", "#.#", "#.#", "###"),
}
GLYPH_HEIGHT, GLYPH_WIDTH = 5 * _GLYPH_SCALE, 3 * _GLYPH_SCALE
TRUE_COLOR, PREDICTED_COLOR = (0.2, 1.0, 0.2), (1.0, 0.25, 0.25)
# The confusion image: a margin with the axis titles and class numbers, then the matrix.
_GAP = 4
MATRIX_TOP = _GAP + GLYPH_HEIGHT + _GAP + GLYPH_HEIGHT + _GAP  # PREDICTED, then column numbers
MATRIX_LEFT = _GAP + GLYPH_WIDTH + _GAP + GLYPH_WIDTH + _GAP  # TRUE (one letter a line), then row numbers


def glyph(char) -> np.ndarray:
    """The digit or capital letter as a bool mask [5 * scale, 3 * scale]."""
    mask = np.array([[c == "#" for c in row] for row in _FONT[str(char)]])
    return np.kron(mask, np.ones((_GLYPH_SCALE, _GLYPH_SCALE), bool))


def draw_text(canvas: np.ndarray, text: str, top: int, left: int, color, vertical: bool = False) -> None:
    """Paints `text` into the RGB canvas, left to right (or one character a line), 2 pixels apart."""
    for i, char in enumerate(text):
        y = top + i * (GLYPH_HEIGHT + 2) if vertical else top
        x = left if vertical else left + i * (GLYPH_WIDTH + 2)
        canvas[y : y + GLYPH_HEIGHT, x : x + GLYPH_WIDTH][glyph(char)] = color


def labelled_tile(image: np.ndarray, true: int, predicted: int) -> np.ndarray:
    """A float RGB tile [28 + 14, 28, 3]: the digit, then its true (green) and predicted (red) class."""
    size = data.IMAGE_SIZE
    tile = np.zeros((size + 14, size, 3), np.float32)
    tile[:size] = image.reshape(size, size, 1)
    draw_text(tile, str(true), size + 2, 4, TRUE_COLOR)
    draw_text(tile, str(predicted), size + 2, size - 10, PREDICTED_COLOR)
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
    """The confusion matrix as an RGB image, each row normalized, with labelled axes. Cell (t, p) is the square of
    `_CELL` pixels at (MATRIX_TOP + t * _CELL, MATRIX_LEFT + p * _CELL)."""
    counts = np.asarray(matrix, np.float32)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    classes = len(counts)
    side = classes * _CELL
    image = np.zeros((MATRIX_TOP + side + _GAP, MATRIX_LEFT + side + _GAP, 3), np.float32)
    # sqrt so that small error rates stay visible next to the bright diagonal
    cells = np.kron(np.sqrt(rates), np.ones((_CELL, _CELL), np.float32))
    image[MATRIX_TOP : MATRIX_TOP + side, MATRIX_LEFT : MATRIX_LEFT + side] = cells[:, :, None]
    title = "PREDICTED"
    draw_text(image, title, _GAP, MATRIX_LEFT + (side - len(title) * (GLYPH_WIDTH + 2)) // 2, PREDICTED_COLOR)
    draw_text(image, "TRUE", MATRIX_TOP + (side - 4 * (GLYPH_HEIGHT + 2)) // 2, _GAP, TRUE_COLOR, vertical=True)
    centering = (_CELL - GLYPH_WIDTH) // 2, (_CELL - GLYPH_HEIGHT) // 2
    for c in range(classes):
        draw_text(image, str(c), MATRIX_TOP - _GAP - GLYPH_HEIGHT, MATRIX_LEFT + c * _CELL + centering[0],
                  PREDICTED_COLOR)
        draw_text(image, str(c), MATRIX_TOP + c * _CELL + centering[1], MATRIX_LEFT - _GAP - GLYPH_WIDTH,
                  TRUE_COLOR)
    return image


def counts_markdown(matrix: list[list[int]]) -> str:
    header = "| true \\ predicted | " + " | ".join(map(str, range(len(matrix)))) + " |"
    rule = "|" + "---|" * (len(matrix) + 1)
    rows = [f"| **{t}** | " + " | ".join(map(str, row)) + " |" for t, row in enumerate(matrix)]
    return "\n".join([header, rule, *rows])


class Diagnostics:
    def __init__(self, writer, model, validation_split: data.Split, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        self.writer = writer
        self.model = model
        self.images = validation_split.images.numpy().astype(np.float32) / 255.0
        self.labels = validation_split.labels.numpy()
        self.gradients = tf.function(self._gradients)

    def _gradients(self):
        with tf.GradientTape() as tape:
            logits = self.model(self.images[:GRADIENT_BATCH], training=False)
            loss = tf.reduce_mean(per_example_loss(self.labels[:GRADIENT_BATCH], logits))  # the training loss
        return tape.gradient(loss, self.model.trainable_variables)

    def _variable_summaries(self) -> list[summary_pb2.Summary]:
        """Histograms of the weights and of their gradients on the first validation images, and the norms. The
        histograms come from numpy and TensorBoard's own protobuf helpers: as TensorFlow ops, run eagerly, they take
        about 0.15 s a call, and traced, seconds to trace."""
        variables = self.model.trainable_variables
        gradients = [g.numpy() for g in self.gradients()]
        summaries = []
        for variable, gradient in zip(variables, gradients):
            summaries += [histogram_pb(f"{PART}/weights/{variable.path}", variable.numpy()),
                          histogram_pb(f"{PART}/gradients/{variable.path}", gradient),
                          scalar_pb(f"{PART}/gradient_norm/{variable.path}", np.linalg.norm(gradient))]
        global_norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in gradients))
        return summaries + [scalar_pb(f"{PART}/gradient_norm/global", global_norm)]

    def write(self, step: int, predictions: np.ndarray, confusion_matrix: list[list[int]]) -> None:
        """The validation split's `predictions` (a class per example) and `confusion_matrix` at `step`."""
        if not self.enabled:
            return
        grid, names = misclassified_grid(self.images, self.labels, predictions)
        with self.writer.as_default(step=step):
            tf.summary.experimental.write_raw_pb([s.SerializeToString() for s in self._variable_summaries()])
            if confusion_matrix:
                tf.summary.image(f"{PART}/confusion_matrix", confusion_image(confusion_matrix)[None],
                                 description="Validation confusion matrix: rows true class 0-9 (top to bottom, green), "
                                 "columns predicted class 0-9 (left to right, red); brightness sqrt(row share).")
                tf.summary.text(f"{PART}/confusion_matrix_counts", counts_markdown(confusion_matrix))
            tf.summary.image(f"{PART}/misclassified", grid[None],
                             description=f"First {len(names)} misclassified validation digits, row by row, "
                             f"labelled true (green, left) and predicted (red, right): {', '.join(names)}")
        self.writer.flush()
