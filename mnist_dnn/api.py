"""The Python API: train, evaluate and export a model, and classify images, with no flags (docs/python.md); and what the
other tools do (inspect, serve, sweep, search, report), which reach the library only through here. `import
mnist_dnn` offers the first names lazily. Settings are named as the tools' flags, and go through the same function from text
to a config (`cli.config_from`) and the same checks. TensorFlow is imported by the first call that needs it, not by
importing this module."""

import functools
import sys

from mnist_dnn.cli import app as cli
from mnist_dnn.lib import onednn
from mnist_dnn.lib.config import (DEFAULT_EXPORT_DIRS, MAX_IMAGE_BYTES, SEARCH_KINDS,  # noqa: F401 (the tools' configs)
                                  EvaluateConfig, ExportConfig, PredictConfig, RestoreConfig, RunData, SearchConfig,
                                  ServeConfig, TrainConfig)
from mnist_dnn.lib.errors import BusyError, CheckpointError, DataError, Error, UsageError  # noqa: F401 (for the tools)


def preset(name: str, **changes) -> TrainConfig:
    """The shipped configs/NAME.cfg as a TrainConfig, read as the tools read it, with `changes` (named as flags) on top."""
    return cli.config_from(TrainConfig, {**cli.preset_settings(name, TrainConfig), **changes})


def config(**changes) -> TrainConfig:
    """A TrainConfig from settings named as flags (model="cnn", hidden_units=(256, 128), max_steps=500, ...). Without
    `idx_dir`, the MNIST IDX files of $MNIST_DNN_IDX_DIR are used if it is set, as the tools do."""
    return cli.config_from(TrainConfig, changes)


def train(train_config: TrainConfig, say=print):
    """Trains (or resumes) the run in `train_config.ckpt_dir`; returns its `TrainResult`."""
    from mnist_dnn.lib.trainer import training

    return training.train(train_config, say=say)


def evaluate(ckpt_dir: str, **changes) -> dict:
    """The metrics of a run's latest checkpoint (`which="best"`, or `checkpoint=PATH`) on validation and test."""
    return evaluate_with(cli.config_from(EvaluateConfig, {"ckpt_dir": ckpt_dir, **changes}).validate())


def evaluate_with(evaluate_config: EvaluateConfig, say=print) -> dict:
    """`evaluate` and the evaluate tool: the report of `evaluation.evaluate_checkpoint`."""
    from mnist_dnn.lib.core import data, evaluation

    return evaluation.evaluate_checkpoint(**vars(evaluate_config.restore), **vars(evaluate_config.data),
                                          batch_size=evaluate_config.batch_size,
                                          load_splits=functools.partial(data.load_splits, say=say))


def export(ckpt_dir: str, export_dir: str, **changes) -> str:
    """Exports a run's checkpoint as the next version of `export_dir` (`format="litert"` or "keras"); returns its path."""
    return export_with(cli.config_from(ExportConfig, {"ckpt_dir": ckpt_dir, "export_dir": export_dir, **changes})
                       .validate())[0]


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


def read_checkpoint(restore_config: RestoreConfig) -> tuple[str, int | None, list]:
    """(the checkpoint's path, its step or None, a `checkpoints.VariableSummary` per value): inspect_checkpoint's list."""
    from mnist_dnn.lib.core import checkpoints

    return checkpoints.read_checkpoint_variables(**vars(restore_config))


def stored_config(checkpoint: str) -> tuple[str, dict | CheckpointError]:
    """(the file in the run folder of `checkpoint` that holds its run's config, the config or why there is none)."""
    from mnist_dnn.lib.core import checkpoints

    return checkpoints.stored_config(checkpoint)


def read_image_file(path: str, max_bytes: int = MAX_IMAGE_BYTES):
    """A PNG, JPEG, BMP or GIF file as a `classifier.ImageFile` (its bytes, its MNIST pixels); DataError if it is none."""
    from mnist_dnn.lib.serve import classifier

    return classifier.read_image_file(path, max_bytes)


def rest_request(signature: str, image_files: list) -> str:
    """The JSON body of TensorFlow Serving's `:predict` request for these `ImageFile`s, with that signature."""
    from mnist_dnn.lib.serve import classifier

    return classifier.rest_request(signature, image_files)


def write_test_digits(folder: str, count: int, data_dir: str | None = None, idx_dir=None, say=print) -> None:
    """The first `count` test images as folder/test-N.png, to try a model on; refuses to replace a file."""
    from mnist_dnn.lib.core import data

    data.write_test_digits(folder, count, data.DataConfig(data_dir=data_dir, idx_dir=idx_dir), say)


def serve(serve_config: ServeConfig, say=print, on_start=lambda servable, port: None,
          after_switch=lambda: None) -> None:
    """Serves the newest version of `serve_config.model_dir` (TensorFlow Serving's REST API, the drawing page) until
    Ctrl-C (`server.run`)."""
    from mnist_dnn.lib.serve import server

    server.run(serve_config, say, on_start, after_switch)


def sweep(root: str, grid: list[str], train_settings: dict, given_args: dict[str, str], say=print) -> None:
    """Trains (or resumes) each combination of `grid` (NAME=V1,V2,...) in `root` by `python -m mnist_dnn.train` with the
    flags given (`given_args`: name -> --name=value; `train_settings`: by flag name), then ranks them, as `report` does."""
    from mnist_dnn.lib.experiments import sweeps

    runs, args = sweeps.prepare(root, grid, train_settings, given_args, say)
    try:
        sweeps.run_all(root, runs, args, [sys.executable, "-m", "mnist_dnn.train"], out=say)
    finally:
        report(root, train_settings["data_dir"], train_settings["idx_dir"], say)


def search(search_config: SearchConfig, space: list[str], base: TrainConfig, say=print) -> None:
    """Runs (or resumes) an Optuna search of `space` (NAME=KIND:ARGS each) around `base`, then ranks its trials."""
    from mnist_dnn.lib.core import data
    from mnist_dnn.lib.experiments import trials

    search_config, params = trials.check_search(search_config, space, base)
    data.prepare(base.data)  # once, here: workers importing it at the same time would race
    plan = trials.start_search(search_config, params, base, say)
    try:
        codes = trials.run_workers(plan, say)
    finally:
        report(search_config.root, base.data.data_dir, base.data.idx_dir, say)
    trials.check_exit_codes(codes)


def report(root: str, data_dir: str | None = None, idx_dir=None, say=print) -> None:
    """Ranks the runs of a sweep or the trials of a search in `root`; writes report.csv, .md and .png there."""
    from mnist_dnn.lib.experiments import reports

    reports.report(root, data_dir=data_dir, idx_dir=idx_dir, out=say)


def use_onednn(choice: str = "auto") -> None:
    """TensorFlow's oneDNN CPU kernels on, off, or `auto` as the tools choose them (lib/onednn.py).

    Call it before TensorFlow is imported: TensorFlow reads the switch once, as it starts.
    """
    if "tensorflow" in sys.modules:
        raise UsageError("use_onednn must be called before TensorFlow is imported: call it first in the program")
    onednn.choose(choice)

