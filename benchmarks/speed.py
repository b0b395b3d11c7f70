"""Training speed of mnist_dnn's loop against Keras fit, PyTorch and JAX, side by side.

    pip install -r benchmarks/requirements.txt      # PyTorch (CPU build); JAX optional
    python benchmarks/speed.py --idx_dir=../shared/data/mnist [--out=benchmarks/speed.json]

Every run uses the same data (MNIST's 55,000 training images, in memory as float32), the
same model, Adam 1e-3 and batch 128, and runs in a process of its own (for its peak RSS):
- throughput on 784-128-10: the first epoch's time (tracing and compilation included), then
  the median examples/s of --repeats further epochs;
- time to 98.0% test accuracy on 784-512-512-10 with dropout 0.2: training time from the start,
  test accuracy checked after every epoch (evaluation time excluded), at most --max_epochs.
mnist_dnn runs through its public API (the same train step, loop and tf.data pipeline as
`mnist_dnn.train`). Ratios are to Keras `fit` with steps_per_execution=1, in the same run.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

BATCH, LEARNING_RATE = 128, 1e-3
SMALL, LARGE = (128,), (512, 512)
RUNNERS = ("keras_fit", "keras_fit_fast", "mnist_dnn", "torch_eager", "jax_scan")


def load_arrays(idx_dir, data_dir):
    from mnist_dnn import data
    splits = data.load_splits(data.DataConfig("mnist", data_dir, idx_dir))
    to_np = lambda split: (split.images.numpy().astype(np.float32) / 255.0, split.labels.numpy().astype(np.int32))
    return splits, to_np(splits["train"]), to_np(splits["test"])


# --- runners: each returns train_epoch(seconds) and test_accuracy() for a model ---------------


def keras_runner(hidden, dropout, train, test, steps_per_execution, jit):
    import keras
    from mnist_dnn import models
    model = models.create_model(models.make_config("dense", hidden, dropout))
    model.compile(keras.optimizers.Adam(LEARNING_RATE), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution, jit_compile=jit)
    epoch = lambda: model.fit(*train, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)
    accuracy = lambda: float(np.mean(np.argmax(model.predict(test[0], batch_size=1000, verbose=0), 1) == test[1]))
    return epoch, accuracy


def mnist_dnn_runner(hidden, dropout, splits):
    import tensorflow as tf
    from mnist_dnn import data, evaluation, models, training
    config = training.TrainConfig(model=models.make_config("dense", hidden, dropout), batch_size=BATCH,
                                  learning_rate=LEARNING_RATE)
    state = training.build_state(config)
    loop = training.make_train_loop(training.make_train_step(state.model, state.optimizer, state.step,
                                                             training.TrainMetrics()))
    iterator = iter(data.train_batches(splits["train"], BATCH, seed=0))
    steps = data.steps_per_epoch(splits["train"], BATCH)
    predict = evaluation.make_predict_fn(state.model)

    def epoch():
        for _ in range(steps // config.steps_per_call):
            loop(iterator, tf.constant(config.steps_per_call, tf.int64))
        loop(iterator, tf.constant(steps % config.steps_per_call, tf.int64))
        state.step.numpy()  # wait for the last step

    return epoch, lambda: evaluation.evaluate_split(predict, splits["test"], 1000).accuracy


def torch_runner(hidden, dropout, train, test):
    import torch
    torch.manual_seed(0)
    layers, width = [], 784
    for units in hidden:
        layers += [torch.nn.Linear(width, units), torch.nn.ReLU()] + ([torch.nn.Dropout(dropout)] if dropout else [])
        width = units
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1]).long()
    xt, yt = torch.from_numpy(test[0]), torch.from_numpy(test[1]).long()

    def epoch():
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            idx = order[i:i + BATCH]
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()

    def accuracy():
        model.eval()
        with torch.no_grad():
            return float((model(xt).argmax(1) == yt).float().mean())

    return epoch, accuracy


def jax_runner(hidden, dropout, train, test):
    import jax
    import jax.numpy as jnp
    import optax  # noqa: F401  (installed with the JAX extras of requirements.txt)

    key = jax.random.PRNGKey(0)
    sizes = [784, *hidden, 10]
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        key, sub = jax.random.split(key)
        limit = (6 / (fan_in + fan_out)) ** 0.5
        params.append((jax.random.uniform(sub, (fan_in, fan_out), minval=-limit, maxval=limit), jnp.zeros(fan_out)))
    tx = optax.adam(LEARNING_RATE)
    opt_state = tx.init(params)
    x, y = jnp.asarray(train[0]), jnp.asarray(train[1])
    full = len(x) // BATCH  # the ragged tail is dropped here: scan needs one shape

    def logits_fn(p, xb, rng):
        for i, (w, b) in enumerate(p):
            xb = xb @ w + b
            if i < len(p) - 1:
                xb = jax.nn.relu(xb)
                if dropout and rng is not None:
                    rng, sub = jax.random.split(rng)
                    xb = jnp.where(jax.random.bernoulli(sub, 1 - dropout, xb.shape), xb / (1 - dropout), 0)
        return xb

    def loss_fn(p, xb, yb, rng):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, xb, rng), yb).mean()

    @jax.jit
    def run_epoch(p, s, rng):
        rng, sub = jax.random.split(rng)
        order = jax.random.permutation(sub, len(x))[: full * BATCH].reshape(full, BATCH)

        def step(carry, idx):
            p, s, rng = carry
            rng, sub = jax.random.split(rng)
            grads = jax.grad(loss_fn)(p, x[idx], y[idx], sub)
            updates, s = tx.update(grads, s, p)
            return (optax.apply_updates(p, updates), s, rng), None

        return jax.lax.scan(step, (p, s, rng), order)[0]

    state = {"carry": (params, opt_state, key)}

    def epoch():
        state["carry"] = run_epoch(*state["carry"])
        jax.block_until_ready(state["carry"][0])

    def accuracy():
        predictions = jnp.argmax(logits_fn(state["carry"][0], jnp.asarray(test[0]), None), 1)
        return float(jnp.mean(predictions == jnp.asarray(test[1])))

    return epoch, accuracy


def make_runner(name, hidden, dropout, splits, train, test):
    if name == "keras_fit":
        return keras_runner(hidden, dropout, train, test, 1, False)
    if name == "keras_fit_fast":
        return keras_runner(hidden, dropout, train, test, 50, True)
    if name == "mnist_dnn":
        return mnist_dnn_runner(hidden, dropout, splits)
    if name == "torch_eager":
        return torch_runner(hidden, dropout, train, test)
    return jax_runner(hidden, dropout, train, test)


# --- one measurement per process ----------------------------------------------------------


def measure(name, task, args):
    splits, train, test = load_arrays(args.idx_dir, args.data_dir)
    if task == "throughput":
        epoch, _ = make_runner(name, SMALL, 0.0, splits, train, test)
        started = time.perf_counter()
        epoch()
        first = time.perf_counter() - started
        rates = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            epoch()
            rates.append(len(train[1]) / (time.perf_counter() - started))
        result = {"first_epoch_s": first, "examples_per_s": statistics.median(rates), "rounds": rates}
    else:
        epoch, accuracy = make_runner(name, LARGE, 0.2, splits, train, test)
        trained, reached = 0.0, None
        for number in range(1, args.max_epochs + 1):
            started = time.perf_counter()
            epoch()
            trained += time.perf_counter() - started
            if accuracy() >= 0.98:
                reached = {"seconds": trained, "epochs": number}
                break
        result = {"to_98": reached}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def available(name):
    module = {"torch_eager": "torch", "jax_scan": "jax"}.get(name)
    if module is None:
        return True
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def run_all(args):
    results = {}
    for name in RUNNERS:
        if not available(name):
            print(f"{name}: not installed, skipped", flush=True)
            continue
        results[name] = {}
        for task in ("throughput", "accuracy"):
            command = [sys.executable, __file__, f"--worker={name}", f"--task={task}", f"--data_dir={args.data_dir}",
                       f"--repeats={args.repeats}", f"--max_epochs={args.max_epochs}"]
            if args.idx_dir:
                command.append(f"--idx_dir={args.idx_dir}")
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            results[name][task] = json.loads(output.strip().splitlines()[-1])
            print(name, task, results[name][task], flush=True)
    return results


def table(results):
    base = results["keras_fit"]["throughput"]["examples_per_s"]
    lines = ["| run | examples/s (784-128-10) | ratio to Keras fit | first epoch s | s to 98.0% (784-512-512-10) | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        t, a = r["throughput"], r["accuracy"]
        to_98 = f"{a['to_98']['seconds']:.1f} ({a['to_98']['epochs']} epochs)" if a["to_98"] else "not reached"
        rss = max(t["peak_rss_mb"], a["peak_rss_mb"])
        lines.append(f"| {name} | {t['examples_per_s']:,.0f} | {t['examples_per_s'] / base:.2f} | "
                     f"{t['first_epoch_s']:.2f} | {to_98} | {rss:,.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx_dir", default=os.environ.get("MNIST_DNN_IDX_DIR"))
    parser.add_argument("--data_dir", default=os.path.join("/tmp", "mnist_dnn_bench_tfds"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_epochs", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/speed.json")
    parser.add_argument("--worker", choices=RUNNERS)
    parser.add_argument("--task", choices=("throughput", "accuracy"))
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
