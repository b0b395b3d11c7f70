"""TPE with pruning against random search and a grid of the same size, on the MLP.

Same budget for each: TRIALS trials of at most STEPS steps (dense, Adam, batch 128, one worker),
three search seeds each. Prints and stores the best validation accuracy each search reached
and the minutes it took (the whole `mnist_dnn.search` command, its report included).

    flock /tmp/mnist_bench.lock python benchmarks/search_comparison.py --out=benchmarks/search_comparison.json
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

TRIALS, STEPS = 8, 1500
BASE = ["--model=dense", "--optimizer=adam", "--batch_size=128", f"--max_steps={STEPS}", "--eval_every=250",
        "--log_every=250", "--checkpoint_every=500", "--nodiagnostics", f"--trials={TRIALS}", "--workers=1"]
UNITS = "--space=hidden_units=choice:128,256-128"
METHODS = {  # the grid: 4 learning rates x 2 widths = 8 points, the same budget
    "tpe+median": ["--sampler=tpe", "--pruner=median", "--space=learning_rate=loguniform:1e-4:3e-2", UNITS],
    "random": ["--sampler=random", "--pruner=none", "--space=learning_rate=loguniform:1e-4:3e-2", UNITS],
    "grid": ["--sampler=grid", "--pruner=none", "--space=learning_rate=choice:0.0003,0.001,0.003,0.01", UNITS],
}


def one_search(method: str, seed: int, folder: str, data_dir: str) -> dict:
    root = os.path.join(folder, f"{method}-{seed}")
    command = [sys.executable, "-m", "mnist_dnn.search", *BASE, *METHODS[method], f"--search_seed={seed}",
               f"--root={root}", f"--data_dir={data_dir}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    minutes = (time.perf_counter() - started) / 60
    with open(os.path.join(root, "report.csv")) as f:
        rows = list(csv.DictReader(f))
    best = max(float(r["best_val_accuracy"]) for r in rows if r["best_val_accuracy"])
    steps = sum(int(r["steps"]) for r in rows if r["steps"])
    return {"method": method, "seed": seed, "best_val_accuracy": best, "minutes": minutes, "steps_trained": steps,
            "pruned": sum(r["status"] == "pruned" for r in rows)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/search_comparison.json")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="search-comparison-") as folder:
        data_dir = os.path.join(folder, "tfds")
        from mnist_dnn.lib.core import data  # imported once here, so that no search's minutes include it

        data.prepare(data.DataConfig(data_dir=data_dir, idx_dir=os.environ[data.IDX_DIR_ENV]))
        for seed in range(args.seeds):
            for method in METHODS:
                results.append(one_search(method, seed, folder, data_dir))
                print(json.dumps(results[-1]), flush=True)
    summary = {}
    for method in METHODS:
        mine = [r for r in results if r["method"] == method]
        summary[method] = {"mean_best_val_accuracy": sum(r["best_val_accuracy"] for r in mine) / len(mine),
                           "mean_minutes": sum(r["minutes"] for r in mine) / len(mine),
                           "mean_steps_trained": sum(r["steps_trained"] for r in mine) / len(mine)}
        print(f"{method}: {summary[method]}")
    with open(args.out, "w") as f:
        json.dump({"budget": {"trials": TRIALS, "steps": STEPS}, "load_before": load, "load_after": os.getloadavg(),
                   "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": results,
                   "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
