"""LiteRT exports, the serving_bytes signature, image decoding limits, REST request bodies, version checks.

Fast tests build small models in-process with random weights; the accuracy comparisons on the
10,000 real test images (three models trained on the real MNIST) are marked slow.
"""

import base64
import concurrent.futures
import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from PIL import Image

from conftest import ROOT, assert_one_line_error, call_tool, run_cli, synthetic_split
from mnist_dnn.lib.core import checkpoints, data, export_dir, exporting, images, models
from mnist_dnn.lib.serve import classifier
from mnist_dnn.lib.trainer import training
from mnist_dnn.lib.errors import DataError, Error, UsageError

needs_litert = pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None,
                                  reason='needs the litert extra: pip install -e ".[litert]"')


def tiny_images(tiny_data, count=200) -> tuple[np.ndarray, np.ndarray]:
    test = data.load_splits(tiny_data)["test"]
    return test.images.numpy()[:count].reshape(-1, 28, 28, 1), test.labels.numpy()[:count]


@pytest.fixture(scope="module")
def dense_exports(tiny_data, tmp_path_factory):
    """A dense model with random weights, its float and int8 LiteRT files and its SavedModel."""
    folder = tmp_path_factory.mktemp("dense_exports")
    model = models.create_model(models.make_config("dense"), seed=3)
    representative = exporting.representative_images(data.load_splits(tiny_data)["train"].images, count=30)
    return {
        "model": model,
        "float": exporting.export_litert(model, str(folder / "litert")),
        "int8": exporting.export_litert(model, str(folder / "litert"), quantize="int8", representative=representative),
        "saved_model": exporting.export_model(model, str(folder / "saved_model")),
    }


def expected_probabilities(model, pixels: np.ndarray) -> np.ndarray:
    return tf.nn.softmax(model(data.to_float(pixels.reshape(-1, data.NUM_PIXELS)), training=False)).numpy()


# --- LiteRT --------------------------------------------------------------------------------


@needs_litert
def test_litert_exports_go_into_numbered_versions(dense_exports):
    litert_dir = os.path.dirname(os.path.dirname(dense_exports["float"]))
    assert dense_exports["float"] == os.path.join(litert_dir, "1", "model.tflite")
    assert dense_exports["int8"] == os.path.join(litert_dir, "2", "model_int8.tflite")
    assert sorted(os.listdir(litert_dir)) == ["1", "2"]
    assert export_dir.resolve_model(litert_dir) == dense_exports["int8"]  # the highest version


@needs_litert
def test_litert_float_gives_the_models_outputs(dense_exports, tiny_data):
    pixels, _ = tiny_images(tiny_data)
    outputs = classifier.LiteRTModel(dense_exports["float"])(pixels)
    expected = expected_probabilities(dense_exports["model"], pixels)
    assert outputs["probabilities"].dtype == np.float32 and outputs["classes"].dtype == np.int64
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(outputs["classes"], expected.argmax(axis=1))


@needs_litert
def test_litert_int8_is_full_integer_with_raw_pixels_in(dense_exports, tiny_data):
    from ai_edge_litert import schema_py_generated as schema

    with open(dense_exports["int8"], "rb") as f:
        flatbuffer = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(f.read(), 0))
    graph = flatbuffer.subgraphs[0]
    layers = [op for op in graph.operators
              if flatbuffer.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.FULLY_CONNECTED]
    assert len(layers) == 3  # 784-60-30-10
    for op in layers:
        assert [graph.tensors[i].type for i in op.inputs[:2]] == [schema.TensorType.INT8] * 2
    model = classifier.LiteRTModel(dense_exports["int8"])
    scale, zero_point = model.runner.get_input_details()["images"]["quantization"]
    assert (scale, zero_point) == (np.float32(1 / 255), 0)  # the uint8 input is the raw pixel value
    pixels, _ = tiny_images(tiny_data)
    outputs = model(pixels)
    expected = expected_probabilities(dense_exports["model"], pixels)
    assert outputs["probabilities"].dtype == np.float32 and outputs["classes"].dtype == np.int64
    np.testing.assert_allclose(outputs["probabilities"], expected, rtol=0, atol=0.05)
    assert (outputs["classes"] == expected.argmax(axis=1)).mean() >= 0.9


