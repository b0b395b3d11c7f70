"""lib/config.py's build_config: the one way from text (a flag's, a grid's, a search space's) to a config; FLAGS left alone."""

import contextlib
import functools

import pytest
from absl import flags

import conftest
from mnist_dnn.cli import app as cli
from mnist_dnn.lib.config import build_config
from mnist_dnn.lib.config import ConfigError, DataConfig, ModelConfig, TrainConfig
from mnist_dnn.lib.errors import UsageError
from mnist_dnn.lib.experiments import reports, search, sweeps, trials


def test_text_becomes_each_field_s_type():
    built = build_config(TrainConfig, {
        "model": "cnn", "hidden_units": "256-128", "conv_filters": "8,16", "learning_rate": "0.003",
        "batch_size": "64", "deterministic": "true", "jit_compile": "False", "optimizer": "sgd", "log_dir": "L",
        "devices": "/cpu:0,/cpu:1", "dataset": "kmnist"})
    assert built == TrainConfig(model=ModelConfig("cnn", (256, 128), conv_filters=(8, 16)), learning_rate=0.003,
                                batch_size=64, deterministic=True, jit_compile=False, optimizer="sgd", log_dir="L",
                                devices=("/cpu:0", "/cpu:1"), data=DataConfig("kmnist"))
    assert type(built.learning_rate) is float and type(built.batch_size) is int


@pytest.mark.parametrize("given", ["256-128", "256,128", " 256 , 128 ", ["256", "128"], (256, 128)])
def test_a_list_is_a_grid_s_text_a_command_line_s_text_or_absl_s_strings(given):
    assert build_config(TrainConfig, {"hidden_units": given}).model.hidden_units == (256, 128)


def test_no_list_is_the_model_s_own_and_an_empty_one_is_empty():
    assert build_config(TrainConfig, {"model": "cnn", "hidden_units": None, "conv_filters": None}).model == \
        ModelConfig("cnn", (128,), conv_filters=(32, 64))
    assert build_config(TrainConfig, {"model": "logistic", "hidden_units": ""}).model.hidden_units == ()
    assert build_config(TrainConfig, {"devices": []}).devices == ()


@pytest.mark.parametrize("text, value", [("true", True), ("TRUE", True), ("t", True), ("1", True), ("false", False),
                                         ("False", False), ("f", False), ("0", False)])
def test_booleans_read_as_absl_reads_them(text, value):
    assert build_config(TrainConfig, {"diagnostics": text}).diagnostics is value


def test_values_absl_parsed_are_taken_as_they_are():
    built = build_config(TrainConfig, {"batch_size": 64, "deterministic": True, "jit_compile": None,
                                         "learning_rate": 0.5})
    assert (built.batch_size, built.deterministic, built.jit_compile, built.learning_rate) == (64, True, None, 0.5)


def test_a_choice_is_read_as_text_and_checked_by_validate():
    assert build_config(TrainConfig, {"model": "DNN"}).model == ModelConfig("raw", (128,))  # the course's alias
    built = build_config(TrainConfig, {"optimizer": "lbfgs"})
    with pytest.raises(ConfigError, match="must be one of sgd") as caught:
        built.validate()
    assert caught.value.field == "optimizer"


@pytest.mark.parametrize("name, text, fragment", [
    ("batch_size", "x", "value 'x' is not valid for `batch_size`: invalid literal for int()"),
    ("batch_size", "0.5", "value '0.5' is not valid for `batch_size`"),  # not cut to 0
    ("learning_rate", "fast", "value 'fast' is not valid for `learning_rate`: could not convert"),
    ("deterministic", "yes", "value 'yes' is not valid for `deterministic`: it is neither true nor false"),
    ("hidden_units", "128:256-128", "must be comma-separated integers such as 256,128; got 128:256,128"),
    ("conv_filters", "16,x", "must be comma-separated integers such as 256,128; got 16,x"),
])
def test_a_bad_value_is_one_config_error_naming_its_field(name, text, fragment):
    with pytest.raises(ConfigError) as caught:
        build_config(TrainConfig, {name: text})
    assert caught.value.field == name and fragment in caught.value.problem


def test_a_scalar_s_bad_text_from_a_grid_or_a_space_names_both():
    for source in ("grid", "space"):
        with pytest.raises(ConfigError) as caught:
            sweeps.check_value(source, "batch_size", "x")
        assert caught.value.field == source and caught.value.problem.startswith("value 'x' is not valid for `batch_size`")
    with pytest.raises(ConfigError) as caught:  # a list's elements: the field's own words, wherever the text came in
        sweeps.check_value("grid", "hidden_units", "128-x")
    assert caught.value.field == "hidden_units"
    with pytest.raises(UsageError, match="`grid` names --no_such, which is not a flag of mnist_dnn.train"):
        sweeps.check_value("grid", "no_such", "1")
    sweeps.check_value("space", "hidden_units", "256-128")


