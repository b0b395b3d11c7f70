"""Folders written before the house moved (issue 34) still load, evaluate and resume.

tests/data/before_the_move/ was written by the code of commit a550055, the last before the
library moved into subpackages (see tests/data/README.md): a run folder of a dense 784-4-10
trained 20 steps with Adam on the real MNIST, and version 1 of its SavedModel export. The
tests read it through today's code and check what they get against the checkpoint's values
read by TensorFlow alone (`tf.train.load_checkpoint`) and a numpy forward pass.
"""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, call_tool, folder_hashes, tiny_config
from test_export import tf1_session_outputs
from mnist_dnn.lib.config import ModelConfig
from mnist_dnn.lib.core import checkpoints, data, run_dir
from mnist_dnn.lib.serve import classifier
from mnist_dnn.lib.trainer import training

OLD = ROOT / "tests" / "data" / "before_the_move"
OLD_RUN, OLD_EXPORT = OLD / "run", OLD / "exports"
STEP = 20
MODEL_KEY = "optimizer/_trainable_variables/{}/.ATTRIBUTES/VARIABLE_VALUE"  # how Keras 3 checkpoints a model's weights


@pytest.fixture(scope="module")
def untouched():
    """Fails the module's last test if any test wrote into the committed folders."""
    before = folder_hashes(OLD)
    yield
    assert folder_hashes(OLD) == before


@pytest.fixture(scope="module")
def stored():
    """The old checkpoint as TensorFlow reads it, without this package: {key: array}."""
    reader = tf.train.load_checkpoint(str(OLD_RUN / f"model.ckpt-{STEP}"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if not key.startswith("_")}


def numpy_logits(stored: dict, images: np.ndarray) -> np.ndarray:
    """The dense 784-4-10 (relu) forward pass on uint8 [N, 784] images, from the stored weights alone."""
    kernel1, bias1, kernel2, bias2 = (stored[MODEL_KEY.format(i)] for i in range(4))
    assert (kernel1.shape, bias1.shape, kernel2.shape, bias2.shape) == ((784, 4), (4,), (4, 10), (10,))
    hidden = np.maximum(images.astype(np.float32) / 255.0 @ kernel1 + bias1, 0.0)
    return hidden @ kernel2 + bias2


@pytest.fixture(scope="module")
def test_images(tiny_data):
    split = data.load_splits(tiny_data)["test"]
    return split.images.numpy(), split.labels.numpy()


def test_the_old_run_folder_is_inspected_and_evaluated_as_stored(untouched, stored, tiny_data, test_images, tmp_path):
    inspected = call_tool("inspect_checkpoint", f"--ckpt_dir={OLD_RUN}")
    assert inspected.returncode == 0, inspected.stderr
    assert f"model.ckpt-{STEP} (step {STEP})" in inspected.stdout
    assert f"{MODEL_KEY.format(0)}  [784, 4]" in inspected.stdout

    metrics = tmp_path / "metrics.json"
    evaluated = call_tool("evaluate", f"--ckpt_dir={OLD_RUN}", "--which=best", f"--data_dir={tiny_data.data_dir}",
                          f"--metrics_file={metrics}")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(metrics.read_text())
    images, labels = test_images
    expected = np.mean(numpy_logits(stored, images).argmax(axis=1) == labels)
    assert report["step"] == STEP and report["test"]["examples"] == len(labels)
    assert report["test"]["accuracy"] == pytest.approx(expected, abs=1e-9)


def test_the_old_run_resumes_from_its_stored_weights(untouched, stored, tiny_data, tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    shutil.copytree(OLD_RUN, folder)
    built, restored = [], {}
    build_state, restore_newest = training.build_state, run_dir.RunDir.restore_newest

    def observed_restore(self, checkpoint, *args, **kwargs):
        """The trainer's state as the restore left it, before the first step."""
        path = restore_newest(self, checkpoint, *args, **kwargs)
        state, = built
        restored.update(path=path, step=state.current_step(), model=[v.numpy() for v in state.model.trainable_variables],
                        slots=[v.numpy() for v in state.optimizer.variables])
        return path

    monkeypatch.setattr(training, "build_state", lambda *args: built.append(build_state(*args)) or built[-1])
    monkeypatch.setattr(run_dir.RunDir, "restore_newest", observed_restore)
    config = tiny_config(tiny_data, tmp_path, model=ModelConfig("dense", (4,)), learning_rate=0.01, batch_size=128,
                         max_steps=STEP + 10, keep_checkpoints=1)
    result = training.train(config, say=lambda line: None)

    assert restored["path"] == str(folder / f"model.ckpt-{STEP}") == result.resumed_from
    assert restored["step"] == STEP
    for i, value in enumerate(restored["model"]):
        np.testing.assert_array_equal(value, stored[MODEL_KEY.format(i)])
    slots = {key: value for key, value in stored.items() if key.startswith("optimizer/_variables/")}
    assert len(slots) == 8  # Adam's m and v of each of the 4 weights
    for key, value in slots.items():
        np.testing.assert_array_equal(restored["slots"][int(key.split("/")[2])], value)
    assert result.step == STEP + 10
    assert checkpoints.resolve_checkpoint(str(folder)) == str(folder / f"model.ckpt-{STEP + 10}")


def test_the_old_saved_model_gives_the_checkpoints_classes(untouched, stored, test_images):
    images, _ = test_images
    pixels = images[:200].reshape(-1, 28, 28, 1)
    logits = numpy_logits(stored, images[:200])
    expected = logits.argmax(axis=1)
    assert len(set(expected)) > 2  # a model that answers one class would prove little

    predictions = classifier.Classifier(str(OLD_EXPORT))(list(pixels))
    assert [p.digit for p in predictions] == expected.tolist()
    signature = tf.saved_model.load(str(OLD_EXPORT / "1")).signatures["serving_default"]
    outputs = signature(images=tf.constant(pixels))
    np.testing.assert_array_equal(outputs["classes"].numpy(), expected)
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), softmax / softmax.sum(axis=1, keepdims=True), atol=1e-5)
    np.testing.assert_array_equal(tf1_session_outputs(str(OLD_EXPORT / "1"), pixels)["classes"], expected)

    model, _, _, _ = checkpoints.restore_model(str(OLD_RUN))
    np.testing.assert_array_equal(np.argmax(model(data.to_float(images[:200])), axis=1), expected)