@needs_litert
def test_litert_int8_input_is_raw_pixels_whatever_the_calibration_images(tmp_path):
    model = models.create_model(models.make_config("logistic"), seed=1)
    gray = np.random.default_rng(0).integers(10, 200, (20, 28, 28, 1)).astype(np.uint8)  # neither black nor white
    path = exporting.export_litert(model, str(tmp_path), quantize="int8", representative=gray)
    assert classifier.LiteRTModel(path).runner.get_input_details()["images"]["quantization"] == (np.float32(1 / 255), 0)


def test_litert_int8_file_is_under_30_percent_of_float(dense_exports):
    assert os.path.getsize(dense_exports["int8"]) <= 0.30 * os.path.getsize(dense_exports["float"])


def test_representative_images_are_distinct_training_images():
    train = tf.constant(np.random.default_rng(0).integers(0, 256, (50, 784)), tf.uint8)
    chosen = exporting.representative_images(train, count=20, seed=1)
    assert chosen.shape == (20, 28, 28, 1) and chosen.dtype == np.uint8
    rows = {tuple(image.ravel()) for image in chosen}
    assert len(rows) == 20 and rows <= {tuple(row) for row in train.numpy()}


@needs_litert
@pytest.mark.parametrize("contents", [b"", b"not a flatbuffer at all", "truncated"])
def test_a_bad_tflite_file_is_a_usage_error(dense_exports, tmp_path, contents):
    if contents == "truncated":
        with open(dense_exports["float"], "rb") as f:
            contents = f.read()[:5000]
    path = tmp_path / "bad.tflite"
    path.write_bytes(contents)
    with pytest.raises(UsageError, match="is not a LiteRT model of mnist_dnn") as raised:
        classifier.Classifier(str(path))
    assert "\n" not in str(raised.value)


def test_a_missing_litert_extra_says_how_to_install_it(dense_exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    with pytest.raises(UsageError, match=r'pip install -e "\.\[litert\]"'):
        classifier.Classifier(dense_exports["float"])


def test_a_failed_litert_export_leaves_no_version_behind(tmp_path, monkeypatch):
    model = models.create_model(models.make_config("logistic"))
    monkeypatch.setattr(exporting, "convert", lambda *args: b"half a model")
    real_makedirs = os.makedirs

    def crash_after_the_folder(path, *args, **kwargs):
        real_makedirs(path, *args, **kwargs)
        if ".tmp-" in str(path):
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "makedirs", crash_after_the_folder)
    with pytest.raises(Error, match="No space left on device; nothing was left behind") as caught:  # one line
        exporting.export_litert(model, str(tmp_path / "exports"))
    assert caught.value.exit_code == 1  # a data or disk error, not a usage error
    assert os.listdir(tmp_path) == []  # not even the export folder it created


# --- Versions and export folders ------------------------------------------------------------


def test_a_model_folder_never_mixes_saved_models_and_litert_files(dense_exports):
    litert_dir = os.path.dirname(os.path.dirname(dense_exports["float"]))
    saved_model_dir = os.path.dirname(dense_exports["saved_model"])
    with pytest.raises(UsageError, match="holds litert versions"):
        export_dir.version_path(litert_dir)
    with pytest.raises(UsageError, match="holds saved_model versions"):
        export_dir.version_path(saved_model_dir, export_format="litert")
    assert export_dir.version_path(litert_dir, export_format="litert").endswith(os.sep + "3")


def test_a_litert_export_is_found_in_a_folder_whose_name_is_a_glob_pattern(tmp_path):
    folder = tmp_path / "exports[1]"
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.tflite").write_bytes(b"checked when loaded")
    assert export_dir.resolve_model(str(folder)) == str(folder / "1" / "model.tflite")
    assert export_dir.exported_model(str(folder)) == "LiteRT versions 1"
    with pytest.raises(UsageError, match="holds litert versions"):
        export_dir.version_path(str(folder))


def test_export_dirs_under_a_file_or_a_dangling_link_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    for folder, fragment in ((tmp_path / "file", "is a file, not a folder"),
                             (tmp_path / "file" / "exports" / "mnist", f"is under a file (at {tmp_path / 'file'})"),
                             (tmp_path / "dangling", "symbolic link to the missing"),
                             (tmp_path / "dangling" / "mnist", "symbolic link to the missing")):
        with pytest.raises(UsageError, match=re.escape(fragment)):
            export_dir.version_path(str(folder))
    assert sorted(os.listdir(tmp_path)) == ["dangling", "file"]


