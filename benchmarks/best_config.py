"""Test accuracy of a preset (configs/best.cfg by default) over several seeds, each trained through the CLI.

    python benchmarks/best_config.py --idx_dir=../shared/data/mnist [--seeds=0,1,2] [--preset=cnn_fast]

Each seed runs `python -m mnist_dnn.train --flagfile=configs/<preset>.cfg --seed=N` in a fresh
folder (wall time of the whole command, start-up included), then `mnist_dnn.evaluate` on its
final checkpoint, and records the load average before and after. Prints a table and writes
benchmarks/best_config.json (other presets: benchmarks/<preset>_preset.json).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(command):
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def run_seed(seed, args, scratch):
    folder = os.path.join(scratch, f"seed{seed}")
    os.makedirs(folder)  # train writes --result_file into an existing folder only
    data_flags = [f"--data_dir={args.data_dir}"] + ([f"--idx_dir={args.idx_dir}"] if args.idx_dir else [])
    train = [sys.executable, "-m", "mnist_dnn.train", f"--flagfile=configs/{args.preset}.cfg", f"--seed={seed}",
             f"--ckpt_dir={folder}/ckpt", f"--log_dir={folder}/logs", f"--result_file={folder}/train.json", *data_flags]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    _run(train)
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    _run([sys.executable, "-m", "mnist_dnn.evaluate", f"--ckpt_dir={folder}/ckpt", f"--metrics_file={folder}/eval.json",
          *data_flags])
    with open(f"{folder}/eval.json") as f:
        report = json.load(f)
    with open(f"{folder}/train.json") as f:
        examples_per_second = json.load(f)["examples_per_second"]
    return {"seed": seed, "test_accuracy": report["test"]["accuracy"], "validation_accuracy": report["validation"]["accuracy"],
            "train_command_s": seconds, "examples_per_s": examples_per_second,
            "load_average_1min": [load_before, load_after]}


def machine() -> str:
    """The CPU, and whether it has AVX-512 and AMX: presets' timings differ several-fold between such machines."""
    with open("/proc/cpuinfo") as f:
        info = f.read()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    family = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("cpu family")), "?")
    extensions = [name for flag, name in (("avx512f", "AVX-512"), ("amx_tile", "AMX")) if f" {flag}" in info]
    return f"{model} (family {family}), {', '.join(extensions) or 'no AVX-512'}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx_dir", default=os.environ.get("MNIST_DNN_IDX_DIR"))
    parser.add_argument("--data_dir", default=os.path.join("/tmp", "mnist_dnn_bench_tfds"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--preset", default="best")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.out = args.out or ("benchmarks/best_config.json" if args.preset == "best" else f"benchmarks/{args.preset}_preset.json")
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in map(int, args.seeds.split(",")):
            runs.append(run_seed(seed, args, scratch))
            print(json.dumps(runs[-1]), flush=True)
    mean = statistics.mean(r["test_accuracy"] for r in runs)
    report = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "machine": machine(), "preset": args.preset,
              "runs": runs, "mean_test_accuracy": mean}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("| seed | test accuracy | validation accuracy | train command (s) | examples/s |\n| --- | --- | --- | --- | --- |")
    for r in runs:
        print(f"| {r['seed']} | {r['test_accuracy']:.2%} | {r['validation_accuracy']:.2%} | {r['train_command_s']:.0f} "
              f"| {r['examples_per_s']:,.0f} |")
    print(f"| mean | {mean:.2%} | | | |")


if __name__ == "__main__":
    main()
