"""Training speed of mnist_dnn's loop against Keras fit, PyTorch and JAX, side by side.

    pip install -r benchmarks/requirements.txt      # PyTorch (CPU build) and JAX
    python benchmarks/speed.py --idx_dir=../shared/data/mnist [--out=benchmarks/speed.json]

Every run uses the same data (MNIST's 55,000 training images), model, optimizer (Adam) and
batch, in a process of its own (for its peak RSS); the runs of the tasks below take turns,
--rounds times (default 1: each runner's figure is already the median of --repeats epochs). Tasks:
- throughput on 784-128-10 and on 784-512-512-10 with dropout 0.2 (Adam 1e-3, batch 128):
  the first epoch's time (tracing and compilation included), then the median examples/s of
  --repeats further epochs;
- time to 97.5% test accuracy on 784-128-10 and to 98.0% on 784-512-512-10 (dropout 0.2):
  training time from the start (compilation included), test accuracy checked after every epoch
  (evaluation time excluded), at most --max_epochs;
- time to 98.0% with configs/fast.cfg: mnist_dnn with that file's settings, and Keras fit at
  its fastest on the same model with the same settings, alternating, --fast_rounds times each
  (the median round counts: a few seconds on a shared machine vary by up to 1.5x).
mnist_dnn runs through its public API: the config and loop `mnist_dnn.train` uses (the XLA-
compiled loop by default; mnist_dnn_pipeline is the --nojit_compile tf.data path). Keras fit
trains in one `fit` call (a callback times the epochs). Ratios are to Keras `fit` with
steps_per_execution=1, in the same run.
"""

import dataclasses
import os
import resource
import statistics
import sys
import time

import numpy as np

import harness

FAST_CONFIG = os.path.join(harness.ROOT, "configs", "fast.cfg")
RUNNERS = ("keras_fit", "keras_fit_fast", "mnist_dnn", "mnist_dnn_pipeline", "torch_eager", "jax_scan")
# Keras' mixed_bfloat16 policy (bf16 matmuls, float32 weights) in mnist_dnn's loop, on the large model only.
BF16_RUNNERS = ("mnist_dnn_bf16", "mnist_dnn_pipeline_bf16")


@dataclasses.dataclass(frozen=True)
class Setting:
    hidden: tuple[int, ...]
    dropout: float = 0.0
    learning_rate: float = 1e-3
    batch_size: int = 128
    target: float = 0.98  # test accuracy of the time-to-accuracy task
    cosine_steps: int = 0  # if set, the learning rate decays to 0 over this many steps


SMALL = Setting((128,), target=0.975)
LARGE = Setting((512, 512), 0.2)
TASKS = {"small": SMALL, "large": LARGE}  # each: throughput, then time to target


def fast_setting():
    """configs/fast.cfg's model and hyperparameters, read as mnist_dnn.train reads them."""
    from absl import flags
    from mnist_dnn import train  # noqa: F401 (defines the training flags)
    from mnist_dnn.cli import app as cli
    from mnist_dnn.lib.config import TrainConfig
    flags.FLAGS(["speed", f"--flagfile={FAST_CONFIG}"])
    config = cli.tool_config(TrainConfig)
    assert config.optimizer == "adam", "the other runners train with Adam"
    cosine_steps = config.max_steps if config.lr_schedule == "cosine" else 0
    return Setting(config.model.hidden_units, config.model.dropout, config.learning_rate, config.batch_size,
                   cosine_steps=cosine_steps), config


def load_arrays(idx_dir, data_dir):
    from mnist_dnn.lib.core import data
    splits = data.load_splits(data.DataConfig("mnist", data_dir, idx_dir))
    to_np = lambda split: (split.images.numpy().astype(np.float32) / 255.0, split.labels.numpy().astype(np.int32))
    return splits, to_np(splits["train"]), to_np(splits["test"])


# --- runners: each returns run(max_epochs, after_epoch) and test_accuracy() ---------------------
# after_epoch() is called at the end of every epoch and returns True to stop.


