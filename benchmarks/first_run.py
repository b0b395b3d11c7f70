"""The README's main command the first time (the one-time data import included) and the second time.

    python benchmarks/first_run.py [--rounds=2] [--out=benchmarks/first_run.json]

Each round runs `python -m mnist_dnn.train --model=dense --optimizer=adam` twice into fresh run folders:
first with an empty TFDS data folder (online it downloads MNIST, offline it imports --idx_dir; both prepare
the dataset once), then again on the data the first run prepared. Wall time of each whole command.
"""

import os
import shutil
import sys
import tempfile

import harness

COMMAND = ["-m", "mnist_dnn.train", "--model=dense", "--optimizer=adam"]


def one_round(args, scratch: str) -> dict:
    data_dir = args.data_dir if args.smoke else os.path.join(scratch, "tfds")  # --smoke: the tests' prepared data
    if not args.smoke:
        shutil.rmtree(data_dir, ignore_errors=True)
    seconds = {}
    for run in ("first", "second"):
        folder = os.path.join(scratch, run)
        shutil.rmtree(folder, ignore_errors=True)
        command = [sys.executable, *COMMAND, f"--data_dir={data_dir}", f"--ckpt_dir={folder}",
                   *([f"--idx_dir={args.idx_dir}"] if args.idx_dir else []),
                   *(harness.SMOKE_TRAINING + [f"--log_dir={folder}-logs"] if args.smoke else [])]  # not in logs/
        seconds[run] = harness.run(command)[0]
    return seconds


def main():
    parser = harness.parser(__doc__, "first_run.json")
    parser.add_argument("--rounds", type=int, default=2)
    args = harness.parse(parser, smoke={"rounds": 1})
    bench = harness.Benchmark("first_run", args)
    with tempfile.TemporaryDirectory() as scratch:
        rounds = harness.interleaved({"round": lambda: one_round(args, scratch)}, args.rounds)["round"]
    results = {run: harness.spread(r[run] for r in rounds) for run in ("first", "second")}
    bench.write(results, f"first run {results['first']['median']:.0f} s (data import included), "
                         f"then {results['second']['median']:.0f} s")


if __name__ == "__main__":
    harness.main(main)
