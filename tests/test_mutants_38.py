"""Fast tests for the realistic bugs of issue 38's own mutation round (tests/README.md has the table): the oneDNN
choice, the file checks, the worker shutdown, the Python API and the ONNX export. Each checks against known values,
numpy, or what the kernel or the file system reports, not against the function under test."""

import errno
import os
import signal
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import mnist_dnn
from conftest import ROOT
from mnist_dnn import api
from mnist_dnn.cli import app as cli, startup
from mnist_dnn.lib import files, onednn, processes
from mnist_dnn.lib.core import exporting, models
from mnist_dnn.lib.errors import Error, UsageError
from mnist_dnn.lib.experiments import trials
from mnist_dnn.lib.serve import classifier

X86 = "x86_64"


# --- the oneDNN choice ----------------------------------------------------------------------------


@pytest.mark.parametrize("flags", [{"avx2"}, {"fma"}, {"avx", "fma"}])
def test_auto_needs_both_avx2_and_fma(flags):
    assert onednn.wanted("auto", flags, X86) is None


def test_an_explicit_choice_replaces_a_value_already_in_the_environment():
    environ = {onednn.ENV: "1"}
    onednn.choose("off", environ)
    assert environ == {onednn.ENV: "0"}
    onednn.choose("on", environ)
    assert environ == {onednn.ENV: "1"}


@pytest.mark.parametrize("argv, expected", [
    (["--onednn=on", "--onednn", "off"], "off"), (["--onednn", "off", "--onednn=on"], "on"),
    (["--max_steps=3"], None), (["--onednn"], ""), (["onednn=on"], None)])
def test_the_last_onednn_flag_on_the_command_line_counts(argv, expected):
    assert startup._flag_value(argv, ("onednn",)) == expected


class _Chosen(Exception):
    pass


def _record_choice(choice, environ=None):
    raise _Chosen(choice)


@pytest.mark.parametrize("argv, expected", [(["train", "--onednn=yes"], "auto"), (["train", "--onednn=off"], "off"),
                                            (["train"], "auto")])
def test_the_start_up_leaves_a_bad_onednn_value_to_absl(monkeypatch, argv, expected):
    """A value absl will refuse with one error line goes to `auto` here, not to a ValueError's traceback."""
    monkeypatch.delitem(sys.modules, "tensorflow")  # as before a tool imports it (the choice stops the start-up here)
    monkeypatch.setattr(onednn, "choose", _record_choice)
    with pytest.raises(_Chosen) as chosen:
        startup.quiet_tensorflow(argv, {startup.XLA_CACHE_ENV: "off"})
    assert chosen.value.args == (expected,)


@pytest.mark.parametrize("on, kernels", [(True, "oneDNN"), (False, "Eigen")])
def test_the_start_line_names_the_kernels_that_run(monkeypatch, on, kernels):
    from mnist_dnn.lib.trainer import training

    monkeypatch.setattr(onednn, "running", lambda: on)
    config = api.config(model="cnn", conv_filters=(4,), hidden_units=(8,), jit_compile=False)
    line = training.describe(config, tf.distribute.get_strategy(), 0, "logs")
    assert line.endswith(f"tf.data pipeline on {kernels} kernels; TensorBoard: logs"), line


