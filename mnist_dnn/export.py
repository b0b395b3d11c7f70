"""Export a checkpoint as a SavedModel version for TensorFlow Serving.

Example (writes exports/mnist/1, then 2, ... on later exports):

    python -m mnist_dnn.export --ckpt_dir=checkpoints/fast --export_dir=exports/mnist
"""

from absl import flags

from mnist_dnn import cli
from mnist_dnn.lib import checkpoints, serving

flags.DEFINE_string("export_dir", "exports/mnist", "Model folder; each export is a numbered version inside it.")
flags.DEFINE_integer("version", None, "Version number to write (default: the next free one). Never overwritten.")
cli.define_restore_flags()
FLAGS = flags.FLAGS


def main(argv):
    del argv
    serving.version_path(FLAGS.export_dir, FLAGS.version)  # refuse before restoring anything
    model, _, checkpoint, step = checkpoints.restore_model(FLAGS.ckpt_dir, FLAGS.checkpoint, FLAGS.which)
    path = serving.export_model(model, FLAGS.export_dir, FLAGS.version)
    print(f"Exported {checkpoint} (step {step}) to {path}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
