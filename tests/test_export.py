"""Export to a SavedModel or a Keras model, reload it without mnist_dnn, classify image files, inspect checkpoints."""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import onnxruntime
import pytest
import tensorflow as tf

from conftest import ROOT, assert_one_line_error, call_tool, run_cli
from mnist_dnn.cli import app as cli
from mnist_dnn.lib.core import checkpoints, data, export_dir, exporting, models
from mnist_dnn.lib.serve import classifier
from mnist_dnn.lib.trainer import actions, controller, training
from mnist_dnn.lib.errors import DataError, Error, UsageError

QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")  # ships with TensorFlow

# Loads the SavedModel in a process that never imports mnist_dnn, as a server would.
STANDALONE_LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    model_dir, inputs, outputs = sys.argv[1:]
    loaded = tf.saved_model.load(model_dir)
    serve, flat = loaded.signatures["serving_default"], loaded.signatures["predict_flat"]
    images = np.load(inputs)["images"]
    results = {"classes": [], "probabilities": [], "flat_classes": [], "flat_probabilities": []}
    for start in range(0, len(images), 100):  # the batches mnist_dnn.evaluate uses
        batch = images[start:start + 100]
        served = serve(images=tf.constant(batch))
        flattened = flat(images=tf.constant(batch.reshape(-1, 784).astype(np.float32) / 255.0))
        for prefix, out in (("", served), ("flat_", flattened)):
            results[prefix + "classes"].append(out["classes"].numpy())
            results[prefix + "probabilities"].append(out["probabilities"].numpy())
    np.savez(outputs, **{k: np.concatenate(v) for k, v in results.items()})
    print("mnist_dnn imported:", "mnist_dnn" in sys.modules)
