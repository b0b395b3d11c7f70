"""The cost of a periodic stop against the training it interrupts, in one process.

    python benchmarks/periodic_stop.py [--idx_dir=DIR] [--rounds=9] [--json=FILE]

With the main command's settings (dense 784-60-30-10, Adam, batch 128), after a warm-up, it
alternates: 250 training steps, then one stop as `train` makes it every 1,000 steps
(validate the 5,000 validation images, keep the best checkpoint, write the diagnostics, save a
checkpoint). Prints the medians and their ratio (target: a stop costs at most 250 steps).
"""

import argparse
import json
import statistics
import tempfile
import time

import tensorflow as tf

from mnist_dnn.lib.core import data
from mnist_dnn.lib.trainer import distribute, training
from mnist_dnn.lib.core.run_dir import RunDir

STEPS = 250


def seconds(work) -> float:
    begin = time.perf_counter()
    work()
    return time.perf_counter() - begin


def make_run(idx_dir: str | None, folder: str):
    config = training.TrainConfig(data=data.DataConfig("mnist", None, idx_dir), ckpt_dir=f"{folder}/ckpt",
                                  log_dir=f"{folder}/logs")
    state = training.build_state(config)
    splits = data.load_splits(config.data)
    run = training._Run(config, state, distribute.make_strategy("default", None, 0), splits, config.log_dir,
                        RunDir(config.ckpt_dir), None)
    return run, state


def stop(run, state) -> None:
    step = state.current_step()
    run.validation.best = None  # so every stop keeps a best checkpoint, as an improving run does
    run.validation(step)  # in train's order: validation (and the best checkpoint), then the save
    run.save(step)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--idx_dir")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run, state = make_run(args.idx_dir, folder)
        run.runner(STEPS)  # compiles
        stop(run, state)  # traces the validation and diagnostics functions
        training_s, stop_s = [], []
        for _ in range(args.rounds):
            training_s.append(seconds(lambda: (run.runner(STEPS), float(state.step.numpy()))))
            stop_s.append(seconds(lambda: stop(run, state)))
        run.close()
    result = {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "tensorflow": tf.__version__,
              f"{STEPS}_steps_s": statistics.median(training_s), "stop_s": statistics.median(stop_s)}
    result["stop_over_steps"] = result["stop_s"] / result[f"{STEPS}_steps_s"]
    print(f"{STEPS} training steps {result[f'{STEPS}_steps_s'] * 1000:.1f} ms, one stop {result['stop_s'] * 1000:.1f} ms "
          f"(median of {args.rounds}): ratio {result['stop_over_steps']:.2f} (target <= 1)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