def test_a_config_given_as_base_keeps_its_values_but_those_named():
    base = TrainConfig(model=ModelConfig("dense", (60, 30)), batch_size=32, seed=7)
    assert build_config(base, {"dropout": "0.25", "optimizer": "sgd"}) == \
        TrainConfig(model=ModelConfig("dense", (60, 30), 0.25), batch_size=32, seed=7, optimizer="sgd")
    assert build_config(base, {}) == base


def test_grid_runs_get_each_model_s_own_widths_as_a_command_line_would():
    axes = [sweeps.parse_axis("model=cnn,lenet5", sweeps.LIST_FLAGS, functools.partial(sweeps.check_value, "grid"))]
    base = {"model": "dense", "hidden_units": None, "conv_filters": None, "learning_rate": 0.01}
    configs = [build_config(TrainConfig, {**base, **run.params}) for run in sweeps.expand(axes, sweeps.LIST_FLAGS)]
    assert [c.model for c in configs] == [ModelConfig("cnn", (128,), conv_filters=(32, 64)),
                                          ModelConfig("lenet5", (120, 84), conv_filters=(6, 16))]
    assert {c.learning_rate for c in configs} == {0.01}


@contextlib.contextmanager
def _flags_read_only():
    """absl's flags, in this block: parsing one, setting a value or a default raises."""
    def refuse(*args, **kwargs):
        raise AssertionError("the tool edited absl's FLAGS")

    with pytest.MonkeyPatch.context() as patch:
        for cls, name in ((flags.Flag, "parse"), (flags.MultiFlag, "parse"), (flags.FlagValues, "__setattr__"),
                          (flags.FlagValues, "set_default"), (flags.FlagValues, "__setitem__")):
            patch.setattr(cls, name, refuse)
        patch.setattr(flags.Flag, "value", property(flags.Flag.value.fget, refuse))
        yield


def _values() -> dict:
    return {name: (flags.FLAGS[name].value, flags.FLAGS[name].present) for name in flags.FLAGS}


@pytest.fixture
def read_only_main(monkeypatch):
    """Each tool's main runs with absl's flags read-only; the values it saw before and after it are compared."""
    run = cli.run
    seen = []

    def guarded_run(main, **kwargs):
        @functools.wraps(main)
        def guarded(argv):
            before = _values()
            with _flags_read_only():
                result = main(argv)
            seen.append((before, _values()))
            return result
        run(guarded, **kwargs)

    monkeypatch.setattr(cli, "run", guarded_run)
    monkeypatch.setattr(reports, "report", lambda *args, **kwargs: [])
    return seen


def test_a_sweep_builds_its_run_configs_without_editing_the_flags(read_only_main, monkeypatch, tmp_path):
    validated, started = [], []
    validate = TrainConfig.validate
    monkeypatch.setattr(TrainConfig, "validate", lambda config: validated.append(config) or validate(config))
    monkeypatch.setattr(sweeps, "run_all", lambda root, runs, args, train, out: started.append((runs, args)))
    result = conftest.call_tool("sweep", f"--root={tmp_path / 'sweep'}", "--model=cnn", "--conv_filters=8,16",
                                "--max_steps=40", "--grid=hidden_units=256-128,64", "--grid=learning_rate=0.1,0.01")
    assert result.returncode == 0, result.stderr
    (before, after), = read_only_main
    assert before == after
    expected = [TrainConfig(model=ModelConfig("cnn", units, conv_filters=(8, 16)), learning_rate=rate, max_steps=40)
                for units in ((256, 128), (64,)) for rate in (0.1, 0.01)]
    assert validated == expected
    (runs, args), = started
    assert args == ["--conv_filters=8,16", "--max_steps=40", "--model=cnn"]
    assert [r.args for r in runs][:2] == [("--hidden_units=256,128", "--learning_rate=0.1"),
                                          ("--hidden_units=256,128", "--learning_rate=0.01")]


def test_a_search_builds_its_base_and_trial_configs_without_editing_the_flags(read_only_main, monkeypatch, tmp_path):
    from mnist_dnn.lib.core import data

    plans = []
    monkeypatch.setattr(data, "prepare", lambda config: None)
    monkeypatch.setattr(trials, "run_workers", lambda plan, say: plans.append(plan) or [0])
    result = conftest.call_tool("search", f"--root={tmp_path / 'search'}", "--model=cnn", "--conv_filters=8,16",
                                "--max_steps=40", "--space=hidden_units=choice:256-128,64",
                                "--space=learning_rate=loguniform:1e-3:1e-1")
    assert result.returncode == 0, result.stderr
    (before, after), = read_only_main
    assert before == after
    (plan,) = plans
    assert plan.base == TrainConfig(model=ModelConfig("cnn", conv_filters=(8, 16)), max_steps=40)
    trial = search.trial_config(plan.base, {"hidden_units": "256-128", "learning_rate": "0.01"}, str(tmp_path / "t"))
    assert (trial.model, trial.learning_rate) == (ModelConfig("cnn", (256, 128), conv_filters=(8, 16)), 0.01)