def test_versions_beyond_64_bits_are_refused(tmp_path):
    assert export_dir.version_path(str(tmp_path), 2**63 - 1).endswith(str(2**63 - 1))
    for version in (2**63, 10**20):
        with pytest.raises(UsageError, match="at most 9223372036854775807"):
            export_dir.version_path(str(tmp_path), version)


# --- Images ---------------------------------------------------------------------------------


def encoded(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, fmt)
    return buffer.getvalue()


def test_image_size_reads_every_formats_header():
    gray = np.zeros((37, 23), np.uint8)
    for fmt in ("PNG", "JPEG", "GIF", "BMP"):
        height, width = images.image_size(tf.constant(encoded(gray, fmt)))
        assert (int(height), int(width)) == (37, 23), fmt
    top_down = bytearray(encoded(gray, "BMP"))
    top_down[22:26] = struct.pack("<i", -37)  # a negative height: rows stored top-down
    assert [int(v) for v in images.image_size(tf.constant(bytes(top_down)))] == [37, 23]
    for not_an_image in (b"", b"BM", b"hello world"):
        assert [int(v) for v in images.image_size(tf.constant(not_an_image))] == [0, 0]


def huge_png(height: int, width: int | None = None) -> bytes:
    """A valid black grayscale PNG of height x width pixels, compressed 1,000 rows at a time."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    width = width or height
    compressor, rows = zlib.compressobj(1), bytes(width + 1) * 1000  # each row: filter byte 0, then the pixels
    pixels = b"".join(compressor.compress(rows[:(width + 1) * min(1000, height - start)])
                      for start in range(0, height, 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_an_image_over_the_size_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(huge_png(4097, 4096))  # one row over the limit (20000x20000: through the CLI, slow tier)
    inflate, idat = zlib.decompressobj(), path.read_bytes()[41:-16]  # after the signature and IHDR, before its CRC and IEND
    assert len(inflate.decompress(idat)) == 4097 * 4097 and inflate.eof  # a whole image, 4097 rows of 1 + 4096 bytes
    with pytest.raises(DataError, match=r"4096x4097 pixels is too large: at most 16,777,216 pixels \(4096x4096\)"):
        classifier.read_image_file(str(path)).pixels
    with pytest.raises(tf.errors.InvalidArgumentError, match="image too large"):  # serving_bytes' graph too
        images.decode_digit(tf.constant(path.read_bytes()))
    classifier.check_image(huge_png(4096)[:33])  # the limit itself passes (its header is all that is read)


def digit_files(pixels: np.ndarray) -> dict[str, bytes]:
    """One MNIST digit [28, 28, 1] as PNG, JPEG, inverted PNG and RGBA PNG (dark digit, transparent background)."""
    gray = pixels[..., 0]
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = gray  # black ink, as opaque as the digit is bright
    return {"png": encoded(gray, "PNG"), "jpeg": encoded(gray, "JPEG"), "inverted.png": encoded(255 - gray, "PNG"),
            "rgba.png": encoded(rgba, "PNG", "RGBA")}


def test_serving_bytes_gives_the_classes_of_predicts_pixels(dense_exports, tiny_data, tmp_path):
    loaded = tf.saved_model.load(dense_exports["saved_model"])
    assert set(loaded.signatures) == {"serving_default", "predict_flat", "serving_bytes"}
    pixels, _ = tiny_images(tiny_data, 4)
    contents, read = [], []
    for index, image in enumerate(pixels):
        for name, encoded_file in digit_files(image).items():
            (tmp_path / f"{index}.{name}").write_bytes(encoded_file)
            contents.append(encoded_file)
            read.append(classifier.read_image_file(str(tmp_path / f"{index}.{name}")).pixels)
            if name != "jpeg":
                np.testing.assert_array_equal(read[-1], image, err_msg=name)  # lossless: MNIST's pixels exactly
    by_bytes = loaded.signatures["serving_bytes"](image_bytes=tf.constant(contents))
    by_pixels = loaded.signatures["serving_default"](images=tf.constant(np.stack(read)))
    np.testing.assert_array_equal(by_bytes["classes"].numpy(), by_pixels["classes"].numpy())
    np.testing.assert_array_equal(by_bytes["probabilities"].numpy(), by_pixels["probabilities"].numpy())


# --- Predictions and REST request bodies ------------------------------------------------------


def test_prediction_takes_the_models_class_and_the_best_other():
    p = np.array([0.1, 0.4, 0.0, 0.4, 0.1], np.float32)  # a tie, as quantized probabilities can have
    prediction = classifier.Prediction.from_outputs(1, p)
    assert (prediction.digit, prediction.runner_up) == (1, 3)
    assert prediction.probability == prediction.runner_up_probability == pytest.approx(0.4)
    assert prediction.probabilities == tuple(float(v) for v in p)


def test_rest_request_bodies_hold_the_files_bytes_or_pixels(tiny_data, tmp_path):
    pixels, _ = tiny_images(tiny_data, 2)
    files = []
    for index, image in enumerate(pixels):
        (tmp_path / f"{index}.png").write_bytes(digit_files(image)["inverted.png"])
        files.append(classifier.read_image_file(str(tmp_path / f"{index}.png")))
    as_bytes = json.loads(classifier.rest_request("serving_bytes", files))
    assert as_bytes["signature_name"] == "serving_bytes"
    assert [base64.b64decode(instance["b64"]) for instance in as_bytes["instances"]] == [f.contents for f in files]
    as_pixels = json.loads(classifier.rest_request("serving_default", files))
    assert as_pixels["signature_name"] == "serving_default"
    np.testing.assert_array_equal(np.array(as_pixels["instances"], np.uint8), pixels)  # inverted back
    with pytest.raises(UsageError, match="`rest_signature` must be"):
        classifier.rest_request("predict_flat", files)


# --- Trained on the real MNIST -------------------------------------------------------------


TRAINING = {"raw": ("sgd", 0.5, 2000), "dense": ("adam", 0.002, 2000), "logistic": ("sgd", 0.5, 2000),
            "cnn": ("adam", 0.001, 400), "lenet5": ("adam", 0.002, 2000)}  # the cnn: 400 steps, about 98.5%
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")  # ships with TensorFlow


def run_concurrently(calls) -> list[subprocess.CompletedProcess]:
    """Runs independent CLI calls two at a time (each spends seconds importing TensorFlow)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda call: run_cli(*call, env_extra=QUIET, cwd=ROOT), calls))


