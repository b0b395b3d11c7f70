"""Shared fixtures: tiny IDX folders written by the tests, and the real MNIST."""

import atexit
import contextlib
import dataclasses
import gzip
import hashlib
import importlib
import io
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import tempfile

# Before any module of the package is imported: the import probe of test_host_process starts from it.
ENVIRON_AT_START = dict(os.environ)

# Before TensorFlow is imported: XLA's compiled programs go to the tests' own cache (shared with
# the tools they start), not the user's: trainings of the same tiny model reuse them, and so does
# the next test session. MNIST_DNN_TEST_XLA_CACHE=off starts every session cold.
_XLA_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".pytest_cache" / "mnist_dnn-xla"
if os.environ.get("MNIST_DNN_TEST_XLA_CACHE") == "off":
    _XLA_CACHE = pathlib.Path(tempfile.mkdtemp(prefix="mnist_dnn-tests-xla-"))
    atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ["MNIST_DNN_XLA_CACHE"] = str(_XLA_CACHE)
from mnist_dnn.cli import startup  # noqa: E402 (imports no TensorFlow)
from mnist_dnn.lib import onednn  # noqa: E402

startup.use_xla_cache()  # as the tools do first: TensorFlow reads the flag when it starts
onednn.choose("auto")  # the kernels the tools choose (test_onednn runs the guards on the others too)

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from absl import flags

from mnist_dnn.cli import app as cli
from mnist_dnn.lib import config as config_lib
from mnist_dnn.lib.core import data
from mnist_dnn.lib.trainer import training

ROOT = pathlib.Path(__file__).resolve().parent.parent
# absolute: tests run tools in other folders (.ci/run sets a path relative to the checkout)
REAL_IDX_DIR = os.path.abspath(os.environ.get(data.IDX_DIR_ENV) or ROOT.parent / "shared" / "data" / "mnist")
# What TensorFlow's C++ code prints when it starts (lines of its own log format, and the notices).
TF_STARTUP = re.compile(r"\.cc:\d+\]|absl::InitializeLog|cuInit|To enable the following instructions")


@pytest.fixture(autouse=True)
def _op_determinism_as_it_was():
    """A training with deterministic=True switches op determinism on for the whole process (as it
    documents); the tests after it must not run under it (unseeded random ops then raise)."""
    from tensorflow.python.framework import config as tf_config  # (no public getter)

    before = tf_config.is_op_determinism_enabled()
    yield
    if tf_config.is_op_determinism_enabled() != before:
        (tf_config.enable_op_determinism if before else tf_config.disable_op_determinism)()


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Ends a `pytest` process as the tools end theirs: without Python's teardown of TensorFlow.

    That teardown takes seconds and checks nothing; the report is written by now. So do the
    workers of pytest-xdist (`-n 2`): they have sent their results and the end of their session
    to the main process, which marks them done and no longer reads them. Not when something
    else called `pytest.main()` in its own process.
    """
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    started_as_pytest = (main_spec is not None and main_spec.name == "pytest.__main__"
                         or os.path.basename(sys.argv[0]) in ("pytest", "py.test"))
    xdist_worker = hasattr(config, "workerinput")
    if (started_as_pytest or xdist_worker) and _EXIT_STATUS in config.stash:
        cli._end_process(config.stash[_EXIT_STATUS])


def scalars(log_dir, tag: str) -> dict[int, float]:
    """A TensorBoard scalar of one summary folder, {step: value}."""
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return {event.step: float(tf.make_ndarray(event.tensor_proto)) for event in acc.Tensors(tag)}


def hparams(log_dir) -> dict:
    """The hyperparameters that TensorBoard's HParams plugin reads from a run's log folder."""
    acc = event_accumulator.EventAccumulator(str(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: (v.string_value or v.number_value) for k, v in info.hparams.items()}


def write_idx(path, array: np.ndarray, magic: int) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable digits: label c lights up row band c, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for c in range(10):
        images[labels == c, 2 + 2 * c : 4 + 2 * c, 4:24] = 255
    return images, labels


def write_idx_folder(folder, n_train=6000, n_test=500, gz=True) -> dict:
    """Writes the four IDX files; returns the arrays written."""
    os.makedirs(folder, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {}
    for split, prefix, n, seed in (("train", "train", n_train, 1), ("test", "t10k", n_test, 2)):
        images, labels = synthetic_split(n, seed)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, 0x803)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, 0x801)
        arrays[split] = (images, labels)
    return arrays


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("idx")
    write_idx_folder(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, tiny_idx_dir) -> data.DataConfig:
    """The synthetic IDX folder, imported once into its own TFDS data_dir.

    It is not the real MNIST, so it skips the check that users' imports pass (`verify=False`).
    """
    config = data.DataConfig("mnist", str(tmp_path_factory.mktemp("tfds")), tiny_idx_dir)
    data.import_idx(config, verify=False)
    return config


def tiny_config(tiny_data, folder, **overrides):
    """A short training on the tiny data, writing to `folder`/ckpt and `folder`/logs.

    500 validation images (not the default 5,000): the checks are about the run, not the score.
    The tf.data runner (no XLA compilation: a second less per run) unless a test asks for the
    default (jit_compile=None); test_steps shows that both runners train alike.
    """
    settings = dict(model=config_lib.ModelConfig("dense", (32,)),
                    data=dataclasses.replace(tiny_data, validation_size=500), ckpt_dir=str(folder / "ckpt"),
                    log_dir=str(folder / "logs"), max_steps=30, log_every=10, eval_every=10,
                    checkpoint_every=10, keep_checkpoints=2, batch_size=64, steps_per_call=7, diagnostics=False,
                    jit_compile=False)
    settings.update(overrides)
    return training.TrainConfig(**settings)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """One finished run of `tiny_config` (checkpoints 20 and 30, best/, summaries): its folder and result.

    Read it in place; copy it (`copy_run`) before anything that could write to it.
    """
    folder = tmp_path_factory.mktemp("tiny_run")
    return folder, training.train(tiny_config(tiny_data, folder))


def copy_run(tiny_run, destination):
    """A copy of the shared tiny run's folder (ckpt/ and logs/) in `destination`."""
    shutil.copytree(tiny_run[0], destination, dirs_exist_ok=True)
    return destination


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> data.DataConfig:
    """The real MNIST, imported once for the whole test session."""
    if not os.path.isfile(os.path.join(REAL_IDX_DIR, "train-images-idx3-ubyte.gz")):
        pytest.fail(f"the real MNIST is not at {REAL_IDX_DIR}; set {data.IDX_DIR_ENV}")
    config = data.DataConfig("mnist", str(tmp_path_factory.mktemp("tfds_real")), REAL_IDX_DIR)
    data.prepare(config)
    return config


