"""Where the main command's time goes: `python -m mnist_dnn.train` in one process, timed by phase.

    python benchmarks/phases.py [train flags...]      # default: the main command into a fresh folder

Imports the tool and runs its `main` as `python -m mnist_dnn.train` would, with timers wrapped
around the library functions of each phase (imports, data, model build, tracing and XLA compile,
steps, validations, diagnostics, saves). Prints one row per phase and the wall time of the
whole process; `--json=FILE` also writes them.
"""

import collections
import contextlib
import functools
import json
import sys
import tempfile
import time

STARTED = time.perf_counter()
SECONDS = collections.defaultdict(float)
CALLS = collections.Counter()


@contextlib.contextmanager
def phase(name):
    begin = time.perf_counter()
    try:
        yield
    finally:
        SECONDS[name] += time.perf_counter() - begin
        CALLS[name] += 1


def wrap(owner, attribute, name):
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        with phase(name):
            return original(*args, **kwargs)

    setattr(owner, attribute, timed)


def wrap_runner(steps):
    """The runner's first call traces and compiles; the later ones only run steps."""
    original = steps.make_runner

    def make_runner(*args, **kwargs):
        runner = original(*args, **kwargs)
        calls = [0]

        def run(num_steps):
            calls[0] += 1
            with phase("first steps call (trace + XLA compile + steps)" if calls[0] == 1 else "training steps"):
                runner(num_steps)

        return run

    steps.make_runner = make_runner


def instrument():
    with phase("import tensorflow"):
        import tensorflow  # noqa: F401
    with phase("import the tool (keras, tfds, tensorboard, mnist_dnn)"):
        from mnist_dnn import train
        from mnist_dnn.lib.core import checkpoint_store, data, evaluation
        from mnist_dnn.lib.trainer import actions, diagnostics, steps, summaries, training
    wrap(data, "load_splits", "data: load splits")
    wrap(training, "build_state", "model + optimizer build")
    wrap(checkpoint_store.CheckpointStore, "restore_newest", "restore check")
    wrap(summaries, "write_run_summary", "TensorBoard hparams + graph (traces predict)")
    wrap(evaluation, "evaluate_split", "validation: score 5,000 images")
    wrap(diagnostics.Diagnostics, "write", "validation: diagnostics")
    wrap(checkpoint_store.CheckpointStore, "save_best", "validation: best checkpoint")
    wrap(checkpoint_store.CheckpointStore, "save", "checkpoint saves")
    wrap(actions.TrainingLog, "__call__", "progress + train summaries")
    wrap_runner(steps)
    return train


def main():
    argv = [a for a in sys.argv[1:] if not a.startswith("--json=")]
    json_file = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--json=")), None)
    scratch = tempfile.mkdtemp(prefix="phases-")
    if not any(a.startswith("--ckpt_dir") for a in argv):
        argv += [f"--ckpt_dir={scratch}/ckpt", f"--log_dir={scratch}/logs"]
    train = instrument()
    from absl import app

    with phase("the whole of main()"):
        try:
            app.run(train.main, argv=["mnist_dnn.train", *argv])
        except SystemExit:
            pass
    total = time.perf_counter() - STARTED
    rows = {name: {"seconds": round(SECONDS[name], 3), "calls": CALLS[name]} for name in SECONDS}
    rows["process (all of it)"] = {"seconds": round(total, 3), "calls": 1}
    print(f"\n{'phase':<58}{'calls':>6}{'seconds':>9}", file=sys.stderr)
    for name, row in rows.items():
        print(f"{name:<58}{row['calls']:>6}{row['seconds']:>9.2f}", file=sys.stderr)
    if json_file:
        with open(json_file, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