def train_and_export(name: str, real_data, folder) -> dict:
    """A model trained on the real MNIST, exported as a SavedModel (by train) and both LiteRT files."""
    optimizer, learning_rate, steps = TRAINING[name]
    config = training.TrainConfig(
        model=models.make_config(name), data=real_data, optimizer=optimizer, learning_rate=learning_rate,
        max_steps=steps, log_every=steps, eval_every=steps, checkpoint_every=steps,
        ckpt_dir=str(folder / "ckpt"), log_dir=str(folder / "logs"), export_dir=str(folder / "saved_model"),
    )
    result = training.train(config)
    splits = data.load_splits(real_data)
    restored, _, _, _ = checkpoints.restore_model(config.ckpt_dir)
    return {
        "folder": folder, "ckpt_dir": config.ckpt_dir, "saved_model": result.export_path,
        "float": exporting.export_litert(restored, str(folder / "litert")),
        "int8": exporting.export_litert(restored, str(folder / "litert"), quantize="int8",
                                        representative=exporting.representative_images(splits["train"].images)),
        "pixels": splits["test"].images.numpy().reshape(-1, 28, 28, 1), "labels": splits["test"].labels.numpy(),
    }


@pytest.fixture(scope="module")
def trained(real_data, tmp_path_factory):
    """trained(name): the model `name` trained and exported once for the module."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = train_and_export(name, real_data, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.mark.slow
@needs_litert
@pytest.mark.parametrize("name", models.MODELS)
def test_litert_scores_the_test_set_as_the_saved_model_does(trained, name):
    run = trained(name)
    pixels, labels = run["pixels"], run["labels"]
    saved = classifier.Classifier(run["saved_model"]).model(pixels)["classes"]
    float_classes = classifier.LiteRTModel(run["float"])(pixels)["classes"]
    int8_classes = classifier.LiteRTModel(run["int8"])(pixels)["classes"]

    saved_accuracy = (saved == labels).mean()
    assert saved_accuracy > {"logistic": 0.90}.get(name, 0.95)
    assert (float_classes != saved).sum() <= 2
    assert abs((int8_classes == labels).mean() - (float_classes == labels).mean()) <= 0.003
    # logistic: 7.9 KB of int8 weights beside about 2.5 KB of fixed flatbuffer structure (see docs/serving.md)
    # logistic: see docs/serving.md, Size (its fixed structure outweighs 30% of so small a file)
    assert os.path.getsize(run["int8"]) <= {"logistic": 0.33}.get(name, 0.30) * os.path.getsize(run["float"])


@pytest.mark.slow
def test_onnx_scores_the_test_set_as_the_saved_model_does(trained, capsys):
    """Issue 36: onnxruntime and the SavedModel on the 10,000 test images, the cnn (the most ops to convert)."""
    run = trained("cnn")
    restored, _, _, _ = checkpoints.restore_model(run["ckpt_dir"])
    path = exporting.export_onnx(restored, str(run["folder"] / "onnx"))
    saved = classifier.Classifier(run["saved_model"]).model(run["pixels"])
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])  # as a user would, not our reader
    classes, probabilities = session.run(["classes", "probabilities"], {"images": run["pixels"]})
    same_class = (classes == saved["classes"]).mean()
    largest_difference = np.abs(probabilities - saved["probabilities"]).max()
    with capsys.disabled():  # the figures docs/serving.md quotes
        print(f"\nONNX vs SavedModel, cnn, {len(classes):,} test images: {(classes != saved['classes']).sum()} classes "
              f"differ, largest probability difference {largest_difference:.1e}")
    assert (saved["classes"] == run["labels"]).mean() > 0.95
    assert same_class >= 0.999 and largest_difference <= 1e-4


# --- Through the command line, and in a process that does not import mnist_dnn --------------

# Feeds the files, and the REST bodies decoded as TensorFlow Serving decodes them, to the SavedModel.
FOREIGN_CLIENT = textwrap.dedent("""
    import base64, json, sys
    import numpy as np
    import tensorflow as tf

    model_dir, bytes_body, pixels_body, *files = sys.argv[1:]
    signatures = tf.saved_model.load(model_dir).signatures
    contents = [open(path, "rb").read() for path in files]
    results = {"files": signatures["serving_bytes"](image_bytes=tf.constant(contents))["classes"].numpy().tolist()}
    body = json.load(open(bytes_body))
    decoded = [base64.b64decode(instance["b64"]) for instance in body["instances"]]  # {"b64": ...}: a binary string
    results["bytes_body"] = signatures[body["signature_name"]](image_bytes=tf.constant(decoded))["classes"].numpy().tolist()
    body = json.load(open(pixels_body))
    pixels = tf.constant(np.array(body["instances"], np.uint8))
    results["pixels_body"] = signatures[body["signature_name"]](images=pixels)["classes"].numpy().tolist()
    results["mnist_dnn_imported"] = "mnist_dnn" in sys.modules
    print(json.dumps(results))
