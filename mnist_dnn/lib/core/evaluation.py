"""Loss, accuracy, per-class accuracy and confusion matrix of a model over a whole split; scoring a checkpoint."""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from mnist_dnn.lib.core import checkpoints, data
from mnist_dnn.lib.core.models import per_example_loss


@dataclasses.dataclass(frozen=True)
class Metrics:
    loss: float
    accuracy: float
    examples: int
    per_class_accuracy: list[float]
    # confusion_matrix[true][predicted]: how many examples of class `true` were predicted as `predicted`.
    confusion_matrix: list[list[int]] = dataclasses.field(default_factory=list)
    # The predicted class of each example, in the split's order.
    predictions: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)


def make_predict_fn(model: keras.Model):
    """A traced forward pass: float images [B, 784] to logits [B, 10]."""
    return tf.function(lambda images: model(images, training=False),
                       input_signature=[tf.TensorSpec([None, data.NUM_PIXELS], tf.float32)])


def evaluate_split(predict_fn, split: data.Split, batch_size: int = 1000) -> Metrics:
    """Scores every example of the split once, `batch_size` at a time (the last batch keeps the remainder). The split is
    in memory already: slicing it costs less than a tf.data pipeline would."""
    logits = tf.concat([predict_fn(data.to_float(split.images[begin : begin + batch_size]))
                        for begin in range(0, split.size, batch_size)], axis=0)
    losses = per_example_loss(split.labels, logits).numpy()
    predictions = tf.argmax(logits, axis=1, output_type=tf.int32).numpy()
    labels = split.labels.numpy()
    correct = predictions == labels
    per_class = [float(correct[labels == c].mean()) if (labels == c).any() else float("nan") for c in range(data.NUM_CLASSES)]
    return Metrics(float(losses.mean()), float(correct.mean()), int(labels.size), per_class,
                   confusion_matrix(labels, predictions).tolist(), predictions)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Counts [true class, predicted class], int64 [10, 10]."""
    flat = labels.astype(np.int64) * data.NUM_CLASSES + predictions.astype(np.int64)
    return np.bincount(flat, minlength=data.NUM_CLASSES**2).reshape(data.NUM_CLASSES, data.NUM_CLASSES)


def evaluate_checkpoint(ckpt_dir, *, checkpoint=None, which="latest", data_dir=None, idx_dir=None, dataset=None,
                        batch_size=1000, load_splits=data.load_splits) -> dict:
    """Restores a checkpoint (given, or the latest or best of `ckpt_dir`) and scores it on its own dataset, which must
    be `dataset` if given; returns the JSON-ready report. `load_splits` may cache the data. (config.EvaluateConfig)"""
    model, run_config, path, step = checkpoints.restore_model(ckpt_dir, checkpoint, which)
    checkpoints.check_dataset(path, run_config, dataset)
    splits = load_splits(data.DataConfig(run_config.dataset, data_dir, idx_dir))
    predict_fn = make_predict_fn(model)
    report = {"checkpoint": path, "step": step}
    for name in ("validation", "test"):
        metrics = evaluate_split(predict_fn, splits[name], batch_size)
        report[name] = {key: getattr(metrics, key)
                        for key in ("loss", "accuracy", "examples", "per_class_accuracy", "confusion_matrix")}
    return report
