"""Export a checkpoint as a SavedModel version for TensorFlow Serving, a LiteRT file or a Keras model.

Examples (write exports/mnist/1, then 2, ... on later exports; LiteRT: exports/mnist_litert/N/):

    python -m mnist_dnn.export --ckpt_dir=checkpoints/fast --export_dir=exports/mnist
    python -m mnist_dnn.export --ckpt_dir=checkpoints/fast --format=litert --quantize=int8
"""

from mnist_dnn.cli import startup

startup.interrupt_quietly(__name__)  # first: Ctrl-C during the imports below is one line, not a traceback

from mnist_dnn.cli import app as cli
from mnist_dnn.lib.config import DEFAULT_EXPORT_DIRS, ExportConfig

cli.define_config_flags(ExportConfig, tool=__name__)


def representative_images(config: ExportConfig, dataset: str):
    """Calibration images for int8: drawn from the training split of the checkpoint's dataset."""
    from mnist_dnn.lib.core import data, exporting

    splits = data.load_splits(data.DataConfig(dataset, config.data.data_dir, config.data.idx_dir), say=cli.say)
    return exporting.representative_images(splits["train"].images)


def main(argv):
    del argv
    from mnist_dnn.lib.core import checkpoints, exporting  # after cli.run's quiet start-up: they import TensorFlow
    from mnist_dnn.lib.core.export_dir import version_path

    config = cli.tool_config(ExportConfig).validate()
    folder = config.export_dir or DEFAULT_EXPORT_DIRS[config.format]
    version_path(folder, config.version, export_format=config.format)  # refuse before restoring anything
    model, run_config, checkpoint, step = checkpoints.restore_model(**vars(config.restore))
    checkpoints.check_dataset(checkpoint, run_config, config.data.dataset)
    if config.format == "saved_model":
        path = exporting.export_model(model, folder, config.version)
    elif config.format == "keras":
        path = exporting.export_keras(model, folder, config.version)
    else:
        representative = representative_images(config, run_config.dataset) if config.quantize == "int8" else None
        path = exporting.export_litert(model, folder, config.version, quantize=config.quantize,
                                       representative=representative)
    print(f"Exported {checkpoint} (step {step}) to {path}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
