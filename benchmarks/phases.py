"""Where the main command's time goes: `python -m mnist_dnn.train` in one process, timed by phase.

    python benchmarks/phases.py [train flags...]      # default: the main command into a fresh folder

Imports the tool and runs it as `python -m mnist_dnn.train` would, with timers wrapped around
the library functions of each phase (imports, data, model build, tracing and XLA compile, steps,
validations, diagnostics, saves). Prints one row per phase and the wall time of the whole
process, and writes them to benchmarks/phases.json (--out).
"""

import time

STARTED = time.perf_counter()

import collections  # noqa: E402 (after the clock starts: the whole process is timed)
import contextlib  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import harness  # noqa: E402

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
        from mnist_dnn.lib.core import data, evaluation, run_dir
        from mnist_dnn.lib.trainer import actions, diagnostics, steps, training
    wrap(data, "load_splits", "data: load splits")
    wrap(training, "build_state", "model + optimizer build")
    wrap(run_dir.RunDir, "restore_newest", "restore check")
    wrap(actions, "write_run_summary", "TensorBoard hparams + graph (traces predict)")
    wrap(evaluation, "evaluate_split", "validation: score 5,000 images")
    wrap(diagnostics.Diagnostics, "write", "validation: diagnostics")
    wrap(run_dir.RunDir, "save_best", "validation: best checkpoint")
    wrap(run_dir.RunDir, "save", "checkpoint saves")
    wrap(actions.TrainingLog, "__call__", "progress + train summaries")
    wrap_runner(steps)
    return train


def train_flags(args, scratch: str) -> list[str]:
    """The train command's flags: the ones given, and a fresh folder and the data unless they say otherwise."""
    flags = list(args.rest)
    given = lambda name: any(a.startswith(f"--{name}") for a in flags)
    if not given("ckpt_dir"):
        flags += [f"--ckpt_dir={scratch}/ckpt", f"--log_dir={scratch}/logs"]
    if not given("data_dir"):
        flags.append(f"--data_dir={args.data_dir}")
    if args.idx_dir and not given("idx_dir"):
        flags.append(f"--idx_dir={args.idx_dir}")
    if args.smoke and not given("max_steps"):
        flags += ["--max_steps=5", "--eval_every=5", "--checkpoint_every=5", "--log_every=5"]
    return flags


def main():
    parser = harness.parser(__doc__, "phases.json")
    args = harness.parse(parser, smoke={}, rest=True)
    bench = harness.Benchmark("phases", args)
    train = instrument()
    from mnist_dnn.cli import app as cli

    with tempfile.TemporaryDirectory(prefix="phases-") as scratch:
        sys.argv = ["mnist_dnn.train", *train_flags(args, scratch)]
        with phase("the whole of main()"), cli.in_process():
            try:
                cli.run(train.main, presets=True)
            except SystemExit as e:
                if e.code:
                    sys.exit(f"error: the train command failed (exit {e.code})")
    total = time.perf_counter() - STARTED
    rows = {name: {"seconds": round(SECONDS[name], 3), "calls": CALLS[name]} for name in SECONDS}
    rows["process (all of it)"] = {"seconds": round(total, 3), "calls": 1}
    table = f"{'phase':<58}{'calls':>6}{'seconds':>9}\n" + "\n".join(
        f"{name:<58}{row['calls']:>6}{row['seconds']:>9.2f}" for name, row in rows.items())
    bench.write(rows, table)


if __name__ == "__main__":
    harness.main(main)