def _philox_halves(size: int, seed) -> np.ndarray:
    """Dropout's 16-bit draws, from TensorFlow's Philox words split by numpy (two per word, in memory order)."""
    words = tf.random.stateless_uniform([(size + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32,
                                        alg="philox").numpy()
    return words.view(np.uint16)[:size]


@pytest.mark.parametrize("shape", [(3, 5), (4, 6)])  # an odd number of elements too
def test_dropout_keeps_exactly_the_draws_at_or_over_its_threshold(shape):
    seed = tf.constant([7, 11], tf.int32)
    size = int(np.prod(shape))
    halves = _philox_halves(size, seed)
    threshold = int(np.sort(halves)[size // 2])  # a rate whose threshold is one of the draws
    inputs = np.arange(1, size + 1, dtype=np.float32).reshape(shape)
    result = models.dropout(tf.constant(inputs), threshold / 2**16, seed).numpy()
    keep = (halves >= threshold).reshape(shape)
    np.testing.assert_allclose(result, np.where(keep, inputs * 2**16 / (2**16 - threshold), 0), rtol=1e-6)


# --- the file checks ------------------------------------------------------------------------------


def test_a_link_to_a_regular_file_is_a_plain_target(tmp_path):
    target = tmp_path / "result.json"
    target.write_text('{"accuracy": 1}')
    (tmp_path / "link.json").symlink_to(target)
    assert files.special_file_problem(str(tmp_path / "link.json")) is None
    files.write_text(str(tmp_path / "link.json"), "{}")  # the link is replaced by the file
    assert not (tmp_path / "link.json").is_symlink()


def test_an_output_file_over_a_fifo_is_refused_as_usage(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UsageError, match="is a FIFO, not a regular file; pass the path of a regular file"):
        cli.check_output_file("result_file", str(tmp_path / "fifo"), (("accuracy",),), overwrite=True)


def test_a_file_of_exactly_the_cap_is_read_and_a_byte_more_is_refused(tmp_path):
    path = tmp_path / "input"
    path.write_bytes(b"x" * 100)
    assert files.read_input(str(path), 100) == b"x" * 100
    with pytest.raises(OSError) as refused:
        files.read_input(str(path), 99)
    assert refused.value.errno == errno.EFBIG


def test_a_file_replaced_by_a_fifo_after_its_check_is_refused_when_opened(tmp_path, monkeypatch):
    regular = tmp_path / "regular"
    regular.write_bytes(b"12")
    os.mkfifo(tmp_path / "fifo")
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: real_stat(regular))  # the first check saw a file
    with pytest.raises(OSError) as refused:
        files.read_input(str(tmp_path / "fifo"), 100)
    assert refused.value.errno == errno.EINVAL


def test_an_interrupted_write_leaves_no_temporary_file_and_the_old_file_whole(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_with(str(path), interrupted)
    assert os.listdir(tmp_path) == ["out.json"] and path.read_text() == "old"


def test_a_failed_write_names_the_file_meant_not_its_temporary(tmp_path):
    path = str(tmp_path / "out.json")

    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device", f.name)

    with pytest.raises(OSError) as failed:
        files.write_with(path, full)
    assert failed.value.filename == path
    assert os.listdir(tmp_path) == []


def test_a_file_with_only_some_of_an_outputs_keys_is_not_replaced(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"accuracy": 0.5}')
    kinds = (("accuracy", "loss", "checkpoint"),)
    with pytest.raises(UsageError, match="exists and is not a file this tool wrote"):
        cli.check_output_file("metrics_file", str(path), kinds)
    path.write_text('{"accuracy": 0.5, "loss": 1, "checkpoint": "c"}')
    cli.check_output_file("metrics_file", str(path), kinds)


# --- the worker shutdown --------------------------------------------------------------------------


def test_a_child_asks_the_kernel_for_sigterm_when_its_parent_dies():
    probe = ("import ctypes\nfrom mnist_dnn.lib import processes\nprocesses.die_with_parent()\n"
             "value = ctypes.c_int()\nctypes.CDLL('libc.so.6').prctl(2, ctypes.byref(value))\nprint(value.value)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == signal.SIGTERM  # PR_GET_PDEATHSIG


def test_the_previous_handlers_come_back_after_an_exception():
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(RuntimeError):
        with processes.signals_to(lambda signum, frame: None, (signal.SIGUSR1,)):
            assert signal.getsignal(signal.SIGUSR1) is not before
            raise RuntimeError
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_deferred_block_ends_with_the_worker_stoppable_again():
    stop = trials.Stop(os.getppid())
    with stop.deferred(whole=True):
        assert (stop.deferring, stop.whole) == (True, True)
    assert (stop.deferring, stop.whole) == (False, False)


def test_a_signal_in_a_trial_marks_the_worker_orphaned_only_when_its_search_is_gone():
    for parent, orphaned in ((os.getppid(), False), (os.getppid() + 1_000_000, True)):
        stop = trials.Stop(parent)
        with stop.deferred():
            stop(signal.SIGTERM, None)
        assert stop.signals == [signal.SIGTERM] and (stop.orphaned is not None) is orphaned


# --- the Python API -------------------------------------------------------------------------------


def test_the_idx_dir_given_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_DNN_IDX_DIR", str(tmp_path / "env"))
    assert mnist_dnn.config(idx_dir=str(tmp_path / "given")).data.idx_folder == str(tmp_path / "given")


def test_evaluate_checks_its_settings_before_it_looks_for_a_run(tmp_path):
    with pytest.raises(Error, match="batch_size"):
        mnist_dnn.evaluate(str(tmp_path / "no_run"), batch_size=0)


def test_the_package_names_are_the_api_functions():
    for name in ("preset", "config", "train", "evaluate", "export", "load_exported", "use_onednn"):
        assert getattr(mnist_dnn, name) is getattr(api, name)


def test_export_returns_the_path_of_the_new_version(tiny_run, tmp_path):
    folder, _ = tiny_run
    path = mnist_dnn.export(str(folder / "ckpt"), str(tmp_path / "exports"), format="keras")
    assert path == str(tmp_path / "exports" / "1" / "model.keras") and os.path.isfile(path)


# --- the ONNX export ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, kernel_initializer="random_normal")])
    folder = tmp_path_factory.mktemp("onnx")
    return model, exporting.export_onnx(model, str(folder / "exports"))


def test_the_onnx_export_scales_pixels_and_takes_any_integer_batch(onnx_export):
    model, path = onnx_export
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.int64)  # not uint8: as a user may pass
    logits = images.reshape(5, 784).astype(np.float32) / 255.0 @ model.get_weights()[0] + model.get_weights()[1]
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    predictions = mnist_dnn.load_exported(path)(images)
    assert [p.digit for p in predictions] == np.argmax(logits, 1).tolist()
    np.testing.assert_allclose([p.probabilities for p in predictions], probabilities, atol=1e-5)


@pytest.mark.parametrize("name", ["model.onnx", "model.keras"])
def test_a_model_file_that_is_not_one_is_a_usage_error(tmp_path, name):
    pytest.importorskip("onnxruntime")
    (tmp_path / name).write_bytes(b"not a model at all")
    with pytest.raises(UsageError, match=f"is not an? (ONNX|Keras) model of mnist_dnn"):
        classifier.Classifier(str(tmp_path / name))


def test_each_model_file_goes_to_its_reader():
    assert classifier.file_reader("a/model.onnx") is classifier.OnnxModel
    assert classifier.file_reader("a/model.keras") is classifier.KerasFile
    assert classifier.file_reader("a/model.tflite") is classifier.LiteRTModel


def test_a_keras_file_with_damaged_zip_headers_is_a_usage_error(tmp_path):
    """A zip whose end record is whole (Keras takes it for one) but whose members' headers are not: BadZipFile."""
    with zipfile.ZipFile(tmp_path / "model.keras", "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("metadata.json", "{}")
    damaged = bytearray((tmp_path / "model.keras").read_bytes())
    damaged[:4] = b"XXXX"  # the first member's local header
    (tmp_path / "model.keras").write_bytes(bytes(damaged))
    with pytest.raises(UsageError, match="is not a Keras model of mnist_dnn"):
        classifier.Classifier(str(tmp_path / "model.keras"))
