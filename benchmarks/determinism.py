"""Cost of --deterministic on training speed, measured side by side in one run.

    python benchmarks/determinism.py [--idx_dir=../shared/data/mnist] [--rounds=3]

Alternates plain and deterministic runs of the real CLI (`python -m mnist_dnn.train`,
784-60-30-10, Adam, batch 128) and compares the median steady-state examples/s that
the trainer prints (the first report of each run, which includes tracing, is dropped).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def examples_per_second(extra_flags, idx_dir, data_dir, steps) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={data_dir}", f"--ckpt_dir={tmp}/ckpt",
             f"--log_dir={tmp}/logs", f"--max_steps={steps}", "--log_every=500", "--eval_every=100000",
             "--checkpoint_every=100000", *([f"--idx_dir={idx_dir}"] if idx_dir else []), *extra_flags],
            capture_output=True, text=True, check=True,
        )
    rates = [float(line.split(", ")[-1].split()[0].replace(",", ""))
             for line in result.stdout.splitlines() if line.endswith("examples/s")]
    return statistics.median(rates[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx_dir", default=os.environ.get("MNIST_DNN_IDX_DIR"))
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "mnist_dnn_bench_tfds"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5000)
    args = parser.parse_args()
    plain, deterministic = [], []
    for _ in range(args.rounds):
        plain.append(examples_per_second([], args.idx_dir, args.data_dir, args.steps))
        deterministic.append(examples_per_second(["--deterministic"], args.idx_dir, args.data_dir, args.steps))
    report = {
        "plain_examples_per_s": statistics.median(plain),
        "deterministic_examples_per_s": statistics.median(deterministic),
        "rounds": {"plain": plain, "deterministic": deterministic},
    }
    report["ratio"] = report["deterministic_examples_per_s"] / report["plain_examples_per_s"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
