"""Time to 99.0% MNIST test accuracy, whole command, for cnn_fast and the well-known convnet examples.

    pip install -r benchmarks/requirements.txt      # PyTorch (CPU build) and JAX (with optax)
    python benchmarks/cnn_time_to_99.py --idx_dir=../shared/data/mnist [--rows=keras_example,...]

One fresh process per row, the rows taking turns --rounds times (default 1). A row's time runs
from just before its process is started (interpreter start-up, imports and data loading included)
to the end of the first epoch after which the accuracy on the 10,000 test images is >= 99.0%;
that worker then stops. The test evaluation after every epoch is part of the command's work and
counts in the time (its seconds are also reported apart). An epoch cap (--max_epochs, default 15) and a per-row timeout (--timeout) bound a row.
Rows 2-5 read the IDX files of --idx_dir with numpy in the worker and train on all 60,000 training
images, as their examples do; seeds are 0 (the PyTorch example's own default seed is 1). Each peer
runs its own published settings:
- mnist_dnn_cnn_fast: `python -m mnist_dnn.train --preset=cnn_fast` (cnn 16-32 filters, dense 128,
  dropout 0.25, Adam 3e-3 cosine-decayed to 0 over 4 epochs of batch 128), on the project's own
  pipeline (55,000 train, 5,000 validation). It trains a fixed 4 epochs, not "until 99%", so its row is
  the whole train command's wall time and the test accuracy of its final checkpoint, measured
  afterwards by `python -m mnist_dnn.evaluate` (reported apart, not added);
- keras_example: keras.io/examples/vision/mnist_convnet: conv 32 3x3 relu, max-pool 2, conv 64 3x3
  relu, max-pool 2, flatten, dropout 0.5, dense 10 softmax; Adam 1e-3, batch 128, categorical
  cross-entropy, validation_split=0.1 (so 54,000 train), 15 epochs; `fit` one epoch at a time, then
  `evaluate` on the test set (its default batch 32, as the example calls it);
- pytorch_example: pytorch/examples mnist/main.py: conv 32 3x3 relu, conv 64 3x3 relu, max-pool 2,
  dropout 0.25, dense 128 relu, dropout 0.5, dense 10, log_softmax + nll_loss; Adadelta lr 1.0,
  StepLR(step_size=1, gamma=0.7), batch 64, test batch 1000, inputs normalized (0.1307, 0.3081),
  shuffled every epoch, 14 epochs; eager. The example's DataLoader (a PIL transform per image) is not
  reproduced: batches are sliced from tensors normalized once, which only helps the peer;
- pytorch_example_compile: the same with the model under torch.compile (not in the example);
- flax_example_in_jax: flax examples/mnist (linen CNN) in plain JAX + optax, as Flax is not installed:
  conv 32 3x3 SAME relu, avg-pool 2x2/2, conv 64 3x3 SAME relu, avg-pool 2x2/2, dense 256 relu,
  dense 10 (lecun-normal kernels, zero biases, as Flax's defaults); SGD momentum 0.9, lr 0.1, batch
  128 (468 steps an epoch, the remainder dropped, as the example), images scaled to [0, 1], 10
  epochs. One jitted call per training step, as the example does: measured on this 2-core AMD EPYC,
  about 0.08 s a step, against 2.0-2.4 s a step for jit over lax.scan of 10-20 steps (XLA's CPU
  convolutions inside a loop). The test set is scored in batches of 1000 (the example: in one call).
"""

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import harness