def epoch_loop(epoch):
    def run(max_epochs, after_epoch):
        for _ in range(max_epochs):
            epoch()
            if after_epoch():
                return
    return run


def keras_runner(s: Setting, train, test, steps_per_execution, jit):
    import keras
    from mnist_dnn.lib.core import models
    from mnist_dnn.lib.trainer import training
    model = models.create_model(models.make_config("dense", s.hidden, s.dropout))
    optimizer = training.make_optimizer("adam", s.learning_rate, "cosine" if s.cosine_steps else "constant",
                                        s.cosine_steps)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution, jit_compile=jit)

    class AfterEpoch(keras.callbacks.Callback):
        def __init__(self, after_epoch):
            super().__init__()
            self.after_epoch = after_epoch

        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = self.after_epoch()

    def run(max_epochs, after_epoch):
        model.fit(*train, batch_size=s.batch_size, epochs=max_epochs, shuffle=True, verbose=0,
                  callbacks=[AfterEpoch(after_epoch)])

    accuracy = lambda: float(np.mean(np.argmax(model.predict(test[0], batch_size=1000, verbose=0), 1) == test[1]))
    return run, accuracy


def mnist_dnn_runner(s: Setting, splits, jit_compile, config=None):
    from mnist_dnn.lib.core import data, evaluation, models
    from mnist_dnn.lib.trainer import batches, steps, training
    config = config or training.TrainConfig(model=models.make_config("dense", s.hidden, s.dropout),
                                            batch_size=s.batch_size, learning_rate=s.learning_rate)
    config = dataclasses.replace(config, jit_compile=jit_compile)
    state = training.build_state(config)
    run_steps = steps.make_runner(config, state, steps.TrainMetrics(), splits["train"])
    epoch_steps = batches.steps_per_epoch(splits["train"].size, config.batch_size)
    predict = evaluation.make_predict_fn(state.model)

    def epoch():
        for _ in range(epoch_steps // config.steps_per_call):
            run_steps(config.steps_per_call)
        run_steps(epoch_steps % config.steps_per_call)
        state.step.numpy()  # wait for the last step

    return epoch_loop(epoch), lambda: evaluation.evaluate_split(predict, splits["test"], 1000).accuracy


def torch_runner(s: Setting, train, test):
    import torch
    torch.manual_seed(0)
    layers, width = [], 784
    for units in s.hidden:
        layers += [torch.nn.Linear(width, units), torch.nn.ReLU()] + ([torch.nn.Dropout(s.dropout)] if s.dropout else [])
        width = units
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=s.learning_rate)
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1]).long()
    xt, yt = torch.from_numpy(test[0]), torch.from_numpy(test[1]).long()

    def epoch():
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), s.batch_size):
            idx = order[i:i + s.batch_size]
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()

    def accuracy():
        model.eval()
        with torch.no_grad():
            return float((model(xt).argmax(1) == yt).float().mean())

    return epoch_loop(epoch), accuracy


def jax_runner(s: Setting, train, test):
    import jax
    import jax.numpy as jnp
    import optax

    key = jax.random.PRNGKey(0)
    sizes = [784, *s.hidden, 10]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        limit = (6 / (fan_in + fan_out)) ** 0.5
        params.append((jax.random.uniform(sub, (fan_in, fan_out), minval=-limit, maxval=limit), jnp.zeros(fan_out)))
    tx = optax.adam(s.learning_rate)
    opt_state = tx.init(params)
    x, y = jnp.asarray(train[0]), jnp.asarray(train[1])
    full = len(x) // s.batch_size  # the ragged tail is dropped here: scan needs one shape

    def logits_fn(p, xb, rng):
        for i, (w, b) in enumerate(p):
            xb = xb @ w + b
            if i < len(p) - 1:
                xb = jax.nn.relu(xb)
                if s.dropout and rng is not None:
                    rng, sub = jax.random.split(rng)
                    xb = jnp.where(jax.random.bernoulli(sub, 1 - s.dropout, xb.shape), xb / (1 - s.dropout), 0)
        return xb

    def loss_fn(p, xb, yb, rng):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, xb, rng), yb).mean()

    @jax.jit
    def run_epoch(p, opt, rng):
        rng, sub = jax.random.split(rng)
        order = jax.random.permutation(sub, len(x))[: full * s.batch_size].reshape(full, s.batch_size)

        def step(carry, idx):
            p, opt, rng = carry
            rng, sub = jax.random.split(rng)
            grads = jax.grad(loss_fn)(p, x[idx], y[idx], sub)
            updates, opt = tx.update(grads, opt, p)
            return (optax.apply_updates(p, updates), opt, rng), None

        return jax.lax.scan(step, (p, opt, rng), order)[0]

    state = {"carry": (params, opt_state, key)}

    def epoch():
        state["carry"] = run_epoch(*state["carry"])
        jax.block_until_ready(state["carry"][0])

    def accuracy():
        predictions = jnp.argmax(logits_fn(state["carry"][0], jnp.asarray(test[0]), None), 1)
        return float(jnp.mean(predictions == jnp.asarray(test[1])))

    return epoch_loop(epoch), accuracy


