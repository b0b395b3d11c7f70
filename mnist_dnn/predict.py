"""Classify image files with an exported model (a SavedModel or a LiteRT file), or write a REST request for them.

Example (the highest version in exports/mnist):

    python -m mnist_dnn.predict --model_dir=exports/mnist digit.png
"""

from mnist_dnn.cli import startup

startup.interrupt_quietly(__name__)  # first: Ctrl-C during the imports below is one line, not a traceback

import json
import sys

from absl import flags

from mnist_dnn.cli import app as cli
from mnist_dnn.lib import config, files
from mnist_dnn.lib.errors import DataError, UsageError

flags.DEFINE_string("model_dir", "exports/mnist",
                    "A SavedModel version folder (exports/mnist/1), a .tflite file, or a model folder: its highest version.")
flags.DEFINE_bool("json", False, "Print one JSON object per file: file, class, probabilities, confident.")
flags.DEFINE_float("min_confidence", 0.5, "Answers whose probability is below this are marked uncertain.")
flags.DEFINE_string("rest_request", None, "Instead of classifying, write the JSON body of a TensorFlow Serving "
                    "REST request (/v1/models/NAME:predict) for the files to this file.")
flags.DEFINE_enum("rest_signature", config.BYTES_SIGNATURE, [config.BYTES_SIGNATURE, config.SERVING_SIGNATURE],
                  "The signature the REST request calls: the encoded files as {\"b64\": ...}, or their pixels.")
flags.DEFINE_integer("max_image_bytes", config.MAX_IMAGE_BYTES, "Larger image files are refused unread.", lower_bound=1)
cli.define_overwrite_flag("rest_request")
FLAGS = flags.FLAGS
REQUEST_KINDS = (("signature_name", "instances"),)  # the keys of the request it writes


def read_files(paths: list[str]) -> list:
    """The files that are images (`classifier.ImageFile`s); one error line on stderr for each of the others."""
    from mnist_dnn.lib.serve import classifier

    readable = []
    for path in paths:
        try:
            readable.append(classifier.read_image_file(path, FLAGS.max_image_bytes))
        except DataError as e:
            print(f"error: {path}: {cli.message(e)}", file=sys.stderr)
    return readable


def describe(path: str, p, min_confidence: float) -> str:
    """One file's `classifier.Prediction` as a line (or JSON)."""
    confident = p.probability >= min_confidence
    if FLAGS.json:
        return json.dumps({"file": path, "class": p.digit, "probabilities": list(p.probabilities), "confident": confident})
    line = f"{path}: {p.digit} ({p.probability:.1%}), next best {p.runner_up} ({p.runner_up_probability:.1%})"
    return line if confident else f"{line}, uncertain (below {100 * min_confidence:g}%)"


def write_rest_request(readable: list, path: str) -> None:
    from mnist_dnn.lib.serve import classifier

    try:
        files.write_text(path, classifier.rest_request(FLAGS.rest_signature, readable))
    except OSError as e:
        raise UsageError(f"cannot write --rest_request {path}: {e.strerror}") from None
    print(f"Wrote a {FLAGS.rest_signature} request for {len(readable)} image{'s' if len(readable) != 1 else ''} to {path}; send it with\n"
          f"  curl -d @{path} -H 'Content-Type: application/json' http://localhost:8501/v1/models/mnist:predict")


def main(argv):
    paths = argv[1:]
    if not paths:
        raise UsageError("no image files given: python -m mnist_dnn.predict --model_dir=exports/mnist/1 FILE [FILE...]")
    if not 0.0 <= FLAGS.min_confidence <= 1.0:
        raise UsageError(f"--min_confidence must be between 0 and 1, got {FLAGS.min_confidence}")
    if FLAGS.rest_request:
        cli.check_output_file("rest_request", FLAGS.rest_request, REQUEST_KINDS, inputs=tuple(paths))
        readable = read_files(paths)
        if len(readable) < len(paths):
            return 1  # a request must hold every file: nothing written
        write_rest_request(readable, FLAGS.rest_request)
        return 0
    from mnist_dnn.lib.serve import classifier  # after cli.run's quiet start-up: it imports TensorFlow

    classify = classifier.Classifier(FLAGS.model_dir)
    readable = read_files(paths)
    for file, p in zip(readable, classify([file.pixels for file in readable])):
        print(describe(file.path, p, FLAGS.min_confidence))
    return 1 if len(readable) < len(paths) else 0


def run():
    cli.run(main, positional_args=True)


if __name__ == "__main__":
    run()
