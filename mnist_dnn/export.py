"""Export a checkpoint as a SavedModel version for TensorFlow Serving, or as a LiteRT file.

Examples (write exports/mnist/1, then 2, ... on later exports; LiteRT: exports/mnist_litert/N/):

    python -m mnist_dnn.export --ckpt_dir=checkpoints/fast --export_dir=exports/mnist
    python -m mnist_dnn.export --ckpt_dir=checkpoints/fast --format=litert --quantize=int8
"""

from mnist_dnn.cli import startup

startup.interrupt_quietly(__name__)  # first: Ctrl-C during the imports below is one line, not a traceback

from absl import flags

from mnist_dnn.cli import app as cli
from mnist_dnn.lib import config
from mnist_dnn.lib.errors import UsageError

DEFAULT_EXPORT_DIRS = {"saved_model": "exports/mnist", "litert": "exports/mnist_litert"}

flags.DEFINE_enum("format", "saved_model", config.EXPORT_FORMATS,
                  "saved_model: for TensorFlow Serving; litert: a .tflite file for phones and microcontrollers.")
flags.DEFINE_enum("quantize", "none", config.QUANTIZATIONS,
                  "With --format=litert: int8 is full-integer post-training quantization, calibrated on "
                  f"{config.REPRESENTATIVE_IMAGES} training images (needs the dataset: --idx_dir or TFDS's).")
flags.DEFINE_string("export_dir", None, "Model folder; each export is a numbered version inside it. "
                    f"Default: {DEFAULT_EXPORT_DIRS['saved_model']}, or {DEFAULT_EXPORT_DIRS['litert']} for LiteRT.")
flags.DEFINE_integer("version", None, "Version number to write (default: the next free one). Never overwritten.")
cli.define_restore_flags()
cli.define_data_flags()
cli.define_dataset_check_flag()
FLAGS = flags.FLAGS


def representative_images(dataset: str):
    """Calibration images for int8: drawn from the training split of the checkpoint's dataset."""
    from mnist_dnn.lib.core import data, exporting

    splits = data.load_splits(data.DataConfig(dataset, FLAGS.data_dir, cli.idx_dir(FLAGS)), say=cli.say)
    return exporting.representative_images(splits["train"].images)


def main(argv):
    del argv
    from mnist_dnn.lib.core import checkpoints, exporting  # after cli.run's quiet start-up: they import TensorFlow
    from mnist_dnn.lib.core.export_dir import version_path

    if FLAGS.quantize != "none" and FLAGS.format != "litert":
        raise UsageError("--quantize applies to --format=litert only")
    export_dir = FLAGS.export_dir or DEFAULT_EXPORT_DIRS[FLAGS.format]
    version_path(export_dir, FLAGS.version, FLAGS.format)  # refuse before restoring anything
    model, run_config, checkpoint, step = checkpoints.restore_model(FLAGS.ckpt_dir, FLAGS.checkpoint, FLAGS.which)
    checkpoints.check_dataset(checkpoint, run_config, FLAGS.dataset)
    if FLAGS.format == "saved_model":
        path = exporting.export_model(model, export_dir, FLAGS.version)
    else:
        representative = representative_images(run_config.dataset) if FLAGS.quantize == "int8" else None
        path = exporting.export_litert(model, export_dir, FLAGS.version, FLAGS.quantize, representative)
    print(f"Exported {checkpoint} (step {step}) to {path}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
