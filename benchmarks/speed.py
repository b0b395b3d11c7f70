"""Training speed of mnist_dnn's loop against Keras fit, PyTorch and JAX, side by side.

    pip install -r benchmarks/requirements.txt      # PyTorch (CPU build) and JAX
    python benchmarks/speed.py --idx_dir=../shared/data/mnist [--out=benchmarks/speed.json]

Every run uses the same data (MNIST's 55,000 training images), model, optimizer (Adam) and
batch, in a process of its own (for its peak RSS). Tasks:
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

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST_CONFIG = os.path.join(ROOT, "configs", "fast.cfg")
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
        if name.endswith("_bf16"):
            import keras
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
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
    return {"first_epoch_s": clock.epochs[0], "examples_per_s": statistics.median(rates), "rounds": rates}


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


def measure(name, task, args):
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
    print(json.dumps(result))


def available(name):
    module = {"torch_eager": "torch", "jax_scan": "jax"}.get(name)
    if module is None:
        return True
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def plan(fast_rounds):
    """(runner, task) pairs, in the order they run."""
    tasks = [f"{size}_{kind}" for size in TASKS for kind in ("throughput", "accuracy")]
    pairs = [(name, task) for task in tasks for name in RUNNERS]
    pairs += [(name, "large_throughput") for name in BF16_RUNNERS]
    return pairs + [("mnist_dnn", "fast"), ("keras_fit_fast", "fast")] * fast_rounds


def median_round(rounds):
    seconds = lambda r: r["reached"]["seconds"] if r["reached"] else float("inf")
    return sorted(rounds, key=seconds)[len(rounds) // 2]


def run_all(args):
    results = {}
    for name, task in plan(args.fast_rounds):
        if not available(name):
            print(f"{name}: not installed, skipped", flush=True)
            continue
        command = [sys.executable, __file__, f"--worker={name}", f"--task={task}", f"--data_dir={args.data_dir}",
                   f"--repeats={args.repeats}", f"--max_epochs={args.max_epochs}"]
        if args.idx_dir:
            command.append(f"--idx_dir={args.idx_dir}")
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(name, task, result, flush=True)
        if task == "fast":
            rounds = results.setdefault(name, {}).setdefault("fast_rounds", [])
            rounds.append(result)
            result = median_round(rounds)
        results.setdefault(name, {})[task] = result
    return results


def _reached(result):
    r = result["reached"]
    return f"{r['seconds']:.1f} s ({r['epochs']} ep.)" if r else "not reached"


def table(results):
    base = {size: results["keras_fit"][f"{size}_throughput"]["examples_per_s"] for size in TASKS}
    lines = ["| run | ex/s 784-128-10 (ratio) | first epoch s | ex/s 784-512-512-10 (ratio) | s to 97.5% (small) "
             "| s to 98.0% (large) | s to 98.0% (configs/fast.cfg) | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        if "small_throughput" not in r:
            t = r["large_throughput"]
            lines.append(f"| {name} | | | {t['examples_per_s']:,.0f} ({t['examples_per_s'] / base['large']:.2f}) | | | | "
                         f"{t['peak_rss_mb']:,.0f} |")
            continue
        cells = [name]
        for size in TASKS:
            t = r[f"{size}_throughput"]
            cells.append(f"{t['examples_per_s']:,.0f} ({t['examples_per_s'] / base[size]:.2f})")
            if size == "small":
                cells.append(f"{t['first_epoch_s']:.2f}")
        cells += [_reached(r["small_accuracy"]), _reached(r["large_accuracy"])]
        cells.append(_reached(r["fast"]) if "fast" in r else "")
        cells.append(f"{max(v['peak_rss_mb'] for k, v in r.items() if k != 'fast_rounds'):,.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx_dir", default=os.environ.get("MNIST_DNN_IDX_DIR"))
    parser.add_argument("--data_dir", default=os.path.join("/tmp", "mnist_dnn_bench_tfds"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_epochs", type=int, default=20)
    parser.add_argument("--fast_rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/speed.json")
    parser.add_argument("--worker", choices=RUNNERS + BF16_RUNNERS)
    parser.add_argument("--task", choices=[f"{s}_{k}" for s in TASKS for k in ("throughput", "accuracy")] + ["fast"])
    args = parser.parse_args()
    if args.worker:
        return measure(args.worker, args.task, args)
    results = run_all(args)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
              "results": results, "table": table(results)}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(report["table"])


if __name__ == "__main__":
    main()
