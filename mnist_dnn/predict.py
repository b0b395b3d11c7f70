"""Classify image files (PNG, JPEG, BMP, GIF) with an exported SavedModel.

Example (the highest version in exports/mnist):

    python -m mnist_dnn.predict --model_dir=exports/mnist digit.png
"""

import sys

from absl import flags

from mnist_dnn import cli
from mnist_dnn.lib import classifier
from mnist_dnn.lib.errors import DataError, UsageError

flags.DEFINE_string("model_dir", "exports/mnist",
                    "A SavedModel version folder (exports/mnist/1), or a model folder: its highest version.")
FLAGS = flags.FLAGS


def main(argv):
    files = argv[1:]
    if not files:
        raise UsageError("no image files given: python -m mnist_dnn.predict --model_dir=exports/mnist/1 FILE [FILE...]")
    classify = classifier.Classifier(FLAGS.model_dir)
    readable = []
    for file in files:
        try:
            readable.append((file, classifier.read_image(file)))
        except DataError as e:
            print(f"error: {file}: {e}", file=sys.stderr)
    for (file, _), p in zip(readable, classify([image for _, image in readable])):
        print(f"{file}: {p.digit} ({p.probability:.1%}), next best {p.runner_up} ({p.runner_up_probability:.1%})")
    return 1 if len(readable) < len(files) else 0


def run():
    cli.run(main, positional_args=True)


if __name__ == "__main__":
    run()
