"""The tools' command lines: help, presets and flags typed around them, console scripts, a reader that leaves."""

import importlib.machinery
import os
import pathlib
import subprocess
import sys
import types

import pytest
from absl import flags

import conftest
from conftest import ROOT, TF_STARTUP, run_cli
from mnist_dnn.cli import app as cli, command_line
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
