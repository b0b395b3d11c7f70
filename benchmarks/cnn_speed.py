"""Training speed of the cnn (--model=cnn) against Keras fit, JAX and PyTorch, side by side.

    pip install -r benchmarks/requirements.txt      # PyTorch (CPU build) and JAX
    python benchmarks/cnn_speed.py --idx_dir=../shared/data/mnist [--out=benchmarks/cnn_speed.json]
    python benchmarks/cnn_speed.py --filters=32,64 --out=benchmarks/cnn_speed_standard.json

The same convnet everywhere: 3x3 conv --filters[0] + ReLU, 3x3 conv --filters[1] + ReLU, 2x2 max-pool,
dropout 0.25, dense 128 + ReLU, dropout 0.25, dense 10 (16,32 is cnn_fast's former net, the issue's
reference; 32,64 the PyTorch example's), Adam 1e-3, batch 128, on the first --steps x 128 MNIST
training images; one process per run, the runs taking turns --rounds times (A B C A B C ...). Each run
trains --steps steps once to warm up (tracing and compilation), then --repeats more times (examples/s:
their median); a row's figure is the median of its rounds, with their min and max.
Each row starts from TensorFlow's default environment (TF_ENABLE_ONEDNN_OPTS removed), then sets
what its name says. Rows, mnist_dnn through its public API (the config and runner `mnist_dnn.train` uses):
- mnist_dnn: the in-memory graph loop, with the kernels the tools choose (`--onednn=auto`);
- mnist_dnn_eigen / mnist_dnn_onednn: the same with oneDNN off / on;
- mnist_dnn_bare: the same as mnist_dnn without the finiteness check and the training metrics
  (what they cost a step);
- mnist_dnn_xla: the same loop compiled by XLA (the default for the MLPs, and on a GPU; slow here);
- mnist_dnn_pipeline: the tf.data runner (--nojit_compile);
- keras_fit / keras_fit_onednn / keras_fit_xla: `fit` with steps_per_execution=50, in TensorFlow's
  default environment / with TF_ENABLE_ONEDNN_OPTS=1 / jit_compile on;
- jax_scan: jax.jit over lax.scan of the steps; jax_jit: one jitted step per call, as Flax's example
  trains (XLA's CPU convolutions inside the scan were far slower: docs/speed.md, The convnet);
- torch_eager, torch_eager_cl (channels_last), torch_compile (PyTorch 2 CPU).
FLOP bound: the multiply-adds of a training step counted as 3x the forward pass (backward for
the inputs and for the weights), against the machine's measured float32 peak of one large
convolution and one large matmul (TensorFlow: `peak` with Eigen, `peak_onednn` with oneDNN) in the same run.
"""

import statistics
import sys

import numpy as np

import harness

RUNNERS = ("mnist_dnn", "mnist_dnn_eigen", "mnist_dnn_onednn", "mnist_dnn_bare", "mnist_dnn_xla", "mnist_dnn_pipeline",
           "keras_fit", "keras_fit_onednn", "keras_fit_xla", "jax_scan", "jax_jit", "torch_eager", "torch_eager_cl",
           "torch_compile")
SLOW_ROWS = ("mnist_dnn_xla", "keras_fit_xla", "jax_scan")  # minutes of XLA compiling on a CPU: asked for by --rows
BATCH, UNITS, DROPOUT, LEARNING_RATE = 128, 128, 0.25, 1e-3
ONEDNN = {"mnist_dnn_eigen": "0", "mnist_dnn_onednn": "1", "keras_fit_onednn": "1", "peak_onednn": "1"}


def train_flops(filters) -> int:
    """3x the multiply-adds x 2 of one forward pass of one image: conv1, conv2, dense 128, dense 10."""
    f1, f2 = filters
    return 3 * 2 * (26 * 26 * f1 * 9 + 24 * 24 * f2 * 9 * f1 + 12 * 12 * f2 * UNITS + UNITS * 10)


