"""What checking every gradient for NaN/inf costs the compiled loop: this checkout against another.

    python benchmarks/guard_cost.py --other=../old-checkout --idx_dir=../shared/data/mnist [--rounds=5]

Runs this checkout's `benchmarks/speed.py --worker=mnist_dnn/TASK` (throughput of 784-128-10 and
of 784-512-512-10 with dropout 0.2, Adam, batch 128) on the library of each checkout in turn
(PYTHONPATH), A B A B ..., each in a fresh process, and prints each side's median examples/s and
the median of the per-round ratios. The other checkout was the one before the change (0cda490: the
loss alone was checked); any other works whose library speed.py's mnist_dnn runner can drive.
--smoke compares this checkout with itself unless --other is given.
"""

import json
import os
import sys

import harness

TASKS = ("small_throughput", "large_throughput")


def examples_per_second(checkout: str, task: str, args) -> float:
    env = {**os.environ, "PYTHONPATH": checkout, "MNIST_DNN_XLA_CACHE": "off"}
    _, stdout = harness.run([sys.executable, os.path.join(harness.HERE, "speed.py"), f"--worker=mnist_dnn/{task}",
                             f"--data_dir={args.data_dir}", f"--repeats={args.repeats}"]
                            + ([f"--idx_dir={args.idx_dir}"] if args.idx_dir else []), env=env)
    return json.loads(stdout.strip().splitlines()[-1])["examples_per_s"]


def main():
    parser = harness.parser(__doc__, "guard_cost.json")
    parser.add_argument("--other", help="a checkout of the code to compare with")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    args = harness.parse(parser, smoke={"other": harness.ROOT, "rounds": 1, "repeats": 1, "tasks": TASKS[0]})
    if not args.other:
        parser.error("--other is required: a checkout of the code to compare with")
    bench = harness.Benchmark("guard_cost", args)
    results, lines = {}, []
    for task in args.tasks.split(","):
        other = os.path.abspath(args.other)
        rounds = harness.interleaved({"this": lambda t=task: examples_per_second(harness.ROOT, t, args),
                                      "other": lambda t=task: examples_per_second(other, t, args)}, args.rounds)
        ratios = harness.spread(a / b for a, b in zip(rounds["this"], rounds["other"]))
        results[task] = {"this_examples_per_s": harness.spread(rounds["this"]),
                         "other_examples_per_s": harness.spread(rounds["other"]), "ratio": ratios}
        lines.append(f"{task}: this {results[task]['this_examples_per_s']['median']:,.0f} ex/s, other "
                     f"{results[task]['other_examples_per_s']['median']:,.0f} ex/s, ratio (median of rounds) "
                     f"{ratios['median']:.3f} [{ratios['min']:.3f}-{ratios['max']:.3f}]")
    bench.write(results, "\n".join(lines))


if __name__ == "__main__":
    harness.main(main)
