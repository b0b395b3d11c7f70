"""Export a checkpoint as a SavedModel version for TensorFlow Serving, or as a LiteRT, Keras or ONNX file.

Examples (write exports/mnist/1, then 2, ... on later exports; LiteRT: exports/mnist_litert/N/):

    python -m mnist_dnn.export --ckpt_dir=checkpoints/fast --export_dir=exports/mnist
    python -m mnist_dnn.export --ckpt_dir=checkpoints/fast --format=litert --quantize=int8
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

from mnist_dnn import api
from mnist_dnn.api import ExportConfig

cli.define_config_flags(ExportConfig, tool=__name__)


def main(argv):
    del argv
    path, checkpoint, step = api.export_with(cli.tool_config(ExportConfig).validate(), say=cli.say)
    print(f"Exported {checkpoint} (step {step}) to {path}")


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