def run_cli(module: str, *args, env_extra=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """Runs `python -m mnist_dnn.<module> args...` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != data.IDX_DIR_ENV}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", f"mnist_dnn.{module}", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout,
    )


def assert_one_line_error(result, exit_code: int, *fragments: str) -> None:
    """A user error: the given exit code, no traceback, an 'error:' line with the fragments."""
    assert result.returncode == exit_code, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


TOOLS = ("train", "evaluate", "export", "predict", "inspect_checkpoint", "sweep", "search", "report", "serve")


@dataclasses.dataclass(frozen=True)
class ToolResult:
    """What a tool run in-process printed and returned, as subprocess.CompletedProcess has it."""

    returncode: int
    stdout: str
    stderr: str


def _forget_tools() -> None:
    """Removes the tools' modules and the flags they defined, so the next import defines them afresh."""
    package = sys.modules["mnist_dnn"]
    for tool in TOOLS:
        sys.modules.pop(f"mnist_dnn.{tool}", None)
        if tool in vars(package):
            delattr(package, tool)  # or `from mnist_dnn import train` would find the old module
    defined = {f.name for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
               if module.startswith("mnist_dnn") for f in module_flags}
    for name in defined:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()


def call_tool(tool: str, *args, env_extra=None) -> ToolResult:
    """Runs `python -m mnist_dnn.<tool> args...` in this process: the same flags, main and error handling.

    Each call imports the tool afresh (the tools define conflicting flags, as separate programs may).
    """
    _forget_tools()
    module = importlib.import_module(f"mnist_dnn.{tool}")
    out, err = io.StringIO(), io.StringIO()
    env = {k: v for k, v in os.environ.items() if k != data.IDX_DIR_ENV}
    env.update(env_extra or {})
    code = 0
    with _environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = [f"mnist_dnn.{tool}", *map(str, args)]
        try:
            with cli.in_process():
                module.run()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    _forget_tools()
    return ToolResult(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def _environment(env: dict):
    saved_env, saved_argv = dict(os.environ), list(sys.argv)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv


def folder_hashes(*folders) -> dict:
    """Every file and folder below `folders` with the SHA-256 of its bytes (None for a folder, the target for a link)."""
    hashes = {}
    for folder in folders:
        for root, dirs, names in os.walk(folder):
            for name in dirs:
                hashes[os.path.join(root, name)] = None
            for name in names:
                path = os.path.join(root, name)
                if os.path.islink(path):
                    hashes[path] = f"-> {os.readlink(path)}"
                    continue
                mode = os.stat(path).st_mode
                if not stat.S_ISREG(mode):  # a FIFO or a device: its kind, never its content (a read would block)
                    hashes[path] = f"special {stat.S_IFMT(mode):o} {os.stat(path).st_rdev}"
                    continue
                with open(path, "rb") as f:
                    hashes[path] = hashlib.sha256(f.read()).hexdigest()
    return hashes
