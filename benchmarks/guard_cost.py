"""What checking every gradient for NaN/inf costs the compiled loop: this checkout against another.

    python benchmarks/guard_cost.py --other=../old-checkout --idx_dir=../shared/data/mnist [--rounds=5]

Runs `benchmarks/speed.py --worker mnist_dnn` (throughput of 784-128-10 and of 784-512-512-10
with dropout 0.2, Adam, batch 128) from both checkouts in turn, A B A B ..., each in a fresh
process, and prints each side's median examples/s and the median of the per-round ratios.
The other checkout is the one before the change (0cda490: the loss alone was checked).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def examples_per_second(checkout: str, task: str, args) -> float:
    env = {**os.environ, "PYTHONPATH": checkout, "MNIST_DNN_XLA_CACHE": "off"}
    result = subprocess.run([sys.executable, os.path.join(checkout, "benchmarks", "speed.py"), "--worker=mnist_dnn",
                             f"--task={task}", f"--idx_dir={args.idx_dir}", f"--repeats={args.repeats}"],
                            capture_output=True, text=True, env=env, cwd=checkout, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["examples_per_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="a checkout of the code to compare with")
    parser.add_argument("--idx_dir", default=os.environ.get("MNIST_DNN_IDX_DIR"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for task in ("small_throughput", "large_throughput"):
        this, other = [], []
        for _ in range(args.rounds):
            this.append(examples_per_second(HERE, task, args))
            other.append(examples_per_second(os.path.abspath(args.other), task, args))
        ratios = [a / b for a, b in zip(this, other)]
        print(f"{task}: this {statistics.median(this):,.0f} ex/s, other {statistics.median(other):,.0f} ex/s, "
              f"ratio (median of rounds) {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]")


if __name__ == "__main__":
    main()