""")


def tree(folder) -> dict:
    """Every path under `folder` with its size and modification time."""
    snapshot = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.lstat(path)  # a dangling symbolic link is an entry too
            snapshot[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


# --- Trained on the real MNIST once for the module ---------------------------------------


@pytest.fixture(scope="module")
def real_run(real_data, tmp_path_factory):
    """A short real training that exports at its end, and the test split."""
    folder = tmp_path_factory.mktemp("real_run")
    config = training.TrainConfig(
        model=models.make_config("dense"), data=real_data, optimizer="adam", learning_rate=0.002,
        max_steps=300, log_every=300, eval_every=300, checkpoint_every=300,
        ckpt_dir=str(folder / "ckpt"), log_dir=str(folder / "logs"), export_dir=str(folder / "exports"),
    )
    result = training.train(config)
    test = data.load_splits(real_data)["test"]
    images = test.images.numpy().reshape(-1, 28, 28, 1)
    model, _, _, _ = checkpoints.restore_model(config.ckpt_dir)
    probabilities = tf.nn.softmax(model(data.to_float(test.images), training=False)).numpy()
    return {"folder": folder, "config": config, "result": result, "images": images,
            "labels": test.labels.numpy(), "probabilities": probabilities}


@pytest.fixture(scope="module")
def standalone_outputs(real_run):
    """Both signatures on the whole test set, computed by the standalone loader."""
    folder = real_run["folder"]
    np.savez(folder / "inputs.npz", images=real_run["images"])
    script = folder / "load_saved_model.py"
    script.write_text(STANDALONE_LOADER)
    loaded = subprocess.run(
        [sys.executable, str(script), real_run["result"].export_path, str(folder / "inputs.npz"), str(folder / "outputs.npz")],
        capture_output=True, text=True, cwd=folder, env={**os.environ, **QUIET}, timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "mnist_dnn imported: False" in loaded.stdout
    return dict(np.load(folder / "outputs.npz"))


@pytest.mark.slow
def test_training_exports_version_1_at_its_end(real_run):
    result = real_run["result"]
    assert result.step == 300 and result.stopped_by_signal is None
    assert result.export_path == os.path.join(real_run["config"].export_dir, "1")
    assert tf.saved_model.contains_saved_model(result.export_path)
    assert not [name for name in os.listdir(real_run["config"].export_dir) if name.startswith(".tmp")]


@pytest.mark.slow
def test_standalone_saved_model_scores_what_evaluate_reports(real_run, standalone_outputs, real_data):
    outputs = standalone_outputs
    assert outputs["classes"].dtype == np.int64 and outputs["classes"].shape == (10000,)
    assert outputs["probabilities"].dtype == np.float32 and outputs["probabilities"].shape == (10000, 10)

    metrics_file = real_run["folder"] / "metrics.json"
    evaluated = run_cli("evaluate", f"--ckpt_dir={real_run['config'].ckpt_dir}", f"--data_dir={real_data.data_dir}",
                        f"--metrics_file={metrics_file}", cwd=ROOT)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(metrics_file.read_text())
    accuracy = float((outputs["classes"] == real_run["labels"]).mean())
    assert accuracy == report["test"]["accuracy"]
    assert accuracy > 0.9


@pytest.mark.slow
def test_both_signatures_match_the_restored_model(real_run, standalone_outputs):
    expected = real_run["probabilities"]
    for prefix in ("", "flat_"):
        np.testing.assert_allclose(standalone_outputs[prefix + "probabilities"], expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(standalone_outputs[prefix + "classes"], expected.argmax(axis=1))


def _signature_block(shown: str, name: str) -> str:
    match = re.search(rf"signature_def\['{name}'\]:\n(.*?)Method name is", shown, re.S)
    assert match, shown
    return " ".join(match.group(1).split())


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(real_run):
    shown = subprocess.run([SAVED_MODEL_CLI, "show", "--all", "--dir", real_run["result"].export_path],
                           capture_output=True, text=True, env={**os.environ, **QUIET}, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    outputs = ("outputs['classes'] tensor_info: dtype: DT_INT64 shape: (-1)",
               "outputs['probabilities'] tensor_info: dtype: DT_FLOAT shape: (-1, 10)")
    serving = _signature_block(shown.stdout, "serving_default")
    assert "inputs['images'] tensor_info: dtype: DT_UINT8 shape: (-1, 28, 28, 1)" in serving
    flat = _signature_block(shown.stdout, "predict_flat")
    assert "inputs['images'] tensor_info: dtype: DT_FLOAT shape: (-1, 784)" in flat
    encoded = _signature_block(shown.stdout, "serving_bytes")
    assert "inputs['image_bytes'] tensor_info: dtype: DT_STRING shape: (-1)" in encoded
    for block in (serving, flat, encoded):
        assert all(output in block for output in outputs), block


@pytest.mark.slow
def test_saved_model_cli_run_serves_it_as_tensorflow_serving_would(real_run, tmp_path):
    # saved_model_cli run loads through the TF1 session loader, like TensorFlow Serving's C++
    # loader; Keras 3 variables that the SavedModel does not track fail there, not in tf.saved_model.load.
    np.save(tmp_path / "digits.npy", real_run["images"][:50])
    ran = subprocess.run([SAVED_MODEL_CLI, "run", "--dir", real_run["result"].export_path, "--tag_set", "serve",
                          "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'digits.npy'}",
                          "--outdir", str(tmp_path / "out")],
                         capture_output=True, text=True, env={**os.environ, **QUIET}, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    expected = real_run["probabilities"][:50]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "classes.npy"), expected.argmax(axis=1))
    np.testing.assert_allclose(np.load(tmp_path / "out" / "probabilities.npy"), expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_export_cli_writes_the_next_version_and_never_overwrites(real_run):
    export_dir = real_run["config"].export_dir
    args = [f"--ckpt_dir={real_run['config'].ckpt_dir}", f"--export_dir={export_dir}"]
    exported = run_cli("export", *args, cwd=ROOT)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "model.ckpt-300 (step 300)" in exported.stdout and os.path.join(export_dir, "2") in exported.stdout
    assert sorted(os.listdir(export_dir)) == ["1", "2"]

    before = tree(export_dir)
    refused = run_cli("export", *args, "--version=1", cwd=ROOT)
    assert_one_line_error(refused, 2, os.path.join(export_dir, "1"), "already exists")
    assert tree(export_dir) == before


# --- Versions, atomic writes, every model -------------------------------------------------


def test_next_version_follows_the_highest_number(tmp_path):
    assert export_dir.version_path(str(tmp_path / "none")) == str(tmp_path / "none" / "1")
    for name in ("1", "5", ".tmp-6-123", "latest", "²"):
        (tmp_path / name).mkdir()
    assert export_dir.versions(str(tmp_path)) == [1, 5]
    assert export_dir.version_path(str(tmp_path)) == str(tmp_path / "6")
    assert export_dir.version_path(str(tmp_path), 3) == str(tmp_path / "3")
    with pytest.raises(UsageError, match="already exists"):
        export_dir.version_path(str(tmp_path), 5)
    with pytest.raises(UsageError, match="positive"):
        export_dir.version_path(str(tmp_path), 0)


def replace_saved_model_save(monkeypatch, save) -> None:
    """`tf.saved_model.save`, as Keras' ExportArchive calls it, replaced by `save`.

    The archive imports `tensorflow.saved_model.experimental`, and that import (the first time)
    binds `tf.saved_model` to a second copy of the module: patch the copy the archive will call.
    """
    import tensorflow.saved_model.experimental  # noqa: F401

    monkeypatch.setattr(tf.saved_model, "save", save)


def test_a_failed_export_leaves_no_version_behind(tmp_path, monkeypatch):
    model = models.create_model(models.make_config("logistic"))

    def crash_halfway(trackable, path, **kwargs):
        os.makedirs(os.path.join(path, "variables"))
        with open(os.path.join(path, "saved_model.pb"), "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk gone")

    replace_saved_model_save(monkeypatch, crash_halfway)
    with pytest.raises(RuntimeError, match="disk gone"):
        exporting.export_model(model, str(tmp_path / "exports"))
    assert os.listdir(tmp_path / "exports") == []


@pytest.fixture(scope="module")
def raw_run(tiny_data, tmp_path_factory):
    """The raw model trained a few steps on the tiny data: a real checkpoint to inspect."""
    folder = tmp_path_factory.mktemp("raw_run")
    config = training.TrainConfig(
        model=models.make_config("raw"), data=tiny_data, optimizer="sgd", learning_rate=0.1,
        max_steps=10, log_every=10, eval_every=10, checkpoint_every=10, jit_compile=False,
        ckpt_dir=str(folder / "ckpt"), log_dir=str(folder / "logs"),
    )
    return config, training.train(config)


@pytest.mark.parametrize("name", [n if n == "dense" else pytest.param(n, marks=pytest.mark.slow) for n in models.MODELS])
def test_every_model_exports_and_reloads(tiny_data, tmp_path, name):
    model = models.create_model(models.make_config(name), seed=3)
    images = data.load_splits(tiny_data)["test"].images[:64]
    expected = tf.nn.softmax(model(data.to_float(images), training=False)).numpy()

    loaded = tf.saved_model.load(exporting.export_model(model, str(tmp_path / "exports")))
    assert set(loaded.signatures) == {"serving_default", "predict_flat", "serving_bytes"}
    served = loaded.signatures["serving_default"](images=tf.reshape(images, [-1, 28, 28, 1]))
    flat = loaded.signatures["predict_flat"](images=data.to_float(images))
    for out in (served, flat):
        np.testing.assert_allclose(out["probabilities"].numpy(), expected, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(out["classes"].numpy(), expected.argmax(axis=1))


def tf1_session_outputs(path: str, pixels: np.ndarray) -> dict:
    """`serving_default` run through the TF1 session loader, as TensorFlow Serving and `saved_model_cli run` load."""
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], path).signature_def["serving_default"]
        return session.run({name: info.name for name, info in signature.outputs.items()},
                           {signature.inputs["images"].name: pixels})


def test_the_saved_model_stores_each_weight_once_and_loads_as_tensorflow_serving_does(tiny_data, tmp_path):
    model = models.create_model(models.make_config("dense"), seed=3)
    path = exporting.export_model(model, str(tmp_path / "exports"))
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    stored = [reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert sorted((v.shape, v.tobytes()) for v in stored) == sorted((tuple(w.shape), w.numpy().tobytes()) for w in model.weights)

    images = data.load_splits(tiny_data)["test"].images[:64].numpy()
    outputs = tf1_session_outputs(path, images.reshape(-1, 28, 28, 1))
    expected = tf.nn.softmax(model(data.to_float(images), training=False)).numpy()
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(outputs["classes"], expected.argmax(axis=1))


# --- Keras' format (issue 36) --------------------------------------------------------------

# Loads model.keras files with plain keras.models.load_model in a process that never imports mnist_dnn.
KERAS_LOADER = textwrap.dedent("""
    import sys
    import keras
    import numpy as np

    images, outputs, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    pixels = np.load(images).astype(np.float32) / 255.0
    logits = {path: np.concatenate([keras.models.load_model(path)(pixels[i:i + 1000]) for i in range(0, len(pixels), 1000)])
              for path in paths}
    np.savez(outputs, *[logits[path] for path in paths])
    assert "mnist_dnn" not in sys.modules
