"""First contact: help, presets, a quiet start, the installed package, the labelled confusion image."""

import hashlib
import importlib.machinery
import json
import os
import pathlib
import pkgutil
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import conftest
from conftest import ROOT, assert_one_line_error, run_cli
import mnist_dnn
from mnist_dnn.cli import app as cli, command_line, startup
from mnist_dnn.lib import native_output, xla_cache
from mnist_dnn.lib.core import data
from mnist_dnn.lib.trainer import diagnostics
from mnist_dnn.lib.errors import UsageError

# Each tool, its console script, and flags its help must list: its own and shared ones it uses.
TOOLS = {
    "train": ("mnist-dnn-train", ["--model", "--hidden_units", "--max_steps", "--[no]jit_compile", "--log_dir",
                                  "--ckpt_dir", "--data_dir", "--idx_dir"]),
    "evaluate": ("mnist-dnn-evaluate", ["--batch_size", "--metrics_file", "--[no]confusion_matrix", "--ckpt_dir",
                                        "--which", "--checkpoint", "--data_dir", "--idx_dir"]),
    "export": ("mnist-dnn-export", ["--export_dir", "--version", "--ckpt_dir", "--which", "--checkpoint"]),
    "predict": ("mnist-dnn-predict", ["--model_dir"]),
    "inspect_checkpoint": ("mnist-dnn-inspect", ["--ckpt_dir", "--which", "--checkpoint"]),
    "sweep": ("mnist-dnn-sweep", ["--grid (repeatable)", "--root", "--model", "--learning_rate", "--data_dir"]),
    "report": ("mnist-dnn-report", ["--root", "--data_dir", "--idx_dir"]),
}
# What TensorFlow's C++ code prints when it starts (lines of its own log format, and the notices).
TF_STARTUP = re.compile(r"\.cc:\d+\]|absl::InitializeLog|cuInit|To enable the following instructions")


def fake_tool(name="mnist_dnn.fake_tool"):
    """A tool module and its flags in their own FlagValues, as absl files them."""
    module = types.ModuleType(name, "Do a fake thing.\n\nExample:\n\n    python -m mnist_dnn.fake_tool --size=3\n")
    key = sys.argv[0] if name == "__main__" else name
    values = flags.FlagValues()
    flags.DEFINE_integer("size", 2, "How big.", flag_values=values, module_name=key)
    flags.DEFINE_boolean("fancy", True, "Fancy output.", flag_values=values, module_name=key)
    flags.DEFINE_list("widths", ["3", "4"], "Widths.", flag_values=values, module_name=key)
    flags.DEFINE_multi_string("axis", [], "An axis.", flag_values=values, module_name=key)
    flags.DEFINE_string("ckpt_dir", "checkpoints", "Checkpoints.", flag_values=values, module_name="mnist_dnn.cli.app")
    flags.DEFINE_string("data_dir", None, "Data.", flag_values=values, module_name="mnist_dnn.cli.app")
    flags.DEFINE_float("rate", 0.5, "A training rate.", flag_values=values, module_name="mnist_dnn.train")
    flags.DEFINE_string("xla_noise", "x", "Not ours.", flag_values=values, module_name="tensorflow.whatever")
    return module, values


def test_help_text_shows_the_docstring_and_the_flags_grouped_with_defaults():
    module, values = fake_tool()
    text = command_line.help_text(module, flag_values=values)
    assert text.startswith("Do a fake thing.\n\nExample:\n\n    python -m mnist_dnn.fake_tool --size=3\n")
    assert f"usage: {os.path.basename(sys.argv[0])} [flags]\n" in text
    own, train, shared, general = (text.index(t) for t in (
        "mnist_dnn.fake_tool flags:", "mnist_dnn.train flags:", "shared flags:", "presets, flagfiles and help:"))
    assert own < train < shared < general
    for entry in ("--size (default: 2)\n      How big.", "--[no]fancy (default: true)",
                  "--widths (default: 3,4)", "--axis (repeatable) (default: none)"):
        assert own < text.index(entry) < train, entry
    assert train < text.index("--rate (default: 0.5)") < shared
    assert shared < text.index("--ckpt_dir (default: checkpoints)") < general
    assert shared < text.index("--data_dir (default: none)") < general
    assert "xla_noise" not in text
    for name in command_line.preset_names():
        assert name in text[general:]