""")


def confident_digits(run, count=6) -> list[int]:
    """Indices of test images of `count` different digits that the SavedModel classifies with > 99%."""
    probabilities = classifier.Classifier(run["saved_model"]).model(run["pixels"][:500])["probabilities"]
    chosen = {}
    for index in np.flatnonzero(probabilities.max(axis=1) > 0.99):
        chosen.setdefault(int(probabilities[index].argmax()), int(index))
    return list(chosen.values())[:count]


def json_lines(result) -> list[dict]:
    assert result.returncode == 0, result.stderr[-2000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
@needs_litert
def test_predict_serving_bytes_and_rest_bodies_agree_in_a_foreign_process(trained, tmp_path):
    run = trained("dense")
    files, expected = [], []
    chosen = confident_digits(run)
    classes = classifier.Classifier(run["saved_model"]).model(run["pixels"][chosen])["classes"]
    for index, digit in zip(chosen, classes):
        for name, contents in digit_files(run["pixels"][index]).items():
            files.append(str(tmp_path / f"{index}.{name}"))
            (tmp_path / f"{index}.{name}").write_bytes(contents)
            expected.append(int(digit))
    bytes_body, pixels_body = str(tmp_path / "bytes.json"), str(tmp_path / "pixels.json")
    calls = [("predict", "--json", f"--model_dir={os.path.dirname(run['saved_model'])}", *files),
             ("predict", "--json", f"--model_dir={run['float']}", *files),
             ("predict", f"--rest_request={bytes_body}", *files),
             ("predict", f"--rest_request={pixels_body}", "--rest_signature=serving_default", *files)]
    saved, lite, wrote_bytes, wrote_pixels = run_concurrently(calls)
    saved, lite = json_lines(saved), json_lines(lite)
    for result in (wrote_bytes, wrote_pixels):
        assert result.returncode == 0 and "curl -d @" in result.stdout, result.stderr[-2000:]
    assert [line["file"] for line in saved] == files
    assert all(set(line) == {"file", "class", "probabilities", "confident"} for line in saved)
    assert all(line["confident"] == (max(line["probabilities"]) >= 0.5) for line in saved)
    predicted = [line["class"] for line in saved]
    assert predicted == expected  # PNG, JPEG, inverted, RGBA: each the class of the MNIST digit
    assert [line["class"] for line in lite] == predicted

    script = tmp_path / "client.py"
    script.write_text(FOREIGN_CLIENT)
    client = subprocess.run([sys.executable, str(script), run["saved_model"], bytes_body, pixels_body, *files],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **QUIET}, timeout=300)
    assert client.returncode == 0, client.stderr[-3000:]
    results = json.loads(client.stdout.splitlines()[-1])
    assert results["mnist_dnn_imported"] is False
    assert results["files"] == results["bytes_body"] == results["pixels_body"] == predicted


@pytest.mark.slow
def test_saved_model_cli_runs_serving_bytes(trained, tmp_path):
    run = trained("dense")
    index = confident_digits(run, 1)[0]
    files = digit_files(run["pixels"][index])
    np.save(tmp_path / "files.npy", np.array(list(files.values()), dtype=object))
    ran = subprocess.run([SAVED_MODEL_CLI, "run", "--dir", run["saved_model"], "--tag_set", "serve",
                          "--signature_def", "serving_bytes", "--inputs", f"image_bytes={tmp_path / 'files.npy'}",
                          "--outdir", str(tmp_path / "out")],
                         capture_output=True, text=True, env={**os.environ, **QUIET}, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    expected = classifier.Classifier(run["saved_model"]).model(run["pixels"][index:index + 1])["classes"][0]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "classes.npy"), [expected] * len(files))


@pytest.mark.slow
def test_predict_marks_answers_below_min_confidence(trained, tmp_path):
    run = trained("dense")
    files = []
    for index in range(12):
        files.append(str(tmp_path / f"{index}.png"))
        (tmp_path / f"{index}.png").write_bytes(digit_files(run["pixels"][index])["png"])
    (tmp_path / "blank.png").write_bytes(encoded(np.zeros((28, 28), np.uint8), "PNG"))  # no digit: a weak answer
    files.append(str(tmp_path / "blank.png"))
    best = sorted(max(line["probabilities"]) for line in json_lines(
        run_cli("predict", "--json", f"--model_dir={run['saved_model']}", *files, env_extra=QUIET, cwd=ROOT)))
    threshold = (best[0] + best[-1]) / 2
    shown = run_cli("predict", f"--min_confidence={threshold}", f"--model_dir={run['saved_model']}", *files,
                    env_extra=QUIET, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr[-2000:]
    marked = 0
    for line in shown.stdout.splitlines():
        probability = float(re.search(r": \d \((\d+\.\d)%\)", line).group(1)) / 100
        uncertain = line.endswith(f", uncertain (below {100 * threshold:g}%)")
        marked += uncertain
        if abs(probability - threshold) > 0.001:  # printed to 0.1%
            assert uncertain == (probability < threshold), line
    assert 0 < marked < len(files)


@pytest.mark.slow
@needs_litert
def test_export_cli_writes_litert_files_and_bad_input_is_one_line(trained, real_data, tmp_path):
    run = trained("dense")
    truncated, text, huge, digit = (tmp_path / name for name in ("truncated.tflite", "text.tflite", "huge.png", "digit.png"))
    truncated.write_bytes(open(run["float"], "rb").read()[:4000])
    text.write_text("not a model")
    huge.write_bytes(huge_png(20000))
    digit.write_bytes(digit_files(run["pixels"][0])["png"])
    exports = tmp_path / "exports"
    export = ("export", f"--ckpt_dir={run['ckpt_dir']}", f"--data_dir={real_data.data_dir}")
    results = run_concurrently([
        (*export, "--format=litert", "--quantize=int8", f"--export_dir={exports}"),
        ("predict", f"--model_dir={truncated}", str(digit)),
        ("predict", f"--model_dir={text}", str(digit)),
        ("predict", f"--model_dir={run['float']}", str(huge), str(digit)),
        (*export, "--format=litert", f"--export_dir={os.path.dirname(run['saved_model'])}"),
    ])
    assert results[0].returncode == 0, results[0].stderr[-2000:]
    written = str(exports / "1" / "model_int8.tflite")
    assert written in results[0].stdout and os.listdir(exports) == ["1"]
    np.testing.assert_array_equal(classifier.LiteRTModel(written)(run["pixels"])["classes"],
                                  classifier.LiteRTModel(run["int8"])(run["pixels"])["classes"])
    for result, path in ((results[1], truncated), (results[2], text)):
        assert_one_line_error(result, 2, f"{path} is not a LiteRT model of mnist_dnn")
    assert_one_line_error(results[3], 1, f"{huge}: image of 20000x20000 pixels is too large")
    assert results[3].stdout.startswith(f"{digit}: ")
    assert_one_line_error(results[4], 2, "holds saved_model versions")


# --- The SavedModel's contract, seen from a program that does not import mnist_dnn (issue 27, item 4) ----

CONTRACT_CLIENT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    saved_model, tflite, pixels = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
    loaded = tf.saved_model.load(saved_model)
    flat = pixels.reshape(len(pixels), -1).astype(np.float32) / 255

    def call(signature, images):
        try:
            return {"probabilities": loaded.signatures[signature](images=tf.constant(images))["probabilities"].numpy().tolist()}
        except tf.errors.InvalidArgumentError as e:
            return {"error": e.message}

    def spoiled(value):
        images = flat.copy()
        images[1, 100] = value
        return images

    answers = {"images": call("serving_default", pixels), "half_images": call("serving_default", pixels[:, :14]),
               "flat": call("predict_flat", flat), "flat_783": call("predict_flat", flat[:, :783])}
    answers.update({name: call("predict_flat", spoiled(value))
                    for name, value in (("nan", np.nan), ("inf", np.inf), ("below_0", -0.001), ("above_1", 1.001))})
    if tflite:
        from ai_edge_litert.interpreter import Interpreter
        runner = Interpreter(model_path=tflite).get_signature_runner("serving_default")
        answers["litert"] = {"probabilities": runner(images=pixels)["probabilities"].tolist()}
        try:
            answers["litert_half_images"] = {"probabilities": runner(images=pixels[:, :14].copy())["probabilities"].tolist()}
        except (RuntimeError, ValueError) as e:
            answers["litert_half_images"] = {"error": str(e)}
    answers["mnist_dnn_imported"] = any(name.startswith("mnist_dnn") for name in sys.modules)
    print(json.dumps(answers))
""")