""")


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def keras_model_config(name: str, **settings):
    return models.make_config(name, **settings, **({"hidden_units": (32, 16)} if name == "raw" else {}))


@pytest.mark.parametrize("name, dropout", [("raw", 0.0), ("cnn", 0.5)])
def test_a_keras_export_is_made_of_keras_own_layers(tiny_data, tmp_path, name, dropout):
    model = models.create_model(keras_model_config(name, dropout=dropout), seed=3)
    path = exporting.export_keras(model, str(tmp_path / "exports"))
    assert path == str(tmp_path / "exports" / "1" / "model.keras")
    assert export_dir.exported_model(str(tmp_path / "exports")) == "Keras versions 1"
    config = zipfile.ZipFile(path).read("config.json").decode()
    modules = set(re.findall(r'"module": "([^"]*)"', config))
    assert modules and all(module.split(".")[0] == "keras" for module in modules), modules
    assert "mnist_dnn" not in config

    pixels = data.to_float(data.load_splits(tiny_data)["test"].images[:64])
    np.testing.assert_allclose(keras.models.load_model(path)(pixels), model(pixels, training=False), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name, dropout", [("raw", 0.0), ("cnn", 0.5)])
def test_the_projects_own_models_save_and_load_in_keras_format(tiny_data, tmp_path, name, dropout):
    """Registered as serializable: `model.save` and `keras.models.load_model` in a process that imported them."""
    model = models.create_model(keras_model_config(name, dropout=dropout), seed=3)
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded) is type(model) and [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    pixels = data.to_float(data.load_splits(tiny_data)["test"].images[:64])
    np.testing.assert_array_equal(loaded(pixels), model(pixels))


def test_export_cli_writes_keras_versions_and_never_overwrites(tiny_run, tmp_path):
    exports = tmp_path / "exports"
    args = [f"--ckpt_dir={tiny_run[0] / 'ckpt'}", f"--export_dir={exports}", "--format=keras"]
    for version in (1, 2):
        exported = call_tool("export", *args)
        assert exported.returncode == 0, exported.stderr
        assert exported.stdout.endswith(f"to {exports / str(version) / 'model.keras'}\n") and not exported.stderr
    before = tree(exports)
    assert_one_line_error(call_tool("export", *args, "--version=1"), 2, f"{exports / '1'} already exists")
    assert_one_line_error(call_tool("export", *args[:2]), 2, f"{exports} holds keras versions")  # a SavedModel into it
    assert tree(exports) == before


def test_no_output_file_goes_into_a_keras_export(tmp_path):
    (tmp_path / "exports" / "1").mkdir(parents=True)
    (tmp_path / "exports" / "1" / "model.keras").write_bytes(b"a Keras model")
    for inside in (tmp_path / "exports" / "1" / "m.json", tmp_path / "exports" / "m.json"):
        with pytest.raises(UsageError, match="is inside an export"):
            cli.check_output_file("metrics_file", str(inside), (("step",),))


@pytest.mark.slow
def test_keras_exports_score_the_test_set_as_their_checkpoints_in_a_fresh_process(real_data, tmp_path):
    """Every model, trained briefly: loaded with plain keras.models.load_model, elsewhere, the 10,000 test images."""
    expected, paths = [], []
    for name in models.MODELS:
        config = training.TrainConfig(model=keras_model_config(name, dropout=0.25 if name in ("dense", "cnn") else 0.0),
                                      data=real_data, ckpt_dir=str(tmp_path / name), log_dir=str(tmp_path / "logs" / name),
                                      max_steps=20, log_every=20, eval_every=20, checkpoint_every=20, diagnostics=False)
        training.train(config, say=lambda line: None)
        model, _, _, _ = checkpoints.restore_model(config.ckpt_dir)
        paths.append(exporting.export_keras(model, str(tmp_path / "exports" / name)))
        expected.append(model.predict_on_batch(data.to_float(data.load_splits(real_data)["test"].images)))
    images = data.load_splits(real_data)["test"].images.numpy()
    np.save(tmp_path / "images.npy", images)
    loaded = subprocess.run([sys.executable, "-I", "-c", KERAS_LOADER, str(tmp_path / "images.npy"),
                             str(tmp_path / "logits.npz"), *paths], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, **QUIET}, timeout=600)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    logits = np.load(tmp_path / "logits.npz")
    for i, (name, want) in enumerate(zip(models.MODELS, expected)):
        np.testing.assert_array_equal(logits[f"arr_{i}"].argmax(axis=1), want.argmax(axis=1), err_msg=name)
        np.testing.assert_allclose(softmax(logits[f"arr_{i}"]), softmax(want), rtol=0, atol=1e-6, err_msg=name)


# --- ONNX (issue 36) -----------------------------------------------------------------------


@pytest.mark.parametrize("name", models.MODELS)
def test_onnxruntime_answers_as_the_keras_model(tiny_data, tmp_path, name):
    """Keras' ONNX export of every model kind, run by onnxruntime itself, against numpy's softmax of the logits."""
    model = models.create_model(keras_model_config(name, dropout=0.5 if name in ("dense", "cnn") else 0.0), seed=3)
    path = exporting.export_onnx(model, str(tmp_path / "exports"))
    assert path == str(tmp_path / "exports" / "1" / "model.onnx") and os.listdir(tmp_path / "exports") == ["1"]
    assert export_dir.exported_model(str(tmp_path / "exports")) == "ONNX versions 1"
    pixels = data.load_splits(tiny_data)["test"].images.numpy()[:64].reshape(-1, 28, 28, 1)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    classes, probabilities = session.run(["classes", "probabilities"], {"images": pixels})
    expected = softmax(np.asarray(model(pixels.reshape(-1, 784).astype(np.float32) / 255.0, training=False)))
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(classes, expected.argmax(axis=1))


def test_predict_reads_onnx_and_keras_exports_as_the_saved_model(tiny_run, tiny_data, tmp_path):
    ckpt, exports = f"--ckpt_dir={tiny_run[0] / 'ckpt'}", tmp_path / "exports"
    for export_format in ("saved_model", "onnx", "onnx", "keras"):
        exported = call_tool("export", ckpt, f"--export_dir={exports / export_format}", f"--format={export_format}")
        assert exported.returncode == 0 and not exported.stderr, exported.stderr
    assert sorted(os.listdir(exports / "onnx")) == ["1", "2"] and os.listdir(exports / "onnx" / "2") == ["model.onnx"]
    before = tree(exports)
    assert_one_line_error(call_tool("export", ckpt, f"--export_dir={exports / 'onnx'}", "--format=onnx", "--version=2"),
                          2, f"{exports / 'onnx' / '2'} already exists")
    assert tree(exports) == before
    test = data.load_splits(tiny_data)["test"]
    images = []
    for i in range(3):
        images.append(tmp_path / f"{i}.png")
        images[-1].write_bytes(tf.io.encode_png(test.images[i].numpy().reshape(28, 28, 1)).numpy())
    answers = {}
    for model_dir in (exports / "saved_model", exports / "onnx", exports / "onnx" / "1" / "model.onnx", exports / "keras"):
        predicted = call_tool("predict", f"--model_dir={model_dir}", "--json", *images)
        assert predicted.returncode == 0 and not predicted.stderr, predicted.stderr
        answers[model_dir] = [json.loads(line) for line in predicted.stdout.splitlines()]
    saved_model = answers.pop(exports / "saved_model")
    for model_dir, answer in answers.items():
        assert [a["class"] for a in answer] == [a["class"] for a in saved_model], model_dir
        np.testing.assert_allclose([a["probabilities"] for a in answer], [a["probabilities"] for a in saved_model],
                                   rtol=0, atol=1e-6, err_msg=str(model_dir))


# --- Inspect ------------------------------------------------------------------------------


def test_read_variables_summarizes_every_value_as_numpy_does(tmp_path):
    state = training.build_state(training.TrainConfig(model=models.make_config("raw"), optimizer="adam"))
    state.step.assign(10)
    path = state.checkpoint.write(str(tmp_path / "model.ckpt-10"))
    step, summaries = checkpoints.read_variables(path)
    assert step == 10
    reader = tf.train.load_checkpoint(path)
    by_key = {s.key: s for s in summaries}
    assert set(by_key) == set(reader.get_variable_to_shape_map())
    w1 = by_key["model/w1/.ATTRIBUTES/VARIABLE_VALUE"]
    assert (w1.shape, w1.dtype) == ((784, 128), "float32")
    for key in ("model/w1/.ATTRIBUTES/VARIABLE_VALUE", "model/b2/.ATTRIBUTES/VARIABLE_VALUE"):
        value = reader.get_tensor(key)
        assert by_key[key].min == value.min() and by_key[key].max == value.max()
        assert by_key[key].mean == pytest.approx(float(value.mean(dtype=np.float64)), rel=1e-9, abs=1e-15)


@pytest.mark.slow
def test_inspect_cli_lists_keys_shapes_dtypes_and_ranges(raw_run):
    config, result = raw_run
    shown = run_cli("inspect_checkpoint", f"--ckpt_dir={config.ckpt_dir}", env_extra=QUIET, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"checkpoint {result.checkpoint} (step 10)" in shown.stdout
    assert '"name": "raw", "hidden_units": [128]' in shown.stdout
    reader = tf.train.load_checkpoint(result.checkpoint)
    for key, shape in (("model/w1/.ATTRIBUTES/VARIABLE_VALUE", "[784, 128]"), ("model/b1/.ATTRIBUTES/VARIABLE_VALUE", "[128]")):
        line = next(line for line in shown.stdout.splitlines() if line.startswith(key + " "))
        fields = line[len(key):].split()
        assert " ".join(fields[:-4]) == shape and fields[-4] == "float32", line
        value = reader.get_tensor(key)
        np.testing.assert_allclose([float(f) for f in fields[-3:]], [value.min(), value.mean(dtype=np.float64), value.max()],
                                   rtol=1e-5, atol=1e-12)  # printed with 6 significant digits


# --- Predict ------------------------------------------------------------------------------


def write_bmp(path, gray: np.ndarray) -> None:
    """A 24-bit BMP (TensorFlow decodes BMP but cannot encode it)."""
    height, width = gray.shape
    row_size = (3 * width + 3) // 4 * 4
    rows = b"".join(np.repeat(row, 3).tobytes().ljust(row_size, b"\0") for row in gray[::-1])
    header = b"BM" + (54 + len(rows)).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little")
    info = b"".join(v.to_bytes(4, "little", signed=True) for v in (40, width, height))
    info += (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + bytes(4) + len(rows).to_bytes(4, "little") + bytes(16)
    with open(path, "wb") as f:
        f.write(header + info + rows)


def image_variants(folder, index: int, image: np.ndarray) -> list[str]:
    """One MNIST digit [28, 28, 1] as files: as is, inverted, enlarged, in PNG, JPEG and BMP."""
    big = tf.cast(tf.round(tf.image.resize(image, [100, 100])), tf.uint8)
    files = {
        f"{index}.png": tf.io.encode_png(image),
        f"{index}-inverted.png": tf.io.encode_png(255 - image),
        f"{index}-100.png": tf.io.encode_png(big),
        f"{index}-100-inverted.jpg": tf.io.encode_jpeg(255 - big),
        f"{index}-100.jpg": tf.io.encode_jpeg(big),
    }
    for name, contents in files.items():
        tf.io.write_file(str(folder / name), contents)
    write_bmp(folder / f"{index}-inverted.bmp", 255 - image[..., 0])
    return [str(folder / name) for name in files] + [str(folder / f"{index}-inverted.bmp")]


@pytest.mark.slow
def test_read_image_gives_back_the_mnist_pixels(tmp_path, real_run):
    image = real_run["images"][0]
    for path in image_variants(tmp_path, 0, image):
        pixels = classifier.read_image_file(path).pixels
        assert pixels.shape == (28, 28, 1) and pixels.dtype == np.uint8
        if "-100" not in path and not path.endswith(".jpg"):  # lossless and full size: exact
            np.testing.assert_array_equal(pixels, image, err_msg=path)
    with pytest.raises(DataError, match="not an image"):
        (tmp_path / "notes.txt").write_text("not a digit")
        classifier.read_image_file(str(tmp_path / "notes.txt"))


@pytest.mark.slow
def test_predict_cli_classifies_files_as_the_model_classifies_the_digits(real_run, tmp_path):
    probabilities = real_run["probabilities"]
    confident = [i for i in range(len(probabilities)) if probabilities[i].max() > 0.99]
    chosen = {}
    for i in confident:  # one confident example of each of six digits
        chosen.setdefault(int(probabilities[i].argmax()), i)
        if len(chosen) == 6:
            break
    expected, files = {}, []
    for digit, index in chosen.items():
        for path in image_variants(tmp_path, index, real_run["images"][index]):
            expected[path] = digit
            files.append(path)
    (tmp_path / "notes.txt").write_text("not a digit")
    bad = [str(tmp_path / "missing.png"), str(tmp_path / "notes.txt")]

    predicted = run_cli("predict", f"--model_dir={real_run['config'].export_dir}", *files[:3], *bad, *files[3:],
                        env_extra=QUIET, cwd=ROOT)
    assert predicted.returncode == 1, predicted.stderr[-2000:]
    assert "Traceback" not in predicted.stderr
    errors = [line for line in predicted.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {bad[0]}: No such file or directory",
                      f"error: {bad[1]}: not an image TensorFlow can decode (PNG, JPEG, BMP or GIF)"]
    lines = predicted.stdout.splitlines()
    assert len(lines) == len(files)
    for path, line in zip(files, lines):
        match = re.fullmatch(rf"{re.escape(path)}: (\d) \((\d+\.\d)%\), next best (\d) \((\d+\.\d)%\)", line)
        assert match, line
        assert int(match.group(1)) == expected[path], line
        assert float(match.group(2)) >= float(match.group(4))


# --- Bad input through the CLI ------------------------------------------------------------


def run_concurrently(calls) -> list[subprocess.CompletedProcess]:
    """Runs independent CLI calls two at a time (each spends seconds importing TensorFlow)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda call: run_cli(*call, cwd=ROOT), calls))


