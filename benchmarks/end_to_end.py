"""The whole commands against TensorFlow's own start, and a periodic stop against training, in one run.

    python benchmarks/end_to_end.py [--rounds=5] [--out=benchmarks/end_to_end.json]

1. Wall time of `python -m mnist_dnn.train` (defaults, into a fresh folder) and of
   `python -m mnist_dnn.evaluate` on that run, each paired with `python -c "import tensorflow"`:
   the two commands of a pair run one after the other, pairs repeat --rounds times after a
   warm-up, and the ratio is taken pair by pair (median quoted), so that a machine whose speed
   drifts still compares like with like. Targets: train <= 2.0x, evaluate <= 1.5x.
2. benchmarks/periodic_stop.py: a stop (save, validation, best checkpoint, diagnostics)
   against 250 training steps. Target <= 1.
3. benchmarks/phases.py: where the main command's time goes.

The data must be prepared (or MNIST_DNN_IDX_DIR set); the XLA cache is the user's, as a
second run of the command would find it.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
IMPORT_TF = [sys.executable, "-c", "import tensorflow"]


def wall(command: list[str]) -> float:
    begin = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - begin


def paired(command: list[str], rounds: int, before=lambda: None) -> dict:
    """Median wall seconds of `command` and of importing TensorFlow, and the median of their ratios."""
    before()
    wall(command), wall(IMPORT_TF)  # warm-up: disk caches, the XLA cache
    times, imports = [], []
    for _ in range(rounds):
        before()
        times.append(wall(command))
        imports.append(wall(IMPORT_TF))
    return {"seconds": statistics.median(times), "import_tensorflow_seconds": statistics.median(imports),
            "ratio": statistics.median(t / i for t, i in zip(times, imports))}


def commands(rounds: int, folder: str) -> dict:
    ckpt, logs = os.path.join(folder, "ckpt"), os.path.join(folder, "logs")

    def fresh():
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)

    train = [sys.executable, "-m", "mnist_dnn.train", f"--ckpt_dir={ckpt}", f"--log_dir={logs}"]
    evaluate = [sys.executable, "-m", "mnist_dnn.evaluate", f"--ckpt_dir={ckpt}"]
    return {"train": paired(train, rounds, fresh), "evaluate": paired(evaluate, rounds)}


def script_json(name: str, *args: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, os.path.join(HERE, name), *args, f"--json={out.name}"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.load(open(out.name))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(HERE, "end_to_end.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "rounds": args.rounds,
                  "commands": commands(args.rounds, folder), "periodic_stop": script_json("periodic_stop.py"),
                  "phases": script_json("phases.py")}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    for name, row in report["commands"].items():
        print(f"{name}: {row['seconds']:.2f} s, import tensorflow {row['import_tensorflow_seconds']:.2f} s, "
              f"ratio {row['ratio']:.2f} (median of {args.rounds} pairs)")
    stop = report["periodic_stop"]
    print(f"periodic stop: {stop['stop_s'] * 1000:.0f} ms against {stop['250_steps_s'] * 1000:.0f} ms for 250 steps "
          f"({stop['stop_over_steps']:.2f})")
    for name, row in report["phases"].items():
        print(f"  {name:<58}{row['calls']:>6}{row['seconds']:>9.2f}")


if __name__ == "__main__":
    main()