def numpy_probabilities(model, pixels: np.ndarray) -> np.ndarray:
    """The dense model's answer computed in float64 numpy from its weights: relu layers, then softmax."""
    x = pixels.reshape(len(pixels), -1).astype(np.float64) / 255
    weights = model.get_weights()
    for i in range(0, len(weights), 2):
        x = x @ weights[i] + weights[i + 1]
        if i + 2 < len(weights):
            x = np.maximum(x, 0)
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


@pytest.mark.slow
def test_the_saved_model_enforces_its_shapes_and_pixel_range_in_a_foreign_process(tmp_path):
    """[2, 14, 28, 1] gave one answer for two images, NaN pixels a near-uniform one: both are errors now."""
    model = models.create_model(models.make_config("dense", hidden_units=(16,)), seed=5)
    rng = np.random.default_rng(5)
    model.set_weights([w + rng.normal(0, 0.1, w.shape).astype(np.float32) for w in model.get_weights()])  # biases too
    saved_model = exporting.export_model(model, str(tmp_path / "exports"))
    tflite = exporting.export_litert(model, str(tmp_path / "litert")) if importlib.util.find_spec("ai_edge_litert") else ""
    pixels = rng.integers(0, 256, (2, 28, 28, 1)).astype(np.uint8)
    pixels[0, 0, 0], pixels[1, 0, 0] = 0, 255  # both ends of the range
    np.save(tmp_path / "pixels.npy", pixels)
    (tmp_path / "client.py").write_text(CONTRACT_CLIENT)
    client = subprocess.run([sys.executable, str(tmp_path / "client.py"), saved_model, tflite, str(tmp_path / "pixels.npy")],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **QUIET}, timeout=300)
    assert client.returncode == 0, client.stderr[-3000:]
    answers = json.loads(client.stdout.splitlines()[-1])
    assert answers.pop("mnist_dnn_imported") is False
    expected = numpy_probabilities(model, pixels)
    for name in ("images", "flat") + (("litert",) if tflite else ()):
        np.testing.assert_allclose(answers[name]["probabilities"], expected, atol=1e-5, err_msg=name)
    assert "[2,14,28,1] is not compatible with expected shape [?,28,28,1]" in answers["half_images"]["error"]
    assert "[2,783] is not compatible with expected shape [?,784]" in answers["flat_783"]["error"]
    for name in ("nan", "inf", "below_0", "above_1"):
        assert exporting.INVALID_PIXELS in answers[name]["error"], answers[name]
    if tflite:  # the converter drops the shape check; the reshape by the batch size still refuses this one
        assert "num_input_elements != num_output_elements" in answers["litert_half_images"]["error"]


