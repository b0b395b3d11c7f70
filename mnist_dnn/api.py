"""The Python API: train, evaluate and export a model, and classify images, with no flags (docs/python.md). `import
mnist_dnn` offers these names lazily. Settings are named as the tools' flags, and go through the same function from text
to a config (`settings.build`) and the same checks. TensorFlow is imported by the first call that needs it, not by
importing this module."""

import functools
import sys

from absl import flags

from mnist_dnn.cli import app as cli, command_line
from mnist_dnn.lib import onednn, settings
from mnist_dnn.lib.config import (DEFAULT_EXPORT_DIRS, EvaluateConfig, ExportConfig,  # noqa: F401 (the tools' configs)
                                  PredictConfig, RestoreConfig, TrainConfig)
from mnist_dnn.lib.errors import UsageError


def preset(name: str, **changes) -> TrainConfig:
    """The shipped configs/NAME.cfg as a TrainConfig, read as the tools read it, with `changes` (named as flags) on top."""
    if name not in command_line.preset_names():
        raise UsageError(f"no preset {name!r}; choose one of: {', '.join(command_line.preset_names())}")
    values = flags.FlagValues()
    cli.define_config_flags(TrainConfig, flag_values=values)
    others = values(["", *command_line.read_flagfiles([command_line.preset_flagfile(name)], values)], known_only=True)
    given = {flag: values[flag].value for flag in values if values[flag].present}
    return config(**{**dict.fromkeys(arg.lstrip("-").partition("=")[0] for arg in others[1:]), **given, **changes})


def config(**changes) -> TrainConfig:
    """A TrainConfig from settings named as flags (model="cnn", hidden_units=(256, 128), max_steps=500, ...). Without
    `idx_dir`, the MNIST IDX files of $MNIST_DNN_IDX_DIR are used if it is set, as the tools do."""
    return _build(TrainConfig, changes)


def train(train_config: TrainConfig, say=print):
    """Trains (or resumes) the run in `train_config.ckpt_dir`; returns its `TrainResult`."""
    from mnist_dnn.lib.trainer import training

    return training.train(train_config, say=say)


def evaluate(ckpt_dir: str, **changes) -> dict:
    """The metrics of a run's latest checkpoint (`which="best"`, or `checkpoint=PATH`) on validation and test."""
    return evaluate_with(_tool_config(EvaluateConfig, ckpt_dir=ckpt_dir, **changes))


def evaluate_with(evaluate_config: EvaluateConfig, say=print) -> dict:
    """`evaluate` and the evaluate tool: the report of `evaluation.evaluate_checkpoint`."""
    from mnist_dnn.lib.core import data, evaluation

    return evaluation.evaluate_checkpoint(**vars(evaluate_config.restore), **vars(evaluate_config.data),
                                          batch_size=evaluate_config.batch_size,
                                          load_splits=functools.partial(data.load_splits, say=say))


def export(ckpt_dir: str, export_dir: str, **changes) -> str:
    """Exports a run's checkpoint as the next version of `export_dir` (`format="litert"` or "keras"); returns its path."""
    return export_with(_tool_config(ExportConfig, ckpt_dir=ckpt_dir, export_dir=export_dir, **changes))[0]


def export_with(export_config: ExportConfig, say=print) -> tuple[str, str, int]:
    """(the export's path, the checkpoint exported, its step): `export` and the export tool."""
    from mnist_dnn.lib.core import checkpoints, data, exporting
    from mnist_dnn.lib.core.export_dir import version_path

    folder = export_config.export_dir or DEFAULT_EXPORT_DIRS[export_config.format]
    version_path(folder, export_config.version, export_format=export_config.format)  # refused before restoring
    model, run_config, checkpoint, step = checkpoints.restore_model(**vars(export_config.restore))
    checkpoints.check_dataset(checkpoint, run_config, export_config.data.dataset)
    if export_config.format != "litert":
        export = {"saved_model": exporting.export_model, "keras": exporting.export_keras, "onnx": exporting.export_onnx}
        return export[export_config.format](model, folder, export_config.version), checkpoint, step
    representative = None
    if export_config.quantize == "int8":  # calibrated on the training split of the checkpoint's dataset
        where = export_config.data
        splits = data.load_splits(data.DataConfig(run_config.dataset, where.data_dir, where.idx_dir), say=say)
        representative = exporting.representative_images(splits["train"].images)
    path = exporting.export_litert(model, folder, export_config.version, quantize=export_config.quantize,
                                   representative=representative)
    return path, checkpoint, step


def load_exported(path: str):
    """An exported model (a SavedModel, a .tflite, .onnx or .keras file, or a folder's latest version) as a `Classifier`."""
    from mnist_dnn.lib.serve import classifier

    return classifier.Classifier(path)


def use_onednn(choice: str = "auto") -> None:
    """TensorFlow's oneDNN CPU kernels on, off, or `auto` as the tools choose them (lib/onednn.py).

    Call it before TensorFlow is imported: TensorFlow reads the switch once, as it starts.
    """
    if "tensorflow" in sys.modules:
        raise UsageError("use_onednn must be called before TensorFlow is imported: call it first in the program")
    onednn.choose(choice)


def _tool_config(config_class, **changes):
    return _build(config_class, changes).validate()


def _build(config_class, changes: dict):
    unknown = sorted(set(changes) - {name for _, name in settings.flag_fields(config_class)})
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not a setting of {config_class.__name__} (the settings are named as "
                         "the tool's flags: python -m mnist_dnn.train --help)")
    return settings.build(config_class, {**changes, "idx_dir": settings.idx_dir(changes.get("idx_dir"))})
