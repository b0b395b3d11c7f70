"""Serve an exported model over TensorFlow Serving's REST API, with a page to draw digits on.

The same client code works against this server and against TensorFlow Serving
(`/v1/models/NAME`, `/v1/models/NAME/metadata`, `/v1/models/NAME[/versions/N]:predict`). The
newest version of --model_dir is served, and a newer one is picked up as it appears. Open
http://127.0.0.1:8501/ to draw a digit and see the model's answer as you draw.

Example (Ctrl-C stops it):

    python -m mnist_dnn.serve --model_dir=exports/mnist
    python -m mnist_dnn.serve --model_dir=exports/mnist --host=0.0.0.0   # reachable from a phone on the network
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

import gc
import socket

from mnist_dnn import api
from mnist_dnn.api import ServeConfig

cli.define_config_flags(ServeConfig)


def say(line: str) -> None:
    print(line, flush=True)


def addresses(config: ServeConfig, port: int) -> str:
    if config.host in ("0.0.0.0", "::", ""):
        return (f"http://127.0.0.1:{port}/ here, http://{socket.gethostname()}:{port}/ (or this machine's address) "
                "from another device on the network")
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{port}/"


def main(argv):
    del argv
    config = cli.tool_config(ServeConfig).validate()

    def serving(current, port: int) -> None:
        say(f"Serving {config.model_name} version {current.version} ({current.path}) at {addresses(config, port)}\n"
            f"  REST: http://{config.host}:{port}/v1/models/{config.model_name}:predict (Ctrl-C stops the server)")
        # TensorFlow and the loaded model are hundreds of thousands of Python objects that the garbage
        # collector would go through again and again while a large request's JSON is parsed (most of
        # the time of a 100-image request): set them aside, now and after each new version.
        gc.freeze()

    api.serve(config, say, on_start=serving, after_switch=gc.freeze)
    say("Stopped.")
    return 0


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
