"""List what a checkpoint holds: every key with its shape, dtype and value range.

What the course did with `tf.train.NewCheckpointReader`: a TF2 checkpoint names each value
by the object path to it, e.g. `model/w1/.ATTRIBUTES/VARIABLE_VALUE`.

Example (the latest checkpoint of a run; --which=best or --checkpoint=PATH for another):

    python -m mnist_dnn.inspect_checkpoint --ckpt_dir=checkpoints/fast
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

import json

from mnist_dnn import api

cli.define_config_flags(api.RestoreConfig)


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


def main(argv):
    del argv
    path, step, summaries = api.read_checkpoint(cli.tool_config(api.RestoreConfig))
    print(f"checkpoint {path} (step {'unknown' if step is None else step})")
    config_file, config = api.stored_config(path)  # or why there is none: a bare checkpoint still lists
    shown = f"unavailable: {cli.message(config)}" if isinstance(config, api.Error) else json.dumps(config)
    print(f"configuration ({config_file}): {shown}")
    print(f"{len(summaries)} values:")
    print(format_variables(summaries))


def run():
    cli.run(main)


if __name__ == "__main__":
    run()