def make_runner(name, setting, splits, train, test, config=None):
    if name == "keras_fit":
        return keras_runner(setting, train, test, 1, False)
    if name == "keras_fit_fast":
        return keras_runner(setting, train, test, 50, True)
    if name.startswith("mnist_dnn"):
        import keras
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if name.endswith("_bf16") else "float32")
        return mnist_dnn_runner(setting, splits, "pipeline" not in name, config)
    if name == "torch_eager":
        return torch_runner(setting, train, test)
    return jax_runner(setting, train, test)


# --- one measurement per process ----------------------------------------------------------


class EpochClock:
    """Training seconds per epoch, with the time spent in after_epoch() (evaluation) left out."""

    def __init__(self):
        self.epochs, self.resumed = [], time.perf_counter()

    def lap(self):
        self.epochs.append(time.perf_counter() - self.resumed)

    def resume(self):
        self.resumed = time.perf_counter()


def throughput(run, examples, repeats):
    clock = EpochClock()

    def after_epoch():
        clock.lap()
        clock.resume()
        return len(clock.epochs) > repeats

    run(repeats + 1, after_epoch)
    rates = [examples / seconds for seconds in clock.epochs[1:]]
    return {"first_epoch_s": clock.epochs[0], "examples_per_s": statistics.median(rates), "epochs": rates}


def time_to_accuracy(run, accuracy, target, max_epochs):
    clock, reached = EpochClock(), {}

    def after_epoch():
        clock.lap()
        if accuracy() >= target:
            reached.update(seconds=sum(clock.epochs), epochs=len(clock.epochs))
        clock.resume()
        return bool(reached)

    run(max_epochs, after_epoch)
    return {"target": target, "reached": reached or None}


def measure(row, args):
    """One row, "runner/task", in this process (a worker's)."""
    name, task = row.split("/")
    splits, train, test = load_arrays(args.idx_dir, args.data_dir)
    config = None
    if task == "fast":
        setting, config = fast_setting()
    else:
        setting = TASKS[task.split("_")[0]]
    run, accuracy = make_runner(name, setting, splits, train, test, config)
    if task.endswith("_throughput"):
        result = throughput(run, len(train[1]), args.repeats)
    else:
        result = time_to_accuracy(run, accuracy, setting.target, args.max_epochs)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    harness.worker_line(row, result)


ROWS = [f"{name}/{size}_{kind}" for size in TASKS for kind in ("throughput", "accuracy") for name in RUNNERS]
ROWS += [f"{name}/large_throughput" for name in BF16_RUNNERS] + ["mnist_dnn/fast", "keras_fit_fast/fast"]
# Every runner and kind of task once, and the peers where installed: one worker process.
SMOKE_ROWS = ("keras_fit/small_accuracy,mnist_dnn_pipeline_bf16/large_throughput,mnist_dnn/fast,"
              "torch_eager/small_throughput,jax_scan/small_throughput")


