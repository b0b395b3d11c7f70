"""Inference speed: evaluate's scoring of the test set, and a SavedModel answering one image.

    python benchmarks/inference.py --ckpt_dir=checkpoints/ [--idx_dir=../shared/data/mnist]

Restores the checkpoint as `mnist_dnn.evaluate` does, then times (after one warm-up each):
- scoring all 10,000 test images with evaluation.evaluate_split (batch 100), median of 5;
- a SavedModel exported from the same checkpoint (to a temporary folder), loaded with
  tf.saved_model.load, answering `serving_default` for a batch of one uint8 image, median of 1,000.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from mnist_dnn.lib import checkpoints, data, evaluation, serving


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", default="checkpoints")
    parser.add_argument("--idx_dir", default=os.environ.get(data.IDX_DIR_ENV))
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    model, run_config, path, _ = checkpoints.restore_model(args.ckpt_dir)
    splits = data.load_splits(data.DataConfig(run_config.dataset, args.data_dir, args.idx_dir))
    predict = evaluation.make_predict_fn(model)
    evaluate_s = timed(lambda: evaluation.evaluate_split(predict, splits["test"], 100), 5)
    with tempfile.TemporaryDirectory() as tmp:
        signature = tf.saved_model.load(serving.export_model(model, tmp)).signatures[serving.SERVING_SIGNATURE]
        image = tf.constant(np.zeros((1, 28, 28, 1), np.uint8))
        single_ms = 1000 * timed(lambda: signature(images=image)["classes"].numpy(), 1000)
    print(json.dumps({"checkpoint": path, "evaluate_test_set_s": evaluate_s, "saved_model_batch_of_one_ms": single_ms}))


if __name__ == "__main__":
    main()
