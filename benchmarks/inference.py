"""Inference: evaluate's scoring of the test set, and the exported models side by side.

    python benchmarks/inference.py --ckpt_dir=checkpoints/ [--ckpt_dir=checkpoints/raw ...] \
        [--idx_dir=../shared/data/mnist]

For each checkpoint, restored as `mnist_dnn.evaluate` does, and exported to a temporary folder
as a SavedModel, a LiteRT float32 file and a LiteRT int8 file (`mnist_dnn.export`):
- test accuracy of each export on the 10,000 test images, and the file sizes;
- a batch of one uint8 image: latency of each, in interleaved rounds (the median of --calls calls
  a round; the SavedModel loaded with tf.saved_model.load, `serving_default`; LiteRT through the
  ai-edge-litert interpreter's signature runner, as `mnist_dnn.predict` calls them);
- a batch of all 10,000 test images: images per second, median of --repeats calls of each;
- scoring the test set with evaluation.evaluate_split (batch 100), median of --repeats.
Writes benchmarks/inference.json, one entry per checkpoint (the figures of docs/serving.md).
Needs the litert extra (`pip install -e ".[litert]"`). --smoke without --ckpt_dir trains a
checkpoint of a few steps first.
"""

import os
import statistics
import tempfile

import harness


def timed(fn, repeats):
    fn()
    return statistics.median(harness.seconds(fn) for _ in range(repeats))


def export_all(model, train_images, folder) -> dict:
    """The three exports of one model: {name: path}."""
    from mnist_dnn.lib.core import exporting
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


def batch_of_one(model, one, calls: int) -> float:
    """The median seconds of one call, over `calls` calls."""
    return statistics.median(harness.seconds(lambda: model(one)) for _ in range(calls))


def measure(exports: dict, test, args) -> dict:
    from mnist_dnn.lib.core import data
    from mnist_dnn.lib.serve import classifier
    images = test.images.numpy().reshape(-1, data.IMAGE_SIZE, data.IMAGE_SIZE, 1)
    labels = test.labels.numpy()
    whole = {name: classifier.Classifier(path).model for name, path in exports.items()}
    single = {name: classifier.Classifier(path).model for name, path in exports.items()}  # LiteRT: no resizing
    results = {name: {"size_bytes": size_bytes(path)} for name, path in exports.items()}
    for name, model in whole.items():
        results[name]["test_accuracy"] = float((model(images)["classes"] == labels).mean())
        if not args.no_timing:
            results[name]["batch_10000_images_per_s"] = len(images) / timed(lambda: model(images), args.repeats)
    if args.no_timing:
        return results
    for model in single.values():
        model(images[:1])  # warm-up
    rounds = harness.interleaved({name: lambda m=model: batch_of_one(m, images[:1], args.calls)
                                  for name, model in single.items()}, args.rounds)
    for name, values in rounds.items():
        results[name]["batch_of_one_us"] = harness.spread(1e6 * v for v in values)
        results[name]["batch_of_one_ratio_to_saved_model"] = (statistics.median(values)
                                                              / statistics.median(rounds["saved_model"]))
    return results


def tiny_checkpoint(args, folder: str) -> str:
    """A run of a few steps of the default model (for --smoke without --ckpt_dir)."""
    from mnist_dnn.lib.core import data
    from mnist_dnn.lib.trainer import training
    config = training.TrainConfig(data=data.DataConfig("mnist", args.data_dir, args.idx_dir), max_steps=5,
                                  eval_every=5, checkpoint_every=5, ckpt_dir=os.path.join(folder, "ckpt"),
                                  log_dir=None, diagnostics=False, jit_compile=False)  # (no XLA compiling)
    training.train(config)
    return config.ckpt_dir


def one_checkpoint(ckpt_dir: str, args) -> dict:
    from mnist_dnn.lib.core import checkpoints, data, evaluation
    model, run_config, path, _ = checkpoints.restore_model(ckpt_dir)
    splits = data.load_splits(data.DataConfig(run_config.dataset, args.data_dir, args.idx_dir))
    predict = evaluation.make_predict_fn(model)
    evaluate_s = None if args.no_timing else timed(lambda: evaluation.evaluate_split(predict, splits["test"], 100),
                                                   args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        exports = measure(export_all(model, splits["train"].images, tmp), splits["test"], args)
    return {"checkpoint": path, "model": run_config.model.name, "evaluate_test_set_s": evaluate_s, **exports}


def main():
    parser = harness.parser(__doc__, "inference.json")
    parser.add_argument("--ckpt_dir", action="append", help="repeat for several checkpoints (default: checkpoints)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200, help="calls of a batch of one image a round")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of the whole test set")
    parser.add_argument("--no_timing", action="store_true",
                        help="accuracy and sizes only (no lock on the machine needed)")
    args = harness.parse(parser, smoke={"rounds": 1, "calls": 3, "repeats": 1})
    bench = harness.Benchmark("inference", args)
    with tempfile.TemporaryDirectory() as scratch:
        ckpt_dirs = args.ckpt_dir or [tiny_checkpoint(args, scratch) if args.smoke else "checkpoints"]
        results = [one_checkpoint(ckpt_dir, args) for ckpt_dir in ckpt_dirs]
    lines = ["| checkpoint | export | test accuracy | size (bytes) | batch of one (µs, median) |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['checkpoint']} | {name} | {e['test_accuracy']:.2%} | {e['size_bytes']:,} | "
              f"{e['batch_of_one_us']['median'] if 'batch_of_one_us' in e else 0:,.0f} |"
              for r in results for name, e in r.items() if isinstance(e, dict)]
    bench.write(results, "\n".join(lines))


if __name__ == "__main__":
    harness.main(main)
