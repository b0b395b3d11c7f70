"""Cost of --deterministic on training speed, measured side by side in one run.

    python benchmarks/determinism.py [--idx_dir=../shared/data/mnist] [--rounds=3]

Alternates plain and deterministic runs of the real CLI (`python -m mnist_dnn.train`,
784-60-30-10, Adam, batch 128) and compares the median steady-state examples/s that
the trainer prints (the first report of each run, which includes tracing, is dropped).
"""

import re
import statistics
import sys
import tempfile

import harness


def examples_per_second(extra_flags, args) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        _, stdout = harness.run(
            [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={args.data_dir}", f"--ckpt_dir={tmp}/ckpt",
             f"--log_dir={tmp}/logs", f"--max_steps={args.steps}", f"--log_every={max(1, args.steps // 10)}",
             "--eval_every=100000", "--checkpoint_every=100000",
             *([f"--idx_dir={args.idx_dir}"] if args.idx_dir else []),
             *(["--nodiagnostics", "--nojit_compile"] if args.smoke else []),  # --smoke: no XLA compiling
             *extra_flags])
    rates = [float(rate.replace(",", "")) for rate in re.findall(r"([\d,.]+) examples/s", stdout)]
    return statistics.median(rates[1:])


def main():
    parser = harness.parser(__doc__, "determinism.json")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5000)
    args = harness.parse(parser, smoke={"rounds": 1, "steps": 10})
    bench = harness.Benchmark("determinism", args)
    rounds = harness.interleaved({"plain": lambda: examples_per_second([], args),
                                  "deterministic": lambda: examples_per_second(["--deterministic"], args)},
                                 args.rounds)
    results = {f"{name}_examples_per_s": harness.spread(values) for name, values in rounds.items()}
    results["ratio"] = harness.spread(d / p for p, d in zip(rounds["plain"], rounds["deterministic"]))
    bench.write(results, f"deterministic / plain examples/s: {results['ratio']['median']:.3f} "
                         f"[{results['ratio']['min']:.3f}-{results['ratio']['max']:.3f}], {args.rounds} rounds")


if __name__ == "__main__":
    harness.main(main)
