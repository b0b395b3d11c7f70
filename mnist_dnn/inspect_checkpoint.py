"""List what a checkpoint holds: every key with its shape, dtype and value range.

What the course did with `tf.train.NewCheckpointReader`: a TF2 checkpoint names each value
by the object path to it, e.g. `model/w1/.ATTRIBUTES/VARIABLE_VALUE`.

Example (the latest checkpoint of a run; --which=best or --checkpoint=PATH for another):

    python -m mnist_dnn.inspect_checkpoint --ckpt_dir=checkpoints/fast
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

import json

from mnist_dnn.lib.config import RestoreConfig
from mnist_dnn.lib.errors import CheckpointError

cli.define_config_flags(RestoreConfig)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"  # at most 12 characters


def format_variables(summaries: list) -> str:
    """`checkpoints.VariableSummary`s as a table."""
    width = max([len("key")] + [len(s.key) for s in summaries])
    lines = [f"{'key':<{width}}  {'shape':<12}{'dtype':<9}{'min':>13}{'mean':>13}{'max':>13}"]
    for s in summaries:
        shape = "[" + ", ".join(map(str, s.shape)) + "]"
        lines.append(f"{s.key:<{width}}  {shape:<12}{s.dtype:<9}{_number(s.min):>13}{_number(s.mean):>13}{_number(s.max):>13}")
    return "\n".join(lines)


def describe_config(ckpt_dir: str) -> str:
    """The stored configuration, or why there is none (a bare checkpoint still lists)."""
    from mnist_dnn.lib.core import run_dir

    try:
        return json.dumps(json.loads(run_dir.RunDir(ckpt_dir).load_config().to_json()))  # on one line
    except CheckpointError as e:
        return f"unavailable: {cli.message(e)}"


def main(argv):
    del argv
    from mnist_dnn.lib.core import checkpoints, run_dir  # after cli.run's quiet start-up: they import TensorFlow

    config = cli.tool_config(RestoreConfig)
    path, step, summaries = checkpoints.read_checkpoint_variables(**vars(config))
    print(f"checkpoint {path} (step {'unknown' if step is None else step})")
    print(f"configuration ({run_dir.CONFIG_FILE}): {describe_config(run_dir.RunDir.of_checkpoint(path).path)}")
    print(f"{len(summaries)} values:")
    print(format_variables(summaries))


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
