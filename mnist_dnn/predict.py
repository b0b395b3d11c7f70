"""Classify image files with an exported model (a SavedModel, a LiteRT, ONNX or Keras file), or write a REST request for them.

Example (the highest version in exports/mnist):

    python -m mnist_dnn.predict --model_dir=exports/mnist digit.png

A few of MNIST's test digits to try it on (no model needed; the data is imported the first time):

    python -m mnist_dnn.predict --write_test_digits=digits --digits=3
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

import json
import sys

from absl import flags

from mnist_dnn import api
from mnist_dnn.api import PredictConfig, UsageError

cli.define_config_flags(PredictConfig, tool=__name__)
cli.define_config_flags(api.RunData, only=("data_dir", "idx_dir"))
cli.define_overwrite_flag("rest_request")
REQUEST_KINDS = (("signature_name", "instances"),)  # the keys of the request it writes


def read_files(paths: list[str], max_bytes: int) -> list:
    """The files that are images (`classifier.ImageFile`s); one error line on stderr for each of the others."""
    readable = []
    for path in paths:
        try:
            readable.append(api.read_image_file(path, max_bytes))
        except api.DataError as e:
            print(f"error: {path}: {cli.message(e)}", file=sys.stderr)
    return readable


def describe(path: str, p, config: PredictConfig) -> str:
    """One file's `classifier.Prediction` as a line (or JSON)."""
    confident = p.probability >= config.min_confidence
    if config.json:
        return json.dumps({"file": path, "class": p.digit, "probabilities": list(p.probabilities), "confident": confident})
    line = f"{path}: {p.digit} ({p.probability:.1%}), next best {p.runner_up} ({p.runner_up_probability:.1%})"
    return line if confident else f"{line}, uncertain (below {100 * config.min_confidence:g}%)"


def write_rest_request(readable: list, path: str, signature: str) -> None:
    try:
        cli.write_output(path, api.rest_request(signature, readable))
    except OSError as e:
        raise UsageError(f"cannot write --rest_request {path}: {e.strerror}") from None
    print(f"Wrote a {signature} request for {len(readable)} image{'s' if len(readable) != 1 else ''} to {path}; send it with\n"
          f"  curl -d @{path} -H 'Content-Type: application/json' http://localhost:8501/v1/models/mnist:predict")


def main(argv):
    paths = argv[1:]
    config = cli.tool_config(PredictConfig).validate()
    if config.write_test_digits:
        if paths:
            raise UsageError(f"`write_test_digits` takes no image files; got {' '.join(paths)}")
        return api.write_test_digits(config.write_test_digits, config.digits, data_dir=flags.FLAGS.data_dir,
                                     idx_dir=cli.idx_dir(flags.FLAGS), say=cli.say)
    if not paths:
        raise UsageError("no image files given: python -m mnist_dnn.predict --model_dir=exports/mnist/1 FILE [FILE...]")
    if config.rest_request:
        cli.check_output_file("rest_request", config.rest_request, REQUEST_KINDS, overwrite=flags.FLAGS.overwrite,
                              inputs=tuple(paths))
        readable = read_files(paths, config.max_image_bytes)
        if len(readable) < len(paths):
            return 1  # a request must hold every file: nothing written
        write_rest_request(readable, config.rest_request, config.rest_signature)
        return 0
    classify = api.load_exported(config.model_dir)
    readable = read_files(paths, config.max_image_bytes)
    for file, p in zip(readable, classify([file.pixels for file in readable])):
        print(describe(file.path, p, config))
    return 1 if len(readable) < len(paths) else 0


def run():
    cli.run(main, positional_args=True)


if __name__ == "__main__":
    run()
