"""Inference: evaluate's scoring of the test set, and the exported models side by side.

    python benchmarks/inference.py --ckpt_dir=checkpoints/ [--ckpt_dir=checkpoints/raw ...] \
        [--idx_dir=../shared/data/mnist]

For each checkpoint, restored as `mnist_dnn.evaluate` does, and exported to a temporary folder
as a SavedModel, a LiteRT float32 file and a LiteRT int8 file (`mnist_dnn.export`):
- test accuracy of each export on the 10,000 test images, and the file sizes;
- a batch of one uint8 image: median latency over 2,000 calls of each, in interleaved rounds
  (the SavedModel loaded with tf.saved_model.load, `serving_default`; LiteRT through the
  ai-edge-litert interpreter's signature runner, as `mnist_dnn.predict` calls them);
- a batch of all 10,000 test images: images per second, median of 5 calls of each;
- scoring the test set with evaluation.evaluate_split (batch 100), median of 5.
Prints one JSON object per checkpoint (the figures of docs/serving.md: benchmarks/inference.json).
Needs the litert extra (`pip install -e ".[litert]"`).
"""

import argparse
import json
import os
import statistics
import tempfile
import time


from mnist_dnn.lib.core import checkpoints, data, evaluation, exporting
from mnist_dnn.lib.serve import classifier

ROUNDS = 10
CALLS_PER_ROUND = 200


def timed(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def interleaved_medians(fns: dict) -> dict:
    """Median time of one call of each function, the functions taking turns round by round."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            for _ in range(CALLS_PER_ROUND):
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def export_all(model, train_images, folder) -> dict:
    """The three exports of one model: {name: path}."""
    representative = exporting.representative_images(train_images)
    return {
        "saved_model": exporting.export_model(model, os.path.join(folder, "saved_model")),
        "litert_float": exporting.export_litert(model, os.path.join(folder, "litert")),
        "litert_int8": exporting.export_litert(model, os.path.join(folder, "litert"), quantize="int8",
                                               representative=representative),
    }


def size_bytes(path) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def measure(exports: dict, test: data.Split, timing: bool = True) -> dict:
    images = test.images.numpy().reshape(-1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1)
    labels = test.labels.numpy()
    one = images[:1]
    whole = {name: classifier.Classifier(path).model for name, path in exports.items()}
    single = {name: classifier.Classifier(path).model for name, path in exports.items()}  # LiteRT: no resizing
    results = {name: {"size_bytes": size_bytes(path)} for name, path in exports.items()}
    for name, model in whole.items():
        results[name]["test_accuracy"] = float((model(images)["classes"] == labels).mean())
        if timing:
            results[name]["batch_10000_images_per_s"] = len(images) / timed(lambda: model(images), 5)
    if not timing:
        return results
    medians = interleaved_medians({name: (lambda m=model: m(one)) for name, model in single.items()})
    for name, seconds in medians.items():
        results[name]["batch_of_one_median_us"] = 1e6 * seconds
        results[name]["batch_of_one_ratio_to_saved_model"] = seconds / medians["saved_model"]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_dir", action="append", help="repeat for several checkpoints (default: checkpoints)")
    parser.add_argument("--idx_dir", default=os.environ.get(data.IDX_DIR_ENV))
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--no_timing", action="store_true", help="accuracy and sizes only (no lock on the machine needed)")
    args = parser.parse_args()
    for ckpt_dir in args.ckpt_dir or ["checkpoints"]:
        model, run_config, path, _ = checkpoints.restore_model(ckpt_dir)
        splits = data.load_splits(data.DataConfig(run_config.dataset, args.data_dir, args.idx_dir))
        predict = evaluation.make_predict_fn(model)
        evaluate_s = None if args.no_timing else timed(lambda: evaluation.evaluate_split(predict, splits["test"], 100), 5)
        with tempfile.TemporaryDirectory() as tmp:
            exports = measure(export_all(model, splits["train"].images, tmp), splits["test"], not args.no_timing)
        print(json.dumps({"checkpoint": path, "model": run_config.model.name, "evaluate_test_set_s": evaluate_s,
                          **exports}), flush=True)


if __name__ == "__main__":
    main()