@pytest.mark.slow
def test_bad_input_is_a_one_line_error_that_touches_nothing(tmp_path, raw_run):
    missing, empty, exports, digit = tmp_path / "missing", tmp_path / "empty", tmp_path / "exports", tmp_path / "digit.png"
    empty.mkdir()
    (tmp_path / "file").write_text("not a folder")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    ckpt = f"--ckpt_dir={raw_run[0].ckpt_dir}"
    digit.write_bytes(tf.io.encode_png(np.zeros((28, 28, 1), np.uint8)).numpy())
    cases = [
        # Both share checkpoints.latest_checkpoint: one of its two failures each.
        (("export", f"--ckpt_dir={missing}", f"--export_dir={exports}"), 1, "does not exist"),
        (("inspect_checkpoint", f"--ckpt_dir={empty}"), 1, "holds no checkpoint"),
        (("predict", f"--model_dir={empty}"), 2, "no image files given"),
        (("predict", f"--model_dir={empty}", str(digit)), 2, "neither a SavedModel, a .tflite, .keras or .onnx file nor a folder of numbered versions"),
        (("export", ckpt, f"--export_dir={tmp_path / 'file' / 'exports'}"), 2, f"is under a file (at {tmp_path / 'file'})"),
        (("export", ckpt, f"--export_dir={tmp_path / 'dangling'}"), 2, "is a symbolic link to the missing"),
        (("export", ckpt, f"--export_dir={exports}", f"--version={10**20}"), 2, "--version must be a positive integer of at most"),
        (("export", ckpt, f"--export_dir={exports}", "--quantize=int8"), 2, "--quantize applies to --format=litert only"),
    ]
    before = tree(tmp_path)
    for (call, exit_code, fragment), result in zip(cases, run_concurrently([call for call, _, _ in cases])):
        assert_one_line_error(result, exit_code, fragment)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("how", ["completed", "early stop", "signal"])