def test_help_of_a_module_run_as_main_names_it_and_python_m(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/somewhere/mnist_dnn/fake_tool.py", "--help"])
    module, values = fake_tool("__main__")
    module.__spec__ = importlib.machinery.ModuleSpec("mnist_dnn.fake_tool", None)
    text = command_line.help_text(module, positional_args=True, flag_values=values)
    assert "usage: python -m mnist_dnn.fake_tool [flags] FILE...\n" in text
    assert "mnist_dnn.fake_tool flags:\n  --axis (repeatable)" in text


@pytest.mark.parametrize("argv, wanted", [
    (["prog", "-h"], True), (["prog", "--model=raw", "--help"], True), (["prog", "--helpshort"], True),
    (["prog", "-?"], True), (["prog", "--helpfull"], False), (["prog", "--", "-h"], False), (["prog"], False),
])
def test_help_is_asked_with_h_or_help(argv, wanted):
    assert command_line.wants_help(argv) is wanted


def test_shipped_presets_are_the_configs_folder():
    assert command_line.configs_dir() == ROOT / "configs"
    assert command_line.preset_names() == sorted(p.stem for p in (ROOT / "configs").glob("*.cfg"))
    assert "fast" in command_line.preset_names()


def _preset_lines(name):
    return [line.strip() for line in (ROOT / "configs" / f"{name}.cfg").read_text().splitlines() if line.startswith("--")]


def test_a_preset_s_flags_go_first_wherever_it_stands():
    fast = _preset_lines("fast")
    assert command_line.expand_presets(["p", "--seed=1", "--preset=fast", "--batch_size=32"]) == [
        "p", *fast, "--seed=1", "--batch_size=32"]
    assert command_line.expand_presets(["p", "x", "--preset", "fast"]) == ["p", *fast, "x"]
    assert command_line.expand_presets(["p", "--", "--preset=nope"]) == ["p", "--", "--preset=nope"]


def test_a_preset_named_in_a_flagfile_goes_first_too(tmp_path):
    (tmp_path / "mine.cfg").write_text("# my settings\n--batch_size=32\n--preset=fast\n--seed=4\n")
    assert command_line.expand_presets(["p", "--max_steps=7", f"--flagfile={tmp_path / 'mine.cfg'}"]) == [
        "p", *_preset_lines("fast"), "--max_steps=7", "--batch_size=32", "--seed=4"]


@pytest.mark.parametrize("argv", [["p", "--preset=nope"], ["p", "--preset="], ["p", "--preset"]])
def test_an_unknown_preset_is_a_usage_error_naming_the_valid_ones(argv):
    with pytest.raises(UsageError, match="not a shipped config; choose one of: balanced, best, cnn_best, cnn_fast, default, .*fast"):
        command_line.expand_presets(argv)


def test_a_tool_that_takes_no_training_flags_refuses_a_preset(tmp_path):
    (tmp_path / "mine.cfg").write_text("--preset=fast\n")
    for argv in (["p", "--preset=fast", "x.png"], ["p", f"--flagfile={tmp_path / 'mine.cfg'}"]):
        with pytest.raises(UsageError, match="--preset=fast is a set of training flags, for train, sweep and search "
                                             "only; mnist_dnn.predict takes none"):
            command_line.expand_presets(argv, refused_by="mnist_dnn.predict")
    assert command_line.expand_presets(["p", "x.png"], refused_by="mnist_dnn.predict") == ["p", "x.png"]


def _parsed_flags(tool, argv):
    """The flags of `mnist_dnn.<tool>` (imported afresh) after its command line: what its main reads."""
    conftest._forget_tools()
    importlib.import_module(f"mnist_dnn.{tool}")
    try:
        flags.FLAGS(command_line.expand_presets(["p", *argv]))
        return {name: flags.FLAGS[name].value for name in flags.FLAGS}
    finally:
        conftest._forget_tools()


TYPED = ["--max_steps=30", "--batch_size=32", "--ckpt_dir=A", "--log_dir=B"]


@pytest.mark.parametrize("tool, preset, extra", [
    ("train", "fast", []), ("sweep", "sweep_example", ["--root=R"]), ("search", "search_example", ["--root=R"])])
@pytest.mark.parametrize("where", ["before", "after", "in a flagfile"])
def test_flags_typed_before_or_after_a_preset_win_in_every_tool_that_takes_one(tool, preset, extra, where, tmp_path):
    typed = TYPED + extra
    if where == "in a flagfile":  # the preset in the user's flagfile, after the flags there
        (tmp_path / "mine.cfg").write_text("\n".join([*typed, f"--preset={preset}"]) + "\n")
        argv = [f"--flagfile={tmp_path / 'mine.cfg'}"]
    else:
        argv = [*typed, f"--preset={preset}"] if where == "before" else [f"--preset={preset}", *typed]
    values = _parsed_flags(tool, argv)
    assert (values["max_steps"], values["batch_size"], values["ckpt_dir"], values["log_dir"]) == (30, 32, "A", "B")
    assert extra == [] or values["root"] == "R"
    preset_lines = dict(line[2:].split("=", 1) for line in _preset_lines(preset) if "=" in line)
    assert values["model"] == preset_lines["model"] == "dense"  # the preset's other flags still hold
    assert str(values["eval_every"]) == preset_lines["eval_every"]


def test_a_repeatable_flag_typed_before_a_preset_adds_to_the_preset_s():
    values = _parsed_flags("sweep", ["--grid=batch_size=64,128", "--preset=sweep_example"])
    assert values["grid"] == ["learning_rate=0.003,0.001", "hidden_units=60-30,256-128", "batch_size=64,128"]


def test_train_trains_with_the_flags_typed_before_its_preset(monkeypatch):
    from mnist_dnn.lib.trainer import training

    configs = []
    monkeypatch.setattr(training, "train", lambda config, say: configs.append(config) or sys.exit(0))
    result = conftest.call_tool("train", *TYPED, "--preset=fast")
    assert result.returncode == 0, result.stderr
    (config,) = configs
    assert (config.max_steps, config.batch_size, config.ckpt_dir, config.log_dir) == (30, 32, "A", "B")
    assert (config.model.hidden_units, config.lr_schedule) == ((512,), "cosine")


@pytest.mark.parametrize("tool", ["evaluate", "export", "inspect_checkpoint", "predict", "serve", "report"])
def test_the_other_tools_neither_advertise_nor_take_a_preset(tool):
    assert "  --preset=NAME" not in conftest.call_tool(tool, "--help").stdout
    assert "  --preset=NAME" in conftest.call_tool("train", "--help").stdout


@pytest.mark.parametrize("argv, env, wanted", [
    (["p"], {}, False),
    (["p", "--verbosity=1"], {}, True),
    (["p", "-v=2"], {}, True),
    (["p", "--verbosity", "1"], {}, True),
    (["p", "--verbosity=0"], {}, False),
    (["p", "--verbosity=-1"], {}, False),
    (["p", "v=3"], {}, False),
    (["p"], {startup.TF_LOGS_ENV: "1"}, True),
    (["p"], {startup.TF_LOGS_ENV: "0"}, False),
    (["p"], {"TF_CPP_MIN_LOG_LEVEL": "0"}, True),
    (["p"], {"TF_CPP_MIN_LOG_LEVEL": "1"}, True),
    (["p"], {"TF_CPP_MIN_LOG_LEVEL": "2"}, False),
    (["p"], {"TF_CPP_MIN_LOG_LEVEL": "3"}, False),
])
def test_tensorflow_logs_are_shown_only_when_asked(argv, env, wanted):
    assert startup.wants_tf_logs(argv, env) is wanted


def test_captured_stderr_is_dropped_unless_the_block_fails(capfd):
    with native_output.captured_stderr():
        os.write(2, b"C++ noise\n")
    os.write(2, b"ours after it\n")
    assert capfd.readouterr().err == "ours after it\n"
    with pytest.raises(ImportError):
        with native_output.captured_stderr():
            os.write(2, b"why it failed\n")
            raise ImportError("no luck")
    assert capfd.readouterr().err == "why it failed\n"


def test_the_confusion_image_has_the_matrix_and_labelled_axes():
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 50, (10, 10)) + np.diag(rng.integers(500, 900, 10))
    image = diagnostics.confusion_image(matrix.tolist())
    top, left, cell = diagnostics.MATRIX_TOP, diagnostics.MATRIX_LEFT, 16
    assert image.shape == (top + 160 + 4, left + 160 + 4, 3)
    expected = np.sqrt(matrix / matrix.sum(axis=1, keepdims=True))
    cells = image[top : top + 160, left : left + 160, 0]
    np.testing.assert_allclose(cells[::cell, ::cell], expected, rtol=1e-6)
    np.testing.assert_allclose(cells[cell - 1 :: cell, cell - 1 :: cell], expected, rtol=1e-6)
    green = (image[..., 1] > 0.9) & (image[..., 0] < 0.5)
    red = (image[..., 0] > 0.9) & (image[..., 1] < 0.5)
    assert not (green | red)[top : top + 160, left : left + 160].any()  # the labels stay in the margin
    h, w = diagnostics.GLYPH_HEIGHT, diagnostics.GLYPH_WIDTH
    for c in range(10):  # row numbers left of the matrix (green), column numbers above it (red)
        row_label = green[top + c * cell + (cell - h) // 2 :][:h, left - 4 - w : left - 4]
        column_label = red[top - 4 - h : top - 4, left + c * cell + (cell - w) // 2 :][:, :w]
        np.testing.assert_array_equal(row_label, diagnostics.glyph(c))
        np.testing.assert_array_equal(column_label, diagnostics.glyph(c))
    t = np.array([[1, 1, 1], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]], bool).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(diagnostics.glyph("T"), t)
    title = red[4 : 4 + h].any(axis=0)
    assert np.flatnonzero(np.diff(title.astype(int)) == 1).size == len("PREDICTED")  # 9 separate letters
    true_title = green[top : top + 160, 4 : 4 + w].any(axis=1)
    assert np.flatnonzero(np.diff(true_title.astype(int)) == 1).size == len("TRUE")
    np.testing.assert_array_equal(green[top:, 4 : 4 + w][np.flatnonzero(true_title)[0]:][:h], t)


def console_script(name: str) -> str:
    path = pathlib.Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{path} is missing: install the package (pip install -e .) into this Python's environment")
    return str(path)


def run_console_script(name: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """The installed console script, importing this checkout's code (as CI's editable install does)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([console_script(name), *args], capture_output=True, text=True, env=env, timeout=300,
                          **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["python -m", "console script"])
@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_every_tool_lists_its_flags_on_help(tool, form):
    script, expected = TOOLS[tool]
    if form == "python -m":
        result, program = run_cli(tool, "--help"), f"python -m mnist_dnn.{tool}"
    else:
        result, program = run_console_script(script, "-h"), script
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"usage: {program} [flags]" in result.stdout
    assert f"    python -m mnist_dnn.{tool} --" in result.stdout  # the docstring's example
    for flag in expected:
        assert f"  {flag} (default: " in result.stdout, flag
    assert "shared flags:" in result.stdout or tool == "predict"
    assert not TF_STARTUP.search(result.stderr), result.stderr


@pytest.mark.slow
def test_a_short_run_prints_no_tensorflow_startup_lines(tiny_data, tmp_path):
    result = run_cli("train", "--max_steps=20", "--log_every=10", f"--data_dir={tiny_data.data_dir}",
                     f"--ckpt_dir={tmp_path / 'ckpt'}", f"--log_dir={tmp_path / 'logs'}", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Done at step 20" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize("ask", [["--verbosity=1"], []])
def test_tensorflow_startup_lines_come_back_when_asked(ask):
    env = {} if ask else {startup.TF_LOGS_ENV: "1"}
    result = run_cli("evaluate", *ask, "--helpfull", env_extra=env)
    assert TF_STARTUP.search(result.stderr), result.stderr


@pytest.mark.slow
def test_our_errors_and_later_python_errors_still_reach_stderr(tmp_path):
    assert_one_line_error(run_cli("train", "--max_steps=0", f"--ckpt_dir={tmp_path / 'c'}"), 2, "--max_steps")
    late = subprocess.run([sys.executable, "-c", "import mnist_dnn, sys; print('ours', file=sys.stderr); 1 / 0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert late.stderr.startswith("ours\nTraceback") and "ZeroDivisionError" in late.stderr
    assert not TF_STARTUP.search(late.stderr)


@pytest.mark.slow
def test_a_failed_tensorflow_import_shows_what_it_printed(tmp_path):
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos.write(2, b'libfoo.so: cannot open shared object\\n')\n"
                                      "raise ImportError('DLL load failed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    # A tool imports TensorFlow as it starts (cli.run), not on importing the package.
    result = subprocess.run([sys.executable, "-m", "mnist_dnn.report", "--root=x"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("libfoo.so: cannot open shared object\nTraceback")
    assert "ImportError: DLL load failed" in result.stderr


@pytest.mark.slow
def test_an_installed_package_runs_a_preset_from_any_folder(tiny_data, tmp_path):
    """`pip install .` (not editable): the shipped configs are package data, found by --preset."""
    source, target, work = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "checkpoints",
                                                                "logs", "runs", "exports", "tests", "benchmarks",
                                                                ".pytest_cache"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", f"--target={target}",
                              str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert sorted(p.name for p in (target / "mnist_dnn" / "configs").glob("*.cfg")) == sorted(
        p.name for p in (ROOT / "configs").glob("*.cfg"))
    assert [p.read_text() for p in target.glob("mnist_dnn_course-*.dist-info/**/LICENSE")] == [(ROOT / "LICENSE").read_text()]
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([str(target / "bin" / "mnist-dnn-train"), "--preset=fast", "--max_steps=20",
                             "--batch_size=32", f"--data_dir={tiny_data.data_dir}", "--ckpt_dir=ckpt",
                             "--log_dir=logs"], capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 32" in result.stdout and "Done at step 20" in result.stdout  # the flag after the preset wins
    assert json.loads((work / "ckpt" / "model_config.json").read_text())["hidden_units"] == [512]  # fast.cfg's
    unknown = subprocess.run([str(target / "bin" / "mnist-dnn-train"), "--preset=fastest"], capture_output=True,
                             text=True, env=env, cwd=work, timeout=600)
    assert_one_line_error(unknown, 2, "--preset=fastest", "fast")


def test_xla_programs_are_cached_per_cpu_under_the_users_cache_unless_told_otherwise(tmp_path):
    home = {"XDG_CACHE_HOME": str(tmp_path)}
    assert startup.xla_cache_folder(home, "x86_64-abc") == str(tmp_path / "mnist_dnn" / "xla" / "x86_64-abc")
    chosen = {**home, startup.XLA_CACHE_ENV: "/elsewhere"}
    assert startup.xla_cache_folder(chosen, "x86_64-abc") == "/elsewhere/x86_64-abc"  # a chosen folder too
    assert startup.xla_cache_folder(home, None) is None  # an unknown CPU: no cache
    for off in ("off", "0", "", "OFF", " Off "):
        assert startup.xla_cache_folder({startup.XLA_CACHE_ENV: off}, "x86_64-abc") is None


def test_the_cache_key_is_the_architecture_a_digest_of_every_instruction_set_flag_and_tensorflows_version(tmp_path):
    """XLA runs a cached program compiled for other CPU features (it only logs), and its entries' names say
    nothing of the XLA that wrote them: each instruction set and each TensorFlow version gets its own folder."""
    keys = []
    for flags, version in [("fpu sse2 avx2", "2.21.0"), ("fpu sse2 avx2 avx512f", "2.21.0"),
                           ("fpu sse2 avx2 amx_tile", "2.21.0"), ("fpu sse2 avx2", "2.20.0"), ("fpu sse2 avx2", None)]:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        digest = hashlib.sha256(f"flags\t\t: {flags}\n".encode()).hexdigest()[:12]
        keys.append(startup.cache_key(str(cpuinfo), version))
        assert keys[-1] == f"{platform.machine()}-{digest}-tf{version or tf.__version__}"  # None: the installed one
    assert len(set(keys)) == 4 and keys[0] == keys[-1]
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert startup.cache_key(str(tmp_path / "noflags")) is None
    assert startup.cache_key(str(tmp_path / "missing")) is None


def test_the_xla_cache_flag_joins_the_users_flags_and_never_replaces_theirs():
    env = {startup.XLA_CACHE_ENV: "/c", "TF_XLA_FLAGS": "--tf_xla_auto_jit=2"}
    startup.use_xla_cache(env, key="k")
    assert env["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory=/c/k"
    theirs = {startup.XLA_CACHE_ENV: "/c", "TF_XLA_FLAGS": "--tf_xla_persistent_cache_directory=/mine"}
    startup.use_xla_cache(theirs, key="k")
    assert theirs["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/mine"
    off = {startup.XLA_CACHE_ENV: "off"}
    startup.use_xla_cache(off, key="k")
    assert "TF_XLA_FLAGS" not in off


def test_an_xla_cache_folder_that_cannot_be_written_is_not_used(tmp_path, capsys):
    """XLA fails every compilation on a cache it cannot write: the run goes without one."""
    (tmp_path / "afile").write_text("")
    before = sorted(os.listdir(tmp_path))
    chosen = {startup.XLA_CACHE_ENV: str(tmp_path / "afile" / "xla")}
    startup.use_xla_cache(chosen, key="k")
    assert "TF_XLA_FLAGS" not in chosen and "is not a folder that can be written" in capsys.readouterr().err
    default = {"XDG_CACHE_HOME": str(tmp_path / "afile")}  # the default place, under a file: quietly none
    startup.use_xla_cache(default, key="k")
    assert "TF_XLA_FLAGS" not in default and capsys.readouterr().err == ""
    new = {startup.XLA_CACHE_ENV: str(tmp_path / "new" / "xla")}  # not there yet: XLA creates it
    startup.use_xla_cache(new, key="k")
    assert new["TF_XLA_FLAGS"].endswith(str(tmp_path / "new" / "xla" / "k"))
    assert sorted(os.listdir(tmp_path)) == before  # nothing created by the check


@pytest.mark.parametrize("level, expected", [(None, "3"), ("2", "3"), ("3", "3"), ("1", "1"), ("0", "0")])
def test_the_tools_start_up_hides_tensorflows_lines_unless_levels_0_or_1_ask_for_them(level, expected):
    """quiet_tensorflow changes the environment it is given (the tool's process), nothing else."""
    environ_before = dict(os.environ)
    env = {startup.XLA_CACHE_ENV: "off", **({} if level is None else {"TF_CPP_MIN_LOG_LEVEL": level})}
    startup.quiet_tensorflow(["tool"], env)  # TensorFlow is imported already in this process
    assert env["TF_CPP_MIN_LOG_LEVEL"] == expected
    assert dict(os.environ) == environ_before


TOOL_MODULES = sorted(m.name for m in [*pkgutil.iter_modules(mnist_dnn.__path__, "mnist_dnn."),
                                        *pkgutil.iter_modules(mnist_dnn.cli.__path__, "mnist_dnn.cli.")] if not m.ispkg)


@pytest.mark.parametrize("module", TOOL_MODULES)
def test_the_tool_modules_import_no_tensorflow_before_the_start_up(module):
    """Else TensorFlow starts before cli.run can keep its lines off the terminal."""
    probe = (f"import sys, {module}\n"
             "print(sorted(m for m in ('tensorflow', 'keras', 'tensorflow_datasets') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# issue 27: the XLA cache never fails a run (the real faults: tests/test_faults.py).
def _xla_temporary(folder, host: str, pid: int):
    path = folder / f"xla_compile_cache__1__2__XLA_CPU_JIT.pb{host}-a9b-{pid}-66c.tmp"
    path.write_bytes(b"half")
    return path


def test_before_tensorflow_starts_the_xla_cache_loses_dead_processes_temporary_files(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = _xla_temporary(tmp_path, socket.gethostname(), int(dead.stdout))
    alive = _xla_temporary(tmp_path, socket.gethostname(), os.getpid())
    elsewhere = _xla_temporary(tmp_path, "another-host", int(dead.stdout))  # its pid means nothing here
    assert xla_cache.prepare(str(tmp_path)) == f"--tf_xla_persistent_cache_directory={tmp_path}"
    assert not gone.exists() and alive.exists() and elsewhere.exists()


def test_an_xla_cache_short_of_space_is_only_read(tmp_path, monkeypatch):
    monkeypatch.setattr(xla_cache, "MIN_FREE_BYTES", shutil.disk_usage(tmp_path).free + 1)
    assert xla_cache.prepare(str(tmp_path / "new")).endswith(" --tf_xla_persistent_cache_read_only=true")


def test_after_a_cache_fault_its_damaged_entries_and_our_temporary_files_go_and_the_rest_stays(tmp_path):
    good = tmp_path / "xla_compile_cache__1__1__XLA_CPU_JIT.pb"
    good.write_bytes(b"\x0a\x03abc\x12\x02hi")  # well-formed protocol-buffer bytes
    damaged = {"empty": b"", "truncated": b"\x0a\x09abc", "garbled": b"\xff\xff\xff\xff\x0f\x07"}
    for name, content in damaged.items():
        (tmp_path / f"xla_compile_cache__{name}__XLA_CPU_JIT.pb").write_bytes(content)
    ours = _xla_temporary(tmp_path, socket.gethostname(), os.getpid())
    flags = f"--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory={tmp_path}"
    warning = xla_cache.recover(tf.errors.OutOfRangeError(None, None, "Read less bytes than requested"), flags)
    assert f"cache {tmp_path} failed (OutOfRangeError); removed 4 " in warning
    assert sorted(os.listdir(tmp_path)) == [good.name]
    assert xla_cache.recover(tf.errors.ResourceExhaustedError(None, None, "OOM"), flags) is None  # not the cache's
    named = tf.errors.DataLossError(None, None, f"Can't parse {good} as binary proto")
    assert "removed 1 " in xla_cache.recover(named, flags) and not good.exists()
    assert xla_cache.recover(named, "--tf_xla_auto_jit=2") is None  # no cache


def test_the_start_up_ctrl_c_handler_is_a_tools_own_and_leaves_an_importing_process_alone():
    """Its effect, one line and 130 at any moment of the start-up, is tested in test_faults.py -k ctrl_c."""
    handler = signal.getsignal(signal.SIGINT)
    startup.interrupt_quietly("mnist_dnn.train")  # imported by a program (here, the tests)
    startup.end_of_start_up()
    assert signal.getsignal(signal.SIGINT) is handler
    assert startup.is_tool_process("__main__", "/x/python") and startup.is_tool_process("m", "/venv/bin/mnist-dnn-train")
    assert not startup.is_tool_process("mnist_dnn.train", "/venv/bin/pytest")


# issue 27: `tool | head -1` (BrokenPipeError) ends quietly, as Unix tools do.
@pytest.mark.slow
@pytest.mark.parametrize("tool, args", [
    ("train", ["--help"]),
    ("inspect_checkpoint", ["--ckpt_dir={run}"]),
    ("evaluate", ["--ckpt_dir={run}", "--data_dir={data_dir}", "--confusion_matrix"]),
])
def test_a_reader_that_leaves_ends_the_tool_quietly(tool, args, tiny_run, tiny_data):
    places = {"run": tiny_run[0] / "ckpt", "data_dir": tiny_data.data_dir}
    process = subprocess.Popen([sys.executable, "-m", f"mnist_dnn.{tool}", *(a.format(**places) for a in args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    process.stdout.close()  # the reader is gone before the first line: every write meets a broken pipe
    stderr = process.stderr.read()
    assert (process.wait(timeout=300), stderr) == (cli.EXIT_BROKEN_PIPE, "")


def test_the_declared_licence_is_the_one_in_the_license_file():
    import configparser

    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "setup.cfg")
    assert metadata["metadata"]["license"] == "Apache-2.0" and metadata["metadata"]["license_files"] == "LICENSE"
    words = " ".join((ROOT / "LICENSE").read_text().split()[:5])
    assert words == "Apache License Version 2.0, January"
