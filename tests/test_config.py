"""The configuration: one source of defaults and of validation; flags declared from it."""

import dataclasses
import re

import pytest
from absl import flags

from mnist_dnn.cli import app as cli
from mnist_dnn.lib import config as config_lib
from mnist_dnn.lib.config import ConfigError, DataConfig, ModelConfig, TrainConfig


def test_course_names_are_aliases_and_models_get_their_default_widths():
    assert ModelConfig("DNN") == ModelConfig("raw", (128,))
    assert ModelConfig("contrib_DNN") == ModelConfig("dense", (60, 30))
    assert ModelConfig("LogisticRegression").hidden_units == ()


BAD_SETTINGS = [
    ("optimizer", "adamax", "adam, adamw"), ("learning_rate", 0.0, "positive"), ("learning_rate", -1.0, "positive"),
    ("learning_rate", 1e39, "positive"),  # finite in Python, inf in float32
    ("learning_rate", float("nan"), "positive"), ("batch_size", 0, "1 to"), ("batch_size", 10**9, "65,536"),
    ("max_steps", -5, "1 to"), ("steps_per_call", 0, "1 to"), ("log_every", 0, "1 to"), ("eval_every", -1, "1 to"),
    ("checkpoint_every", 0, "1 to"), ("keep_checkpoints", 0, "1 to"), ("lr_schedule", "step", "constant, cosine"),
    ("augment_shift", 9, "0 to 8"), ("augment_shift", -1, "0 to 8"), ("augment_rotate", 45.5, "0 to 45"),
    ("augment_rotate", float("inf"), "0 to 45"), ("augment_scale", 0.51, "0 to 0.5"), ("augment_scale", -0.01, "0 to 0.5"), ("seed", 10**20, "0 to"), ("seed", -1, "0 to"),
    ("early_stopping_patience", -1, "0 to"), ("strategy", "tpu", "default, mirrored"), ("virtual_cpus", -2, "0 to"),
    ("batch_size", 12.5, "whole number"), ("max_steps", True, "whole number"),
]


@pytest.mark.parametrize("field, value, fragment", BAD_SETTINGS)
def test_bad_settings_are_refused_naming_the_field(field, value, fragment):
    with pytest.raises(ConfigError, match=fragment) as caught:
        TrainConfig(**{field: value}).validate()
    assert caught.value.field == field


@pytest.mark.parametrize("model, fragment", [
    (ModelConfig("vgg"), "raw, dense, logistic, cnn, lenet5"), (ModelConfig("dense", ()), "at least one layer"),
    (ModelConfig("dense", (0, 10)), "1 to"), (ModelConfig("dense", (10**8,)), "65,536"),
    (ModelConfig("dense", (60.5, 30)), "whole number"), (ModelConfig("logistic", (10,)), "no hidden layer"),
    (ModelConfig("dense", dropout=1.0), "[0, 1)"), (ModelConfig("raw", dropout=0.5), "only supported"),
    (ModelConfig("cnn", conv_filters=()), "1 to 4 convolutions"), (ModelConfig("cnn", conv_filters=(8,) * 5), "got 5"),
    (ModelConfig("cnn", conv_filters=(32, 0)), "1 to 4,096"), (ModelConfig("cnn", conv_filters=(8.5,)), "whole number"),
    (ModelConfig("dense", conv_filters=(8,)), "convolutional models"), (ModelConfig("cnn", ()), "at least one layer"),
    (ModelConfig("lenet5", (100,)), "does not apply to the lenet5"), (ModelConfig("lenet5", dropout=0.2), "only supported"),
    (ModelConfig("cnn", conv_filters=(8,) * 4, pool_every=1), "shrink the 28x28 image to nothing"),
    (ModelConfig("cnn", pool_every=-1), "whole number of convolutions"), (ModelConfig("cnn", pool_every=1.5), "whole number"),
    (ModelConfig("dense", pool_every=2), "cnn model only"), (ModelConfig("lenet5", pool_every=1), "cnn model only"),
])
def test_bad_model_settings_are_refused(model, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace(")", r"\)")):
        TrainConfig(model=model).validate()