def choose_kernels(row: str) -> None:
    """A worker's environment for `row`, before TensorFlow starts: TensorFlow's default, then the row's choice."""
    import os
    if "tensorflow" in sys.modules:  # --smoke: the rows share one process
        return
    os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if row in ONEDNN:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = ONEDNN[row]
    elif row in ("mnist_dnn", "mnist_dnn_bare"):
        import mnist_dnn
        mnist_dnn.use_onednn("auto")


def load(idx_dir, data_dir, count):
    from mnist_dnn.lib.core import data
    train = data.load_splits(data.DataConfig("mnist", data_dir, idx_dir))["train"]
    return train.images.numpy()[:count], train.labels.numpy()[:count].astype(np.int32)


def mnist_dnn_runner(images, labels, variant, filters):
    import tensorflow as tf
    from mnist_dnn.lib.core import data, models
    from mnist_dnn.lib.trainer import steps, training
    if variant == "bare":
        assert hasattr(steps, "_all_finite"), "the finiteness check moved: this row would measure it"
        steps._all_finite = lambda tensors: tf.constant(True)
        steps.TrainMetrics.update = lambda *args: None
    config = training.TrainConfig(model=models.make_config("cnn", (UNITS,), DROPOUT, filters), batch_size=BATCH,
                                  learning_rate=LEARNING_RATE, jit_compile=variant != "pipeline")
    state = training.build_state(config)
    split = data.Split(tf.constant(images), tf.constant(labels))
    if variant == "pipeline":
        runner = steps.make_runner(config, state, steps.TrainMetrics(), split)
    else:
        runner = steps.CompiledRunner(state, steps.TrainMetrics(), split, BATCH, 0, xla=variant == "xla")

    def run(num_steps):
        runner(num_steps)
        state.step.numpy()
    return run


