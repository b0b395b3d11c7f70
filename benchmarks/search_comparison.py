"""TPE with pruning against random search and a grid of the same size, on the MLP.

Same budget for each: --trials trials of at most --steps steps (dense, Adam, batch 128, one worker),
three search seeds each, the methods in turn seed by seed. Prints and stores the best validation
accuracy each search reached and the minutes it took (the whole `mnist_dnn.search` command, its
report included). --smoke runs one tiny search of the first of --methods.

    flock /tmp/mnist_bench.lock python benchmarks/search_comparison.py --out=benchmarks/search_comparison.json
"""

import csv
import itertools
import os
import sys
import tempfile

import harness

UNITS = "--space=hidden_units=choice:128,256-128"
METHODS = {  # the grid: 4 learning rates x 2 widths = 8 points, the same budget
    "tpe+median": ["--sampler=tpe", "--pruner=median", "--space=learning_rate=loguniform:1e-4:3e-2", UNITS],
    "random": ["--sampler=random", "--pruner=none", "--space=learning_rate=loguniform:1e-4:3e-2", UNITS],
    "grid": ["--sampler=grid", "--pruner=none", "--space=learning_rate=choice:0.0003,0.001,0.003,0.01", UNITS],
}


def one_search(method: str, seed: int, folder: str, args) -> dict:
    root = os.path.join(folder, f"{method}-{seed}")
    base = ["--model=dense", "--optimizer=adam", "--batch_size=128", f"--max_steps={args.steps}",
            f"--eval_every={args.steps // 6}", f"--log_every={args.steps // 6}",
            f"--checkpoint_every={args.steps // 3}", "--nodiagnostics", f"--trials={args.trials}", "--workers=1",
            f"--data_dir={args.data_dir}", *(["--nojit_compile"] if args.smoke else [])]  # --smoke: no XLA compiling
    seconds, _ = harness.run([sys.executable, "-m", "mnist_dnn.search", *base, *METHODS[method],
                              f"--search_seed={seed}", f"--root={root}"])
    with open(os.path.join(root, "report.csv")) as f:
        rows = list(csv.DictReader(f))
    best = max(float(r["best_val_accuracy"]) for r in rows if r["best_val_accuracy"])
    steps = sum(int(r["steps"]) for r in rows if r["steps"])
    return {"method": method, "seed": seed, "best_val_accuracy": best, "minutes": seconds / 60, "steps_trained": steps,
            "pruned": sum(r["status"] == "pruned" for r in rows)}


def main():
    parser = harness.parser(__doc__, "search_comparison.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ",".join(METHODS))
    args = harness.parse(parser, smoke={"seeds": 1, "trials": 1, "steps": 12, "methods": "grid"})
    bench = harness.Benchmark("search_comparison", args)
    from mnist_dnn.lib.core import data  # the data imported once here, so that no search's minutes include it

    data.prepare(data.DataConfig(data_dir=args.data_dir, idx_dir=args.idx_dir))
    methods = args.methods.split(",")
    seeds = {method: itertools.count() for method in methods}
    with tempfile.TemporaryDirectory(prefix="search-comparison-") as folder:
        rounds = harness.interleaved({method: lambda m=method: one_search(m, next(seeds[m]), folder, args)
                                      for method in methods}, args.seeds)
    summary = {method: {"best_val_accuracy": harness.spread(r["best_val_accuracy"] for r in results),
                        "minutes": harness.spread(r["minutes"] for r in results),
                        "steps_trained": harness.spread(r["steps_trained"] for r in results)}
               for method, results in rounds.items()}
    table = "\n".join(f"{method}: best validation accuracy {s['best_val_accuracy']['median']:.2%} (median), "
                      f"{s['minutes']['median']:.1f} min" for method, s in summary.items())
    bench.write({"runs": rounds, "summary": summary}, table)


if __name__ == "__main__":
    harness.main(main)