ROOT = harness.ROOT
ROWS = ("mnist_dnn_cnn_fast", "keras_example", "pytorch_example", "pytorch_example_compile", "flax_example_in_jax")
TARGET = 0.99
IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
SETTINGS = {
    "mnist_dnn_cnn_fast": "python -m mnist_dnn.train --preset=cnn_fast: cnn 16-32 filters, dense 128, dropout 0.25, "
                          "Adam 3e-3 cosine to 0, batch 128, 4 epochs (1720 steps), 55,000 train / 5,000 validation",
    "keras_example": "keras mnist_convnet: conv32-pool-conv64-pool-dropout 0.5-dense10 softmax, Adam 1e-3, batch 128, "
                     "categorical cross-entropy, validation_split 0.1, 15 epochs",
    "pytorch_example": "pytorch examples/mnist: conv32-conv64-maxpool-dropout 0.25-fc128-dropout 0.5-fc10, "
                       "log_softmax + nll, Adadelta lr 1.0, StepLR gamma 0.7, batch 64, normalized, 14 epochs; eager",
    "pytorch_example_compile": "as pytorch_example, model under torch.compile",
    "flax_example_in_jax": "flax examples/mnist in JAX+optax: conv32 SAME-avgpool-conv64 SAME-avgpool-dense256-"
                           "dense10, SGD momentum 0.9 lr 0.1, batch 128, [0,1] scaling, 10 epochs",
}
JAX_REPORT_STEPS = 50


def emit(**fields):
    print(json.dumps(fields), flush=True)


def read_idx(idx_dir, name):
    """One IDX file (gzip'd or raw) as a uint8 array of its shape.

    Not mnist_dnn's data.read_idx_split: that module imports TensorFlow, whose import would count
    in the PyTorch and JAX rows' time (and load it into their processes).
    """
    path = os.path.join(idx_dir, name)
    opener = gzip.open if os.path.exists(path + ".gz") else open
    with opener(path + ".gz" if opener is gzip.open else path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = np.frombuffer(raw, ">u4", count=dims, offset=4)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def missing_idx(idx_dir):
    if not idx_dir:
        return list(IDX_FILES.values())
    return [n for n in IDX_FILES.values()
            if not any(os.path.exists(os.path.join(idx_dir, n + ext)) for ext in ("", ".gz"))]


def load_mnist(idx_dir, subset):
    d = {key: read_idx(idx_dir, name) for key, name in IDX_FILES.items()}
    if subset:
        d["train_images"], d["train_labels"] = d["train_images"][:subset], d["train_labels"][:subset]
    return d


def epochs_loop(max_epochs, started, train_epoch, test_accuracy):
    """Train epoch by epoch until the test accuracy reaches TARGET, emitting one JSON line an epoch."""
    for epoch in range(1, max_epochs + 1):
        t = time.perf_counter()
        train_epoch(epoch)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        accuracy = float(test_accuracy())
        eval_s = time.perf_counter() - t
        emit(epoch=epoch, test_accuracy=accuracy, elapsed_s=time.time() - started, train_s=train_s, eval_s=eval_s)
        if accuracy >= TARGET:
            return


def keras_worker(data, max_epochs, started):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    keras.utils.set_random_seed(0)
    x = np.expand_dims(data["train_images"].astype("float32") / 255, -1)
    y = keras.utils.to_categorical(data["train_labels"], 10)
    x_test = np.expand_dims(data["test_images"].astype("float32") / 255, -1)
    y_test = keras.utils.to_categorical(data["test_labels"], 10)
    model = keras.Sequential([
        keras.Input(shape=(28, 28, 1)),
        keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        keras.layers.MaxPooling2D(pool_size=(2, 2)),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

    def train_epoch(epoch):
        model.fit(x, y, batch_size=128, epochs=epoch, initial_epoch=epoch - 1, validation_split=0.1, verbose=0)

    epochs_loop(max_epochs, started, train_epoch, lambda: model.evaluate(x_test, y_test, verbose=0)[1])
    return model, x_test


def torch_worker(data, max_epochs, started, compiled):
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(1, 32, 3, 1)
            self.conv2 = torch.nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = torch.nn.Dropout(0.25)
            self.dropout2 = torch.nn.Dropout(0.5)
            self.fc1 = torch.nn.Linear(9216, 128)
            self.fc2 = torch.nn.Linear(128, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
            x = torch.flatten(self.dropout1(x), 1)
            x = self.fc2(self.dropout2(F.relu(self.fc1(x))))
            return F.log_softmax(x, dim=1)

    def tensors(images, labels):
        x = torch.from_numpy((images.astype(np.float32) / 255 - 0.1307) / 0.3081).unsqueeze(1)
        return x, torch.from_numpy(labels.astype(np.int64))

    x, y = tensors(data["train_images"], data["train_labels"])
    x_test, y_test = tensors(data["test_images"], data["test_labels"])
    net = Net()
    model = torch.compile(net) if compiled else net
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)

    def train_epoch(epoch):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            optimizer.zero_grad()
            F.nll_loss(model(x[idx]), y[idx]).backward()
            optimizer.step()
        scheduler.step()

    def test_accuracy():
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x_test[i:i + 1000]).argmax(1) == y_test[i:i + 1000]).sum())
                          for i in range(0, len(x_test), 1000))
        return correct / len(x_test)

    epochs_loop(max_epochs, started, train_epoch, test_accuracy)
    return model, x_test