# issue 27 (Quiet): the int8 export and a LiteRT prediction print nothing on stderr at the default log level.
@pytest.mark.slow
@needs_litert
def test_int8_export_and_litert_predict_leave_stderr_empty(tiny_run, tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)  # the default
    exported = run_cli("export", f"--ckpt_dir={tiny_run[0] / 'ckpt'}", f"--export_dir={tmp_path / 'litert'}",
                       "--format=litert", "--quantize=int8", f"--data_dir={tiny_data.data_dir}", cwd=ROOT)
    assert exported.returncode == 0 and exported.stderr == "", exported.stderr  # no `fully_quantize: 0, ...`
    digit = tmp_path / "digit.png"
    digit.write_bytes(tf.io.encode_png(np.zeros((28, 28, 1), np.uint8)).numpy())
    predicted = run_cli("predict", f"--model_dir={tmp_path / 'litert'}", str(digit), cwd=ROOT)
    assert predicted.returncode == 0 and predicted.stderr == "", predicted.stderr  # no `INFO: Created ... XNNPACK`
    assert predicted.stdout.startswith(f"{digit}: ")


# --- A few test digits as PNG files (issue 36, item 5) ------------------------------------------


def test_predict_writes_the_first_test_digits_as_png_files(tiny_data, tmp_path):
    result = call_tool("predict", f"--write_test_digits={tmp_path / 'digits'}", "--digits=3",
                       f"--data_dir={tiny_data.data_dir}")
    assert result.returncode == 0, result.stderr
    images, labels = synthetic_split(500, seed=2)  # the tiny data's test split, as conftest wrote its IDX files
    lines = result.stdout.splitlines()
    assert sorted(os.listdir(tmp_path / "digits")) == ["test-0.png", "test-1.png", "test-2.png"]
    found = []
    for i, line in enumerate(lines):  # in TFDS's order of the split, which is not the IDX files'
        path = tmp_path / "digits" / f"test-{i}.png"
        written = tf.io.decode_png(tf.io.read_file(str(path))).numpy()
        assert written.shape == (28, 28, 1)
        found.append(next(j for j in range(len(images)) if np.array_equal(images[j], written[:, :, 0])))
        assert line == f"Wrote {path}: a {labels[found[-1]]}"
    assert len(lines) == len(set(found)) == 3


@pytest.mark.slow
def test_writing_test_digits_prints_no_line_of_tensorflow(real_data, tmp_path):
    """The README's one-liner (tfds.load and tf.io.write_file) printed TensorFlow's C++ lines, `failed call to
    cuInit` among them; predict --write_test_digits starts as quietly as every tool."""
    written = run_cli("predict", f"--write_test_digits={tmp_path}", "--digits=2", f"--data_dir={real_data.data_dir}",
                      cwd=ROOT)
    assert written.returncode == 0 and written.stderr == "", written.stderr
    assert written.stdout.count("Wrote ") == 2
    classified = run_cli("predict", f"--rest_request={tmp_path / 'r.json'}", str(tmp_path / "test-0.png"), cwd=ROOT)
    assert classified.returncode == 0, classified.stderr  # a file predict reads
