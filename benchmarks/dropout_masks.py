"""What one dropout mask costs inside an XLA program on this CPU.

    python benchmarks/dropout_masks.py [--masks=300] [--rounds=5]

Times a compiled loop that applies `--masks` dropout masks (rate 0.2) to one [128, 512] batch,
the shape of a hidden layer of the large MLP in benchmarks/speed.py, and reports the cost per
mask (median of rounds, the variants interleaved): mnist_dnn's `models.dropout` (what its Dropout layer
draws: Threefry bits in uint32 ops), TensorFlow's `stateless_dropout` with Philox (what it used before), JAX's
`random.bernoulli` as speed.py's JAX loop draws it (if JAX is installed), and the loop without a
mask. Writes benchmarks/dropout_masks.json.
"""

import os
import sys

import harness

SHAPE, RATE = (128, 512), 0.2
JAX_ROW = "JAX random.bernoulli (speed.py's JAX loop)"


def tensorflow_loop(masks: int, apply):
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def loop(x):
        total, i = tf.zeros(SHAPE), tf.constant(0)
        while i < masks:
            total += apply(x, tf.stack([i, 7 * i + 1]))
            i += 1
        return tf.reduce_sum(total)

    x = tf.random.normal(SHAPE, seed=1)
    return lambda: float(loop(x))


def jax_loop(masks: int):
    import jax
    import jax.numpy as jnp

    @jax.jit
    def loop(x, key):
        def body(_, carry):
            total, key = carry
            key, sub = jax.random.split(key)
            return total + jnp.where(jax.random.bernoulli(sub, 1 - RATE, x.shape), x / (1 - RATE), 0), key

        return jax.lax.fori_loop(0, masks, body, (jnp.zeros_like(x), key))[0].sum()

    x = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
    return lambda: float(loop(x, jax.random.PRNGKey(0)))


def variants(masks: int) -> dict:
    import tensorflow as tf
    from mnist_dnn.lib.core import models
    found = {
        "mnist_dnn Dropout (Threefry in uint32 ops)": tensorflow_loop(masks, lambda x, s: models.dropout(x, RATE, s)),
        "TensorFlow stateless_dropout, Philox": tensorflow_loop(
            masks, lambda x, s: tf.nn.experimental.stateless_dropout(x, RATE, s, rng_alg="philox")),
        "no mask (the loop alone)": tensorflow_loop(masks, lambda x, s: x / (1 - RATE) + tf.cast(s[0], tf.float32)),
    }
    if harness.installed([JAX_ROW], {JAX_ROW: "jax"}):
        found[JAX_ROW] = jax_loop(masks)
    return found


def main():
    parser = harness.parser(__doc__, "dropout_masks.json")
    parser.add_argument("--masks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = harness.parse(parser, smoke={"masks": 3, "rounds": 1})
    bench = harness.Benchmark("dropout_masks", args)
    os.environ.setdefault("MNIST_DNN_XLA_CACHE", "off")  # each variant compiled here, not loaded
    from mnist_dnn.cli import startup
    startup.quiet_tensorflow(sys.argv)  # as the tools start TensorFlow
    runs = variants(args.masks)
    for run in runs.values():
        run()  # compile
    rounds = harness.interleaved({name: lambda run=run: harness.seconds(run) / args.masks * 1e6
                                  for name, run in runs.items()}, args.rounds)
    micros = {name: harness.spread(values) for name, values in rounds.items()}
    table = "| variant | µs per [128, 512] mask (median) |\n| --- | --- |\n" + "\n".join(
        f"| {name} | {value['median']:,.0f} |" for name, value in micros.items())
    bench.write({"shape": SHAPE, "rate": RATE, "microseconds_per_mask": micros}, table)


if __name__ == "__main__":
    harness.main(main)