def jax_worker(data, max_epochs, started):
    import jax
    import jax.numpy as jnp
    import optax
    init = jax.nn.initializers.lecun_normal()
    keys = jax.random.split(jax.random.key(0), 5)
    shapes = {"c1": (3, 3, 1, 32), "c2": (3, 3, 32, 64), "d1": (7 * 7 * 64, 256), "d2": (256, 10)}
    params = {name: (init(k, shape), jnp.zeros(shape[-1])) for k, (name, shape) in zip(keys, shapes.items())}
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.init(params)
    x = jnp.asarray(data["train_images"][..., None].astype(np.float32) / 255)
    y = jnp.asarray(data["train_labels"].astype(np.int32))
    x_test = jnp.asarray(data["test_images"][..., None].astype(np.float32) / 255)
    y_test = np.asarray(data["test_labels"])

    def apply(p, v):
        for name in ("c1", "c2"):
            v = jax.lax.conv_general_dilated(v, p[name][0], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            v = jax.nn.relu(v + p[name][1])
            v = jax.lax.reduce_window(v, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
        v = jax.nn.relu(v.reshape(len(v), -1) @ p["d1"][0] + p["d1"][1])
        return v @ p["d2"][0] + p["d2"][1]

    def loss_fn(p, xb, yb):
        return optax.softmax_cross_entropy(apply(p, xb), jax.nn.one_hot(yb, 10)).mean()

    @jax.jit
    def train_step(p, opt, x, y, idx):  # x and y as arguments: not constants baked into the program
        grads = jax.grad(loss_fn)(p, x[idx], y[idx])
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt

    predict = jax.jit(lambda p, v: apply(p, v).argmax(-1))
    state = {"params": params, "opt": opt_state, "steps": 0, "rng": jax.random.key(0)}
    steps_per_epoch = len(x) // 128

    def train_epoch(epoch):
        state["rng"], sub = jax.random.split(state["rng"])
        batches = jax.random.permutation(sub, len(x))[:steps_per_epoch * 128].reshape(steps_per_epoch, 128)
        for idx in batches:
            state["params"], state["opt"] = train_step(state["params"], state["opt"], x, y, idx)
            state["steps"] += 1
            if state["steps"] % JAX_REPORT_STEPS == 0:  # so that a timed-out row says how far it got
                jax.block_until_ready(state["params"])
                emit(steps=state["steps"], elapsed_s=time.time() - started)
        jax.block_until_ready(state["params"])

    def test_accuracy():
        batches = [x_test[i:i + 1000] for i in range(0, len(x_test), 1000)]
        return (np.concatenate([predict(state["params"], v) for v in batches]) == y_test).mean()

    epochs_loop(max_epochs, started, train_epoch, test_accuracy)
    return (lambda v: apply(state["params"], v)), x_test


def worker(args):
    """Runs one peer; its model and test inputs are returned for checks that import this file."""
    started = args.started or time.time()
    data = load_mnist(args.idx_dir, args.subset)
    emit(data_loaded_s=time.time() - started, train_examples=len(data["train_labels"]))
    if args.worker == "keras_example":
        return keras_worker(data, args.max_epochs, started)
    if args.worker == "flax_example_in_jax":
        return jax_worker(data, args.max_epochs, started)
    return torch_worker(data, args.max_epochs, started, args.worker == "pytorch_example_compile")


def json_lines(text):
    return [json.loads(line) for line in (text or "").splitlines() if line.startswith("{")]


def summarize(lines, max_epochs):
    """A worker's row from its JSON lines: time and epoch of reaching TARGET, accuracies, seconds."""
    epochs = [line for line in lines if "epoch" in line]
    reached = next((e for e in epochs if e["test_accuracy"] >= TARGET), None)
    steps = [line["steps"] for line in lines if "steps" in line]
    return {"seconds_to_99": reached["elapsed_s"] if reached else None,
            "epoch_reached": reached["epoch"] if reached else None,
            "test_accuracy_per_epoch": [e["test_accuracy"] for e in epochs],
            "train_s_per_epoch": [e["train_s"] for e in epochs], "eval_s_per_epoch": [e["eval_s"] for e in epochs],
            "elapsed_s_per_epoch": [e["elapsed_s"] for e in epochs],
            "data_loaded_s": next((line["data_loaded_s"] for line in lines if "data_loaded_s" in line), None),
            "steps_run": steps[-1] if steps else None, "epochs_run": len(epochs), "max_epochs": max_epochs}


def last_line(done):
    return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"


def run_peer(name, args):
    command = [sys.executable, __file__, f"--worker={name}", f"--idx_dir={args.idx_dir}",
               f"--max_epochs={args.max_epochs}", f"--subset={args.subset}"]
    started = time.time()
    try:
        done = harness.call(command + [f"--started={started!r}"], args.timeout)
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout
        return {**summarize(json_lines(stdout), args.max_epochs), "timed_out_after_s": args.timeout}
    row = summarize(json_lines(done.stdout), args.max_epochs)
    if done.returncode:
        row["error"] = last_line(done)
    return row


def run_project(args):
    """The project's whole train command in a fresh folder, then evaluate on the test set (timed apart)."""
    folder = tempfile.mkdtemp(prefix="t99_cnn_fast_")
    data_flags = [f"--data_dir={args.data_dir}", f"--idx_dir={args.idx_dir}"]
    train = [sys.executable, "-m", "mnist_dnn.train", "--preset=cnn_fast", f"--ckpt_dir={folder}/ckpt", *data_flags,
             f"--result_file={folder}/train.json"]
    if args.subset:  # a tiny test run: as many steps as --subset images make, small convs, no XLA compiling
        steps = max(1, args.subset // 128)
        train += [f"--max_steps={steps}", f"--eval_every={steps}", f"--checkpoint_every={steps}", "--conv_filters=4,8",
                  f"--log_dir={folder}/logs", "--nodiagnostics", "--nojit_compile"]  # not into the checkout's logs/
    try:
        train_s, _ = harness.run(train, args.timeout)
        evaluate_s, _ = harness.run([sys.executable, "-m", "mnist_dnn.evaluate", f"--ckpt_dir={folder}/ckpt",
                                     f"--metrics_file={folder}/eval.json", *data_flags], args.timeout)
        with open(f"{folder}/eval.json") as f:
            accuracy = json.load(f)["test"]["accuracy"]
        with open(f"{folder}/train.json") as f:
            result = json.load(f)
    except harness.Failed as e:
        return {"error": str(e.code).strip().splitlines()[-1]}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    epochs = round(result["step"] / 430, 2)  # 430 steps of 128 an epoch of its 55,000 training images
    reached = accuracy >= TARGET
    return {"seconds_to_99": train_s if reached else None, "epoch_reached": epochs if reached else None,
            "epochs_run": epochs, "test_accuracy_per_epoch": [accuracy], "train_command_s": train_s,
            "evaluate_command_s": evaluate_s, "final_test_accuracy": accuracy,
            "validation_accuracy": (result.get("validation") or {}).get("accuracy"),
            "examples_per_s": result.get("examples_per_second"), "steps": result.get("step")}


def outcome(r):
    if r.get("seconds_to_99") is not None:
        return f"{r['seconds_to_99']:.0f}"
    if "timed_out_after_s" in r:
        steps = f", {r['steps_run']} steps" if r.get("steps_run") else ""
        return f"timed out after {r['timed_out_after_s']} s ({r.get('epochs_run', 0)} epochs{steps})"
    if "error" in r:
        return f"failed: {r['error'][:80]}"
    return f"not reached in {r['epochs_run']} epochs"


def mean(values):
    return f"{sum(values) / len(values):.1f}" if values else ""


def table(rows) -> str:
    lines = ["| row | s to 99.0% | epoch | test accuracy per epoch | train s / epoch | test eval s / epoch "
             "| load (1 min) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rounds in rows.items():
        for r in rounds:
            accuracies = ", ".join(f"{a:.2%}" for a in r.get("test_accuracy_per_epoch", []))
            train = r.get("train_s_per_epoch") or []
            evals = r.get("eval_s_per_epoch") or []
            if name == "mnist_dnn_cnn_fast" and r.get("examples_per_s"):
                train = [55000 / r["examples_per_s"]]
                accuracies += f" (evaluate command {r['evaluate_command_s']:.0f} s, not added)"
            load = "-".join(f"{v:.1f}" for v in r["load_average_1min"])
            lines.append(f"| {name} | {outcome(r)} | {r.get('epoch_reached') or ''} | {accuracies} | {mean(train)} "
                         f"| {mean(evals)} | {load} |")
    return "\n".join(lines)


def one_row(name, args) -> dict:
    load_before = os.getloadavg()[0]
    row = run_project(args) if name == "mnist_dnn_cnn_fast" else run_peer(name, args)
    return {"settings": SETTINGS[name], **row, "load_average_1min": [load_before, os.getloadavg()[0]]}


def main():
    parser = harness.parser(__doc__, "cnn_time_to_99.json")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ",".join(ROWS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max_epochs", type=int, default=15, help="epoch cap of the peers (cnn_fast trains its 4)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds for one row")
    parser.add_argument("--subset", type=int, default=0,
                        help="tests only: train on the first N training images (cnn_fast: N/128 steps); 0: all")
    parser.add_argument("--worker", choices=ROWS[1:])
    parser.add_argument("--started", type=float, default=None, help="(worker) the parent's time.time() at launch")
    args = harness.parse(parser, smoke={"max_epochs": 1, "subset": 256})
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    missing = missing_idx(args.idx_dir)
    if missing:
        sys.exit(f"error: MNIST IDX files missing in --idx_dir={args.idx_dir} (or $MNIST_DNN_IDX_DIR): "
                 f"{', '.join(missing)} (.gz or plain)")
    if args.worker:
        return worker(args)
    args.idx_dir = os.path.abspath(args.idx_dir)
    bench = harness.Benchmark("cnn_time_to_99", args)
    needs = {"pytorch_example": "torch", "pytorch_example_compile": "torch", "flax_example_in_jax": "jax"}
    rows = harness.installed(args.rows.split(","), needs)
    results = harness.interleaved({name: lambda n=name: one_row(n, args) for name in rows}, args.rounds)
    summary = {name: {"seconds_to_99": harness.spread(r["seconds_to_99"] for r in rounds if r.get("seconds_to_99"))
                      if any(r.get("seconds_to_99") for r in rounds) else None,
                      "reached_rounds": f"{sum(bool(r.get('seconds_to_99')) for r in rounds)}/{len(rounds)}"}
               for name, rounds in results.items()}
    bench.write({"summary": summary, "rows": results}, table(results))


if __name__ == "__main__":
    harness.main(main)