def test_the_convnets_get_their_widths_and_the_mlps_no_filters():
    assert ModelConfig("cnn") == ModelConfig("cnn", (128,), conv_filters=(32, 64))
    assert ModelConfig("lenet5") == ModelConfig("lenet5", (120, 84), conv_filters=(6, 16))
    assert ModelConfig("dense").conv_filters == () and ModelConfig("DNN").conv_filters == ()
    for name in ("cnn", "lenet5"):
        TrainConfig(model=ModelConfig(name)).validate()
    TrainConfig(model=ModelConfig("cnn", (256, 64), 0.5, (8, 16, 32, 64))).validate()


def test_several_devices_rule_out_the_compiled_loop_and_devices_need_mirrored():
    with pytest.raises(ConfigError, match="one device"):
        TrainConfig(jit_compile=True, strategy="mirrored").validate()
    with pytest.raises(ConfigError, match="mirrored"):
        TrainConfig(devices=("/gpu:7",)).validate()
    assert not TrainConfig(strategy="mirrored").compiled and TrainConfig().compiled


def test_the_defaults_validate():
    TrainConfig().validate()
    TrainConfig(data=DataConfig("kmnist")).validate()


@pytest.fixture
def flag_values(monkeypatch):
    """A private FlagValues with the training flags declared from TrainConfig (no offline MNIST of the environment)."""
    monkeypatch.delenv("MNIST_DNN_IDX_DIR", raising=False)
    values = flags.FlagValues()
    cli.define_config_flags(TrainConfig, flag_values=values)
    return values


def test_every_field_is_a_flag_with_the_field_default(flag_values):
    config = TrainConfig()
    for name, default in [("model", "dense"), ("learning_rate", config.learning_rate), ("batch_size", 128),
                          ("dataset", "mnist"), ("jit_compile", None), ("log_dir", None), ("hidden_units", None)]:
        assert flag_values[name].default == default, name
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "data"}
    assert fields <= set(flag_values)


def test_flags_parse_into_the_config(flag_values):
    flag_values(["prog", "--model=DNN", "--hidden_units=256,128", "--learning_rate=0.5", "--devices=/cpu:0,/cpu:1",
                 "--nojit_compile", "--dataset=kmnist"])
    config = cli.tool_config(TrainConfig, flag_values)
    assert config.model == ModelConfig("raw", (256, 128)) and config.learning_rate == 0.5
    assert config.devices == ("/cpu:0", "/cpu:1") and config.jit_compile is False and config.data.dataset == "kmnist"
    assert config.data.validation_size == config_lib.DataConfig.validation_size  # not a flag: its default


def test_no_flags_give_the_default_config(flag_values):
    flag_values(["prog"])
    assert cli.tool_config(TrainConfig, flag_values) == TrainConfig()


def test_a_config_error_is_reported_as_the_flag_of_the_same_name():
    assert cli.message(ConfigError("learning_rate", "must be positive")) == "--learning_rate must be positive"


def test_conv_filters_parse_from_flags_and_default_to_the_models_own(flag_values):
    flag_values(["prog", "--model=cnn", "--conv_filters=16,32", "--dropout=0.25"])
    assert cli.tool_config(TrainConfig, flag_values).model == ModelConfig("cnn", (128,), 0.25, (16, 32))
    flag_values.unparse_flags()
    flag_values(["prog", "--model=lenet5"])
    assert cli.tool_config(TrainConfig, flag_values).model.conv_filters == (6, 16)
    flag_values.unparse_flags()
    flag_values(["prog", "--model=cnn", "--conv_filters=16,16,32,32", "--pool_every=2"])
    assert cli.tool_config(TrainConfig, flag_values).model == ModelConfig("cnn", conv_filters=(16, 16, 32, 32),
                                                                                pool_every=2)


def test_pool_every_groups_the_convolutions_and_the_widths_show_the_groups():
    staged = ModelConfig("cnn", (256,), conv_filters=(16, 16, 32, 32), pool_every=2)
    assert staged.conv_stages() == [(16, 16), (32, 32)] and staged.widths() == "conv 16-16/32-32, 256"
    assert ModelConfig("cnn", conv_filters=(8, 16, 32), pool_every=2).conv_stages() == [(8, 16), (32,)]
    assert ModelConfig("cnn").conv_stages() == [(32, 64)] and ModelConfig("cnn").widths() == "conv 32-64, 128"
    ModelConfig("cnn", conv_filters=(8, 8, 8), pool_every=1).validate()  # 28 -> 13 -> 5 -> 1: still an image


