"""The step body and its two runners: the same batches, the same weights, the same NaN rule."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mnist_dnn.lib.core import data
from mnist_dnn.lib.trainer import batches, steps, training
from mnist_dnn.lib.config import ModelConfig, TrainConfig
from conftest import synthetic_split


@pytest.fixture(scope="module")
def split() -> data.Split:
    images, labels = synthetic_split(300, seed=5)  # batches of 64: four full and one of 44 per epoch
    return data.Split(tf.constant(images.reshape(-1, 784)), tf.constant(labels.astype(np.int32)))


def config(**overrides):
    settings = dict(model=ModelConfig("dense", (16,)), optimizer="sgd", learning_rate=0.1, batch_size=64)
    return TrainConfig(**{**settings, **overrides})


def train(split, num_calls, **overrides):
    cfg = config(**overrides)
    state = training.build_state(cfg)
    runner = steps.make_runner(cfg, state, steps.TrainMetrics(), split)
    for num_steps in num_calls:
        runner(num_steps)
    return state, runner


CALLS = (1, 7, 3, 9, 2)  # 22 steps of five-step epochs: four epoch ends with their padded last batches


@pytest.fixture(scope="module")
def compiled(split):
    """The default (XLA-compiled) runner after CALLS: one compilation for the tests that read it."""
    return train(split, CALLS)


@pytest.fixture(scope="module")
def pipeline(split):
    """The tf.data runner after CALLS."""
    return train(split, CALLS, jit_compile=False)


def assert_same_weights(a, b, atol=1e-6):
    assert int(a.step) == int(b.step) == sum(CALLS)
    for x, y in zip(a.model.weights, b.model.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-4, atol=atol)


def test_the_compiled_runner_trains_as_the_pipeline_runner_does(compiled, pipeline):
    assert_same_weights(compiled[0], pipeline[0])


@pytest.mark.slow
def test_with_augmentation_the_compiled_runner_trains_as_the_pipeline_runner_does(split):
    augmentation = dict(augment_shift=2, augment_rotate=10.0, augment_scale=0.1)
    # XLA may fuse the bilinear sums differently, so a rare pixel rounds to its neighbouring uint8 value.
    assert_same_weights(train(split, CALLS, **augmentation)[0], train(split, CALLS, **augmentation, jit_compile=False)[0],
                        atol=1e-5)


def test_one_sgd_step_on_a_padded_batch_equals_plain_gradient_descent_on_its_real_examples(split):
    """Independent check: the last batch of an epoch (44 real + 20 padding) against numpy."""
    cfg = config(model=ModelConfig("logistic"), learning_rate=0.5)
    state = training.build_state(cfg)
    runner = steps.make_runner(cfg, state, steps.TrainMetrics(), split)
    runner(4)
    w, b = (v.numpy().astype(np.float64) for v in state.model.trainable_variables)
    order = batches.epoch_order(300, 0, 0).numpy()[256:]
    x = split.images.numpy()[order].astype(np.float64) / 255.0
    y = split.labels.numpy()[order]
    expected_w, expected_b = sgd_step_by_numpy(w, b, x, y, 0.5)
    runner(1)
    new_w, new_b = (v.numpy() for v in state.model.trainable_variables)
    np.testing.assert_allclose(new_w, expected_w, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_b, expected_b, rtol=1e-4, atol=1e-6)


def shifted_by_numpy(images: np.ndarray, max_shift: int, offsets: np.ndarray) -> np.ndarray:
    """Each image [28, 28] zero-padded by max_shift and cut at its (row, column) offset, as random_shift documents."""
    padded = np.pad(images, [(0, 0), (max_shift, max_shift), (max_shift, max_shift)])
    return np.stack([p[r:r + 28, c:c + 28] for p, (r, c) in zip(padded, offsets)])


def sgd_step_by_numpy(w, b, x, y, learning_rate):
    logits = x @ w + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return w - learning_rate * x.T @ p / len(y), b - learning_rate * p.mean(0)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_either_runner_shifts_a_batch_by_its_global_step_not_its_place_in_the_epoch(split, jit_compile):
    """Step 7, the third batch of the second epoch, of a logistic regression with --augment_shift=3 against numpy:
    the batch's images moved by the offsets Philox draws for global step 7, then one step of gradient descent."""
    cfg = config(model=ModelConfig("logistic"), learning_rate=0.5, augment_shift=3, jit_compile=jit_compile)
    state = training.build_state(cfg)
    runner = steps.make_runner(cfg, state, steps.TrainMetrics(), split)
    runner(7)
    w, b = (v.numpy().astype(np.float64) for v in state.model.trainable_variables)
    order = batches.epoch_order(300, 0, 1).numpy()[128:192]
    images, y = split.images.numpy()[order].reshape(64, 28, 28), split.labels.numpy()[order]

    def expected(step):
        offsets = tf.random.stateless_uniform([64, 2], batches.shift_seed(0, step), 0, 7, tf.int32, alg="philox")
        x = shifted_by_numpy(images, 3, offsets.numpy()).reshape(64, 784).astype(np.float64) / 255.0
        return sgd_step_by_numpy(w, b, x, y, 0.5)

    runner(1)
    new_w, new_b = (v.numpy() for v in state.model.trainable_variables)
    assert np.abs(expected(2)[0] - expected(7)[0]).max() > 1e-3  # the place in the epoch would train otherwise
    np.testing.assert_allclose(new_w, expected(7)[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(new_b, expected(7)[1], rtol=1e-4, atol=1e-6)


def assert_stops_before_updating(state, runner, steps_done: int):
    before = [v.numpy().copy() for v in state.weights()]
    with pytest.raises(steps.NonFiniteLoss):
        runner(5)
    assert int(state.step) == steps_done
    for old, new in zip(before, state.weights()):
        np.testing.assert_array_equal(old, np.asarray(new))


@pytest.mark.parametrize("jit_compile", [True, False])
def test_a_non_finite_loss_stops_either_runner_before_it_updates_anything(split, jit_compile):
    """Finite weights whose logits overflow float32: the loss is NaN on any CPU and in any kernel.

    (A NaN written into a hidden layer's kernel is not: oneDNN's fused MatMul+BiasAdd+Relu, which
    the tf.data runner's graph uses on CPUs with AVX-512 VNNI or AMX, returns 0 for relu(NaN).)
    """
    cfg = config(jit_compile=jit_compile)
    state = training.build_state(cfg)
    runner = steps.make_runner(cfg, state, steps.TrainMetrics(), split)
    runner(2)
    output_kernel = state.model.trainable_variables[2]
    output_kernel.assign(tf.fill(output_kernel.shape, 3e38))  # the largest float32 is 3.4e38
    assert_stops_before_updating(state, runner, 2)


class SqrtOfWeights(keras.Model):
    """logits = x @ sqrt(kernel): a finite loss, and at the one 0 of the kernel an infinite gradient, on any CPU."""

    def __init__(self):
        super().__init__()
        one_zero = lambda shape, dtype=None: tf.tensor_scatter_nd_update(tf.fill(shape, 1e-3), [[0, 0]], [0.0])  # noqa: E731
        self.kernel = self.add_weight(shape=(data.NUM_PIXELS, data.NUM_CLASSES), initializer=one_zero)

    def call(self, inputs, training=False):
        return inputs @ tf.sqrt(self.kernel)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_a_non_finite_gradient_with_a_finite_loss_stops_either_runner_before_it_updates_anything(split, jit_compile):
    cfg = config(jit_compile=jit_compile)
    model, optimizer = SqrtOfWeights(), keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    state = training.TrainState(step, model, optimizer, tf.train.Checkpoint(step=step, model=model))
    runner = steps.make_runner(cfg, state, steps.TrainMetrics(), split)
    assert_stops_before_updating(state, runner, 0)


def test_the_compiled_loop_traces_once_over_ragged_epochs_and_varying_step_counts(compiled):
    _, runner = compiled
    assert runner.loop.experimental_get_tracing_count() == 1


def test_the_pipeline_loop_traces_once_over_varying_step_counts(pipeline):
    _, runner = pipeline
    assert runner.loop.experimental_get_tracing_count() == 1
