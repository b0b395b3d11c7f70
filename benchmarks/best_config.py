"""Test accuracy of a preset (configs/best.cfg by default) over several seeds, each trained through the CLI.

    python benchmarks/best_config.py --idx_dir=../shared/data/mnist [--seeds=0,1,2] [--preset=cnn_fast]

Each seed runs `python -m mnist_dnn.train --flagfile=configs/<preset>.cfg --seed=N` in a fresh
folder, then `mnist_dnn.evaluate` on its final checkpoint (the wall time of each whole command,
start-up included, and of the two together), and records the load average before and after. Prints a table and writes
benchmarks/best_config.json (other presets: benchmarks/<preset>_preset.json).
"""

import json
import os
import statistics
import sys
import tempfile

import harness


def run_seed(seed, args, scratch):
    folder = os.path.join(scratch, f"seed{seed}")
    os.makedirs(folder)  # train writes --result_file into an existing folder only
    data_flags = [f"--data_dir={args.data_dir}"] + ([f"--idx_dir={args.idx_dir}"] if args.idx_dir else [])
    train = [sys.executable, "-m", "mnist_dnn.train", f"--flagfile=configs/{args.preset}.cfg", f"--seed={seed}",
             f"--ckpt_dir={folder}/ckpt", f"--log_dir={folder}/logs", f"--result_file={folder}/train.json", *data_flags,
             *(harness.SMOKE_TRAINING + ["--hidden_units=32"] if args.smoke else [])]  # --smoke: a small model
    load_before = os.getloadavg()[0]
    seconds, _ = harness.run(train)
    load_after = os.getloadavg()[0]
    evaluate_seconds, _ = harness.run([sys.executable, "-m", "mnist_dnn.evaluate", f"--ckpt_dir={folder}/ckpt",
                                       f"--metrics_file={folder}/eval.json", *data_flags])
    with open(f"{folder}/eval.json") as f:
        report = json.load(f)
    with open(f"{folder}/train.json") as f:
        examples_per_second = json.load(f)["examples_per_second"]
    return {"seed": seed, "test_accuracy": report["test"]["accuracy"],
            "validation_accuracy": report["validation"]["accuracy"], "train_command_s": seconds,
            "evaluate_command_s": evaluate_seconds, "train_and_evaluate_s": seconds + evaluate_seconds,
            "examples_per_s": examples_per_second,
            "load_average_1min": [load_before, load_after]}


def main():
    parser = harness.parser(__doc__, "best_config.json")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="best")
    args = harness.parse(parser, smoke={"seeds": "0"})
    if args.preset != "best" and args.out == args.default_out:
        args.out = os.path.join(harness.HERE, f"{args.preset}_preset.json")
    bench = harness.Benchmark("best_config", args)
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in map(int, args.seeds.split(",")):
            runs.append(run_seed(seed, args, scratch))
            print(json.dumps(runs[-1]), flush=True)
    mean = statistics.mean(r["test_accuracy"] for r in runs)
    lines = ["| seed | test accuracy | validation accuracy | train command (s) | train + evaluate (s) | examples/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['seed']} | {r['test_accuracy']:.2%} | {r['validation_accuracy']:.2%} | {r['train_command_s']:.1f} "
              f"| {r['train_and_evaluate_s']:.1f} | {r['examples_per_s']:,.0f} |" for r in runs]
    lines.append(f"| mean | {mean:.2%} | | {statistics.mean(r['train_command_s'] for r in runs):.1f} "
                 f"| {statistics.mean(r['train_and_evaluate_s'] for r in runs):.1f} | |")
    bench.write({"preset": args.preset, "runs": runs, "mean_test_accuracy": mean,
                 "train_command_s": harness.spread(r["train_command_s"] for r in runs),
                 "train_and_evaluate_s": harness.spread(r["train_and_evaluate_s"] for r in runs)}, "\n".join(lines))


if __name__ == "__main__":
    harness.main(main)
