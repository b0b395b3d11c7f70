import numpy as np
import pytest
import tensorflow as tf

from mnist_dnn.lib.core import models, threefry
from mnist_dnn.lib.trainer import training
from mnist_dnn.lib.errors import UsageError

ALL_MODELS = [models.make_config(name) for name in models.MODELS] + [models.make_config("dense", (32,), 0.2),
                                                                    models.make_config("cnn", (16,), 0.25, (4, 8, 8)),
                                                                    models.make_config("cnn", (16,), 0.0, (4, 8), 1)]


def test_course_names_are_aliases_and_unknown_names_list_the_valid_ones():
    assert models.make_config("DNN").name == "raw"
    assert models.make_config("contrib_DNN").name == "dense"
    assert models.make_config("LogisticRegression").name == "logistic"
    with pytest.raises(UsageError, match="raw, dense, logistic, cnn, lenet5, DNN"):
        models.make_config("resnet")


def test_defaults_follow_the_course():
    assert models.make_config("raw").hidden_units == (128,)
    assert models.make_config("dense").hidden_units == (60, 30)
    raw = models.create_model(models.make_config("raw"))
    assert {v.path: tuple(v.shape) for v in raw.trainable_variables} == {
        "raw/w1": (784, 128), "raw/b1": (128,), "raw/w2": (128, 10), "raw/b2": (10,)}


@pytest.mark.parametrize("hidden, dropout, message", [
    ((0, 10), 0.0, "hidden_units must be a whole number from 1"), ((10,), 1.0, "dropout must be in"),
])
def test_bad_model_settings_are_refused(hidden, dropout, message):
    with pytest.raises(UsageError, match=message):
        models.make_config("dense", hidden, dropout)
    with pytest.raises(UsageError, match="no hidden layer"):
        models.make_config("logistic", (10,))


@pytest.mark.parametrize("config", ALL_MODELS, ids=str)
def test_models_map_float_batches_to_logits(config):
    model = models.create_model(config)
    logits = model(tf.random.uniform([5, 784]))
    assert logits.shape == (5, 10) and logits.dtype == tf.float32


@pytest.mark.parametrize("config", ALL_MODELS, ids=str)
def test_one_training_step_changes_every_weight(config):
    model = models.create_model(config)
    optimizer = training.make_optimizer("sgd", 0.1)
    before = [v.numpy().copy() for v in model.weights if v.trainable]
    assert len(before) == 2 * (len(config.conv_filters) + len(config.hidden_units) + 1)
    images = tf.random.uniform([32, 784], seed=1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(models.per_example_loss(tf.range(32) % 10, model(images, training=True)))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    after = [v.numpy() for v in model.weights if v.trainable]
    for old, new in zip(before, after):
        assert np.any(old != new), "a weight did not train"


@pytest.mark.parametrize("config", ALL_MODELS, ids=str)
def test_a_checkpoint_restores_every_weight_into_a_fresh_model(config, tmp_path):
    trained = models.create_model(config, seed=1)
    path = tf.train.Checkpoint(model=trained).write(str(tmp_path / "ckpt"))
    fresh = models.create_model(config, seed=2)
    assert any(np.any(a.numpy() != b.numpy()) for a, b in zip(trained.weights, fresh.weights))
    tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    for a, b in zip(trained.weights, fresh.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_dropout_drops_at_its_rate_keeps_the_mean_and_is_off_at_inference():
    layer = models.Dropout(0.25, seed=7)
    ones = tf.ones([200, 500])
    first, second = layer(ones, training=True).numpy(), layer(ones, training=True).numpy()
    assert abs((first == 0).mean() - 0.25) < 0.01
    np.testing.assert_allclose(np.unique(first), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(first.mean() - 1.0) < 0.02
    assert not np.array_equal(first, second)  # a new mask each call
    np.testing.assert_array_equal(layer(ones, training=False).numpy(), ones.numpy())
    compiled = tf.function(lambda x: layer(x, training=True), jit_compile=True)
    assert abs((compiled(ones).numpy() == 0).mean() - 0.25) < 0.01


def test_dropout_draws_16_bit_halves_of_threefry_words_inside_xla_and_of_philox_words_elsewhere():
    """Each path's mask, recomputed with numpy from its generator's raw bits."""
    seed, shape, rate = tf.constant([3, 4], tf.int32), (30, 7), 0.25
    ones = tf.ones(shape)
    words = tf.random.stateless_uniform([105], seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox")
    halves = words.numpy().view(np.uint16)[:210].reshape(shape)
    graph = tf.function(lambda x: models.dropout(x, rate, seed))(ones).numpy()
    np.testing.assert_array_equal(graph != 0, halves >= 2**14)
    threefry_halves = threefry.random_bits(tf.constant([105]), seed).numpy().view(np.uint16)[:210].reshape(shape)
    xla = tf.function(lambda x: models.dropout(x, rate, seed), jit_compile=True)(ones).numpy()
    np.testing.assert_array_equal(xla != 0, threefry_halves >= 2**14)
    np.testing.assert_allclose(graph[graph != 0], 1 / 0.75, rtol=1e-6)


def test_dropout_refuses_a_noise_shape_rather_than_ignore_it():
    with pytest.raises(ValueError, match="noise_shape"):
        models.Dropout(0.5, noise_shape=(None, 1))(tf.ones([4, 8]), training=True)