def test_no_preset_pins_the_log_folder_and_each_has_a_run_folder_of_its_own():
    """A preset's --log_dir made every run of it share one TensorBoard folder, whatever its --ckpt_dir."""
    import os

    from mnist_dnn.cli import command_line
    from mnist_dnn.lib.core.run_dir import RESERVED

    folders = {}
    for name in command_line.preset_names():
        lines = (command_line.configs_dir() / f"{name}.cfg").read_text().splitlines()
        assert not [line for line in lines if line.startswith("--log_dir")], name
        ckpt = [line.split("=", 1)[1] for line in lines if line.startswith("--ckpt_dir=")]
        if ckpt:
            folders[name] = os.path.normpath(ckpt[0])
    assert len(set(folders.values())) == len(folders) >= 7, folders
    for name, folder in folders.items():  # none is a run's own best/ or logs/ (the default run's: checkpoints/best)
        assert not (os.path.basename(folder) in RESERVED and os.path.dirname(folder) in folders.values()), name


@pytest.mark.parametrize("config, field", [
    (config_lib.EvaluateConfig(batch_size=0), "batch_size"), (config_lib.EvaluateConfig(batch_size=65_537), "batch_size"),
    (config_lib.EvaluateConfig(batch_size=True), "batch_size"), (config_lib.ExportConfig(quantize="int8"), "quantize"),
    (config_lib.PredictConfig(min_confidence=1.5), "min_confidence"),
    (config_lib.PredictConfig(min_confidence=-0.1), "min_confidence"),
    (config_lib.PredictConfig(min_confidence=float("nan")), "min_confidence"),
    (config_lib.ExportConfig(format="zip"), "format"), (config_lib.ExportConfig(format="litert", quantize="int4"), "quantize"),
    (config_lib.ServeConfig(model_threads=65), "model_threads"), (config_lib.ServeConfig(port=65536), "port"),
])
def test_each_tool_s_config_refuses_what_is_out_of_range_naming_the_field(config, field):
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert caught.value.field == field


def test_each_tool_s_config_takes_its_defaults_and_its_bounds():
    for config in (config_lib.EvaluateConfig(), config_lib.EvaluateConfig(batch_size=config_lib.MAX_BATCH_SIZE),
                   config_lib.ExportConfig(format="litert", quantize="int8"), config_lib.PredictConfig(min_confidence=0),
                   config_lib.PredictConfig(min_confidence=1), config_lib.ServeConfig(model_threads=64)):
        assert config.validate() is config
    assert config_lib.MAX_BATCH_SIZE == 65_536
    with pytest.raises(ConfigError, match="applies to `format`=litert only"):
        config_lib.ExportConfig(format="saved_model", quantize="int8").validate()


def test_a_tool_s_own_flags_are_its_own_its_nested_configs_shared_and_choices_enums(monkeypatch):
    monkeypatch.delenv("MNIST_DNN_IDX_DIR", raising=False)
    values = flags.FlagValues()
    cli.define_config_flags(config_lib.EvaluateConfig, flag_values=values, tool="mnist_dnn.evaluate")
    by_module = {module: {f.name for f in defined} for module, defined in values.flags_by_module_dict().items()}
    assert by_module["mnist_dnn.evaluate"] == {"batch_size", "metrics_file", "confusion_matrix"}
    assert {"ckpt_dir", "checkpoint", "which", "data_dir", "idx_dir", "dataset"} <= by_module["mnist_dnn.cli.app"]
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape("value should be one of <latest|best>")):
        values(["prog", "--which=worst"])
    values(["prog", "--which=best", "--batch_size=10", "--dataset=kmnist", "--checkpoint=c/model.ckpt-5"])
    assert cli.tool_config(config_lib.EvaluateConfig, values) == config_lib.EvaluateConfig(
        config_lib.RestoreConfig(checkpoint="c/model.ckpt-5", which="best"), config_lib.RunData(dataset="kmnist"),
        batch_size=10)