def summarize(rounds: list[dict]) -> dict:
    """A row's rounds: the median, min and max of its figures."""
    done = [r for r in rounds if "error" not in r]
    if not done:
        return {"error": rounds[-1]["error"], "rounds": rounds}
    if "examples_per_s" in done[0]:
        return {"examples_per_s": harness.spread(r["examples_per_s"] for r in done),
                "first_epoch_s": harness.spread(r["first_epoch_s"] for r in done),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in done), "rounds": rounds}
    reached = [r["reached"] for r in done if r["reached"]]
    return {"target": done[0]["target"], "reached_rounds": f"{len(reached)}/{len(rounds)}",
            "seconds": harness.spread(r["seconds"] for r in reached) if reached else None,
            "epochs": harness.spread(r["epochs"] for r in reached) if reached else None,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in done), "rounds": rounds}


def run_all(args):
    """Each row's rounds: the rows of a task take turns (the fast task's --fast_rounds times, the others' --rounds)."""
    rows = harness.installed(args.rows.split(","), {row: {"torch": "torch", "jax": "jax"}.get(row.split("_")[0])
                                                    for row in ROWS})
    command = [sys.executable, __file__, f"--data_dir={args.data_dir}", f"--repeats={args.repeats}",
               f"--max_epochs={args.max_epochs}"] + ([f"--idx_dir={args.idx_dir}"] if args.idx_dir else [])
    by_rounds = {}
    for row in rows:
        by_rounds.setdefault(args.fast_rounds if row.endswith("/fast") else args.rounds, []).append(row)
    results = {}
    for rounds, group in by_rounds.items():
        for row, values in harness.in_workers(command, group, rounds, args.smoke).items():
            name, task = row.split("/")
            results.setdefault(name, {})[task] = summarize(values)
    return results


def _reached(result):
    if "error" in result:
        return "failed"
    return (f"{result['seconds']['median']:.1f} s ({result['epochs']['median']:g} ep., {result['reached_rounds']})"
            if result["seconds"] else f"not reached ({result['reached_rounds']})")


def _rate(result, base):
    if "error" in result:
        return "failed"
    rate = result["examples_per_s"]["median"]
    return f"{rate:,.0f} ({rate / base:.2f})" if base else f"{rate:,.0f}"


def table(results):
    keras = results.get("keras_fit", {})
    base = {size: keras[f"{size}_throughput"]["examples_per_s"]["median"] if "examples_per_s" in
            keras.get(f"{size}_throughput", {}) else None for size in TASKS}
    lines = ["| run | ex/s 784-128-10 (ratio) | first epoch s | ex/s 784-512-512-10 (ratio) | s to 97.5% (small) "
             "| s to 98.0% (large) | s to 98.0% (configs/fast.cfg) | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        first = r.get("small_throughput", {}).get("first_epoch_s")
        cells = [name, _rate(r["small_throughput"], base["small"]) if "small_throughput" in r else "",
                 f"{first['median']:.2f}" if first else "",
                 _rate(r["large_throughput"], base["large"]) if "large_throughput" in r else ""]
        cells += [_reached(r[task]) if task in r else "" for task in ("small_accuracy", "large_accuracy", "fast")]
        cells.append(f"{max(v.get('peak_rss_mb', 0) for v in r.values()):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = harness.parser(__doc__, "speed.json")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of the throughput tasks")
    parser.add_argument("--max_epochs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the throughput and accuracy tasks")
    parser.add_argument("--fast_rounds", type=int, default=3)
    parser.add_argument("--rows", default=",".join(ROWS), help="runner/task, comma-separated (default: all)")
    parser.add_argument("--worker", help="(internal) measure these rows runner/task, comma-separated")
    args = harness.parse(parser, smoke={"repeats": 1, "max_epochs": 1, "rounds": 1, "fast_rounds": 1,
                                        "rows": SMOKE_ROWS})
    if args.worker:
        for row in args.worker.split(","):
            measure(row, args)
        return
    bench = harness.Benchmark("speed", args)
    results = run_all(args)
    bench.write(results, table(results))

if __name__ == "__main__":
    harness.main(main)
