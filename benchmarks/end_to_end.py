"""The whole commands against TensorFlow's own start: `train` and `evaluate` against `import tensorflow`.

    python benchmarks/end_to_end.py [--rounds=5] [--out=benchmarks/end_to_end.json]

Wall time of `python -m mnist_dnn.train` (defaults, into a fresh folder) and of
`python -m mnist_dnn.evaluate` on that run, each paired with `python -c "import tensorflow"`:
the two commands of a pair run one after the other, pairs repeat --rounds times after a
warm-up, and the ratio is taken pair by pair (median quoted), so that a machine whose speed
drifts still compares like with like. Targets: train <= 2.0x, evaluate <= 1.5x.
The two other figures of docs/speed.md's "The whole command" come from benchmarks/periodic_stop.py
(a stop against 250 training steps, target <= 1) and benchmarks/phases.py (where the time goes).

The data is imported once into --data_dir (from --idx_dir) by the warm-up; the XLA cache is the
user's, as a second run of the command would find it.
"""

import os
import shutil
import sys
import tempfile

import harness

IMPORT_TF = [sys.executable, "-c", "import tensorflow"]


def paired(command: list[str], args, before=lambda: None) -> dict:
    """Wall seconds of `command` and of importing TensorFlow, in pairs, and the pairs' ratios."""
    def timed_command():
        before()
        return harness.run(command)[0]

    for _ in range(args.warm_up):  # disk caches, the XLA cache, the data's import
        timed_command(), harness.run(IMPORT_TF)
    rounds = harness.interleaved({"command": timed_command, "import": lambda: harness.run(IMPORT_TF)[0]},
                                 args.rounds)
    return {"seconds": harness.spread(rounds["command"]), "import_tensorflow_seconds": harness.spread(rounds["import"]),
            "ratio": harness.spread(t / i for t, i in zip(rounds["command"], rounds["import"]))}


def main():
    parser = harness.parser(__doc__, "end_to_end.json")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warm_up", type=int, default=1, help="pairs run before the timed ones")
    args = harness.parse(parser, smoke={"rounds": 1, "warm_up": 0})
    bench = harness.Benchmark("end_to_end", args)
    data_flags = [f"--data_dir={args.data_dir}"] + ([f"--idx_dir={args.idx_dir}"] if args.idx_dir else [])
    with tempfile.TemporaryDirectory() as folder:
        ckpt, logs = os.path.join(folder, "ckpt"), os.path.join(folder, "logs")

        def fresh():
            shutil.rmtree(ckpt, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)

        train = [sys.executable, "-m", "mnist_dnn.train", f"--ckpt_dir={ckpt}", f"--log_dir={logs}", *data_flags,
                 *(harness.SMOKE_TRAINING if args.smoke else [])]
        evaluate = [sys.executable, "-m", "mnist_dnn.evaluate", f"--ckpt_dir={ckpt}", *data_flags]
        results = {"train": paired(train, args, fresh), "evaluate": paired(evaluate, args)}
    bench.write(results, "\n".join(
        f"{name}: {row['seconds']['median']:.2f} s, import tensorflow {row['import_tensorflow_seconds']['median']:.2f}"
        f" s, ratio {row['ratio']['median']:.2f} (median of {args.rounds} pairs)" for name, row in results.items()))


if __name__ == "__main__":
    harness.main(main)