def keras_runner(images, labels, jit, filters):
    import keras
    model = keras.Sequential([
        keras.Input((784,)), keras.layers.Reshape((28, 28, 1)), keras.layers.Conv2D(filters[0], 3, activation="relu"),
        keras.layers.Conv2D(filters[1], 3, activation="relu"), keras.layers.MaxPooling2D(), keras.layers.Dropout(DROPOUT),
        keras.layers.Flatten(), keras.layers.Dense(UNITS, activation="relu"), keras.layers.Dropout(DROPOUT),
        keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(LEARNING_RATE), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=50, jit_compile=jit)
    x = images.astype(np.float32) / 255.0
    return lambda num_steps: model.fit(x, labels, batch_size=BATCH, epochs=1, shuffle=True, verbose=0)


def jax_runner(images, labels, scan, filters):
    import jax
    import jax.numpy as jnp
    import optax
    key = jax.random.PRNGKey(0)
    f1, f2 = filters
    shapes = {"c1": (3, 3, 1, f1), "c2": (3, 3, f1, f2), "d1": (12 * 12 * f2, UNITS), "d2": (UNITS, 10)}
    params = {}
    for name, shape in shapes.items():
        key, sub = jax.random.split(key)
        fan_in, fan_out = np.prod(shape[:-1]), shape[-1] * (np.prod(shape[:2]) if len(shape) == 4 else 1)
        limit = (6 / (fan_in + fan_out)) ** 0.5
        params[name] = (jax.random.uniform(sub, shape, minval=-limit, maxval=limit), jnp.zeros(shape[-1]))
    tx = optax.adam(LEARNING_RATE)
    x, y = jnp.asarray(images.reshape(-1, 28, 28, 1)), jnp.asarray(labels)

    def dropout(v, rng):
        return jnp.where(jax.random.bernoulli(rng, 1 - DROPOUT, v.shape), v / (1 - DROPOUT), 0)

    def loss_fn(p, xb, yb, rng):
        conv = lambda v, w: jax.lax.conv_general_dilated(v, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(conv(xb, p["c1"][0]) + p["c1"][1])
        h = jax.nn.relu(conv(h, p["c2"][0]) + p["c2"][1])
        h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
        r1, r2 = jax.random.split(rng)
        h = dropout(h.reshape(len(h), -1), r1)
        h = dropout(jax.nn.relu(h @ p["d1"][0] + p["d1"][1]), r2)
        return optax.softmax_cross_entropy_with_integer_labels(h @ p["d2"][0] + p["d2"][1], yb).mean()

    def step(carry, idx):
        p, opt, rng = carry
        rng, sub = jax.random.split(rng)
        grads = jax.grad(loss_fn)(p, x[idx].astype(jnp.float32) / 255.0, y[idx], sub)
        updates, opt = tx.update(grads, opt, p)
        return (optax.apply_updates(p, updates), opt, rng), None

    order = jnp.arange(len(x)).reshape(-1, BATCH)
    run_steps = jax.jit(lambda carry: jax.lax.scan(step, carry, order)[0])
    one_step = jax.jit(lambda carry, idx: step(carry, idx)[0])
    state = {"carry": (params, tx.init(params), key)}

    def run(num_steps):
        if scan:
            state["carry"] = run_steps(state["carry"])
        else:
            for i in range(num_steps):
                state["carry"] = one_step(state["carry"], order[i])
        jax.block_until_ready(state["carry"][0])
    return run


def torch_runner(images, labels, compiled, filters, channels_last=False):
    import torch
    torch.manual_seed(0)
    f1, f2 = filters
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, f1, 3), torch.nn.ReLU(), torch.nn.Conv2d(f1, f2, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Dropout(DROPOUT), torch.nn.Flatten(), torch.nn.Linear(12 * 12 * f2, UNITS), torch.nn.ReLU(),
        torch.nn.Dropout(DROPOUT), torch.nn.Linear(UNITS, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    x = torch.from_numpy(images.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels).long()

    def step(xb, yb):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()

    step = torch.compile(step) if compiled else step

    def run(num_steps):
        model.train()
        order = torch.randperm(len(x))
        for i in range(num_steps):
            idx = order[i * BATCH:(i + 1) * BATCH]
            step(x[idx], y[idx])
    return run


def make_runner(name, images, labels, filters):
    if name.startswith("mnist_dnn"):
        variant = name[len("mnist_dnn_"):]
        return mnist_dnn_runner(images, labels, variant if variant in ("xla", "pipeline", "bare") else "graph", filters)
    if name.startswith("keras_fit"):
        return keras_runner(images, labels, name.endswith("_xla"), filters)
    if name.startswith("jax"):
        return jax_runner(images, labels, name == "jax_scan", filters)
    return torch_runner(images, labels, name == "torch_compile", filters, channels_last=name == "torch_eager_cl")


def peaks(size: int) -> dict:
    """GFLOP/s of one large float32 convolution (a batch of size/8) and one size x size matmul, median of 5."""
    import tensorflow as tf
    batch = size // 8
    x, w = tf.random.uniform([batch, 26, 26, 32]), tf.random.uniform([3, 3, 32, 64])
    a, b = tf.random.uniform([size, size]), tf.random.uniform([size, size])
    ops = {"conv": (tf.function(lambda: tf.nn.conv2d(x, w, 1, "VALID")), 2 * batch * 24 * 24 * 64 * 9 * 32),
           "matmul": (tf.function(lambda: tf.matmul(a, b)), 2 * size**3)}
    result = {}
    for name, (fn, flops) in ops.items():
        fn().numpy()
        seconds = statistics.median(harness.seconds(lambda: fn().numpy()) for _ in range(5))
        result[f"{name}_gflops"] = flops / seconds / 1e9
    return result


def measure(name, args):
    """One row in this process (a worker's)."""
    choose_kernels(name)
    if name.startswith("peak"):
        return harness.worker_line(name, peaks(args.peak_size))
    images, labels = load(args.idx_dir, args.data_dir, args.steps * BATCH)
    run = make_runner(name, images, labels, args.filters)
    first = harness.seconds(lambda: run(args.steps))
    rates = [args.steps * BATCH / harness.seconds(lambda: run(args.steps)) for _ in range(args.repeats)]
    harness.worker_line(name, {"first_run_s": first, "examples_per_s": statistics.median(rates)})


def summarize(rounds: list[dict]) -> dict:
    done = [r for r in rounds if "error" not in r]
    if not done:
        return {"error": rounds[-1]["error"], "rounds": rounds}
    return {key: harness.spread(r[key] for r in done) for key in done[0]} | {"rounds": rounds}


def table(results, filters) -> str:
    flops = train_flops(filters)
    peaks_found = {name: {key: value["median"] for key, value in results[name].items() if key != "rounds"}
                   for name in ("peak", "peak_onednn") if name in results and "error" not in results[name]}
    if not peaks_found:
        return "no peak row"
    peak = max(peaks_found.values(), key=lambda p: p["conv_gflops"])
    lines = [f"FLOP bound: {flops / 1e6:.1f} MFLOP per training example; measured peaks (GFLOP/s): "
             + "; ".join(f"{name} conv {p['conv_gflops']:.0f}, matmul {p['matmul_gflops']:.0f}"
                         for name, p in peaks_found.items()),
             "", "| run | examples/s (median) | min-max | ratio to keras_fit | ratio to keras_fit_onednn "
             "| ratio to the fastest peer | % of conv peak | first run s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    runs = {name: r for name, r in results.items() if not name.startswith("peak")}
    rate_of = {n: r["examples_per_s"]["median"] for n, r in runs.items() if "error" not in r}
    peers = [rate for n, rate in rate_of.items() if not n.startswith("mnist_dnn")]
    fastest_peer = max(peers) if peers else float("nan")
    ratio = lambda value, row: f"{value / rate_of[row]:.2f}" if row in rate_of else ""
    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:80]} | | | | |")
            continue
        rate = r["examples_per_s"]
        percent = 100 * rate["median"] * flops / (peak["conv_gflops"] * 1e9)
        lines.append(f"| {name} | {rate['median']:,.0f} | {rate['min']:,.0f}-{rate['max']:,.0f} "
                     f"| {ratio(rate['median'], 'keras_fit')} | {ratio(rate['median'], 'keras_fit_onednn')} "
                     f"| {rate['median'] / fastest_peer:.2f} | {percent:.1f}% | {r['first_run_s']['median']:.1f} |")
    return "\n".join(lines)


def main():
    parser = harness.parser(__doc__, "cnn_speed.json")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--filters", type=lambda text: tuple(int(f) for f in text.split(",")), default=(16, 32),
                        help="the two convolutions' filters (default 16,32)")
    parser.add_argument("--rows", default=",".join(("peak", "peak_onednn") + tuple(r for r in RUNNERS if r not in SLOW_ROWS)),
                        help="comma-separated (default: all but " + ", ".join(SLOW_ROWS) + ")")
    parser.add_argument("--peak_size", type=int, default=2048, help="the peak rows' matmul side (conv batch: /8)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds for one run (warm-up and repeats)")
    parser.add_argument("--worker", help="(internal) measure these rows, comma-separated")
    # --smoke: each kind of runner once (not the XLA rows: minutes of compiling), the peers if installed; small convs.
    args = harness.parse(parser, smoke={"steps": 2, "rounds": 1, "peak_size": 64, "filters": (4, 8),
                                        "rows": "peak,mnist_dnn,mnist_dnn_pipeline,keras_fit,jax_jit,torch_eager,"
                                                "mnist_dnn_bare"})
    if args.worker:
        for name in args.worker.split(","):
            measure(name, args)
        return
    bench = harness.Benchmark("cnn_speed", args)
    rows = harness.installed(args.rows.split(","), {name: name.split("_")[0] for name in RUNNERS
                                                    if name.startswith(("jax", "torch"))})
    command = [sys.executable, __file__, f"--data_dir={args.data_dir}", f"--steps={args.steps}",
               f"--repeats={args.repeats}", f"--peak_size={args.peak_size}",
               "--filters=" + ",".join(map(str, args.filters))] + ([f"--idx_dir={args.idx_dir}"] if args.idx_dir else [])
    results = {name: summarize(values)
               for name, values in harness.in_workers(command, rows, args.rounds, args.smoke, args.timeout).items()}
    bench.write(results, table(results, args.filters))

if __name__ == "__main__":
    harness.main(main)