def test_the_end_of_run_export_writes_one_version_unless_a_signal_stopped_the_run(how, tmp_path):
    model = models.create_model(models.make_config("logistic"))
    at = {"step": 0, "stopped": False}

    def runner(num_steps):  # a stop (early stopping, or a signal) comes at step 4 unless the run completes
        at["step"] += num_steps
        at["stopped"] = how != "completed" and at["step"] >= 4

    export = actions.EndOfRunExport(model, str(tmp_path / "exports"), lambda: how == "signal", say=lambda line: None)
    step = controller.run(runner, lambda: at["step"], 10, 4, [controller.Action(10, export, at_stop=True)],
                          lambda: at["stopped"])
    assert step == (10 if how == "completed" else 4)
    if how == "signal":
        assert export.path is None and not (tmp_path / "exports").exists()
        return
    assert export.path == str(tmp_path / "exports" / "1")
    export(step)  # once only, however often it is called
    assert os.listdir(tmp_path / "exports") == ["1"]


# issue 27: a full disk, and the leftovers of a killed export.
def test_an_export_onto_a_full_disk_is_one_error_and_leaves_no_export_folder(tmp_path, monkeypatch):
    """TensorFlow's file writes raise its own ResourceExhaustedError, not OSError (the real disk: test_faults.py)."""
    model = models.create_model(models.make_config("logistic"))

    def disk_full(trackable, path, **kwargs):
        os.makedirs(path)
        raise tf.errors.ResourceExhaustedError(None, None, f"{path}/saved_model.pb.tmp1; No space left on device")

    replace_saved_model_save(monkeypatch, disk_full)
    with pytest.raises(Error, match=r"cannot write the export .*/exports/1: No space left on device; nothing was left"):
        exporting.export_model(model, str(tmp_path / "exports"))
    assert os.listdir(tmp_path) == []


def test_an_export_removes_the_hidden_folders_of_killed_exports_and_nothing_else(tmp_path):
    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    exports = tmp_path / "exports"
    kept = [exports / "1", exports / f".tmp-4-{os.getpid()}", exports / ".tmp-notours", exports / "7-x"]
    for folder in (*kept, exports / f".tmp-3-{gone}"):
        folder.mkdir(parents=True)
        (folder / "saved_model.pb").write_bytes(b"x")
    (exports / f".tmp-5-{gone}").write_bytes(b"a file, not an export's folder")
    exporting.export_model(models.create_model(models.make_config("logistic")), str(exports))
    assert sorted(os.listdir(exports)) == sorted([".tmp-4-%d" % os.getpid(), ".tmp-5-%d" % gone, ".tmp-notours",
                                                  "1", "2", "7-x"])
    assert all((folder / "saved_model.pb").read_bytes() == b"x" for folder in kept)
