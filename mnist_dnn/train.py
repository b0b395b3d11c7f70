"""Train an MNIST model: checkpoints go to --ckpt_dir, TensorBoard logs to --log_dir.

A run stopped (Ctrl-C, a kill) resumes where it was when the same command runs again.

Example (the shipped config that reaches 98% test accuracy quickest):

    python -m mnist_dnn.train --preset=fast

Every training flag is a field of lib.config.TrainConfig (its default and help live there).
"""

from mnist_dnn.cli import app as cli  # first: in a tool's process, Ctrl-C during the imports below is one line

import contextlib

from absl import flags

from mnist_dnn import api

cli.define_train_flags(api.TrainConfig)
FLAGS = flags.FLAGS
# The forms of the result file (an existing one of these is the tool's own): a run's figures, or its error.
RESULT_KINDS = (("step", "start_step", "checkpoint"), ("error", "exit_code"))


def main(argv):
    del argv
    if FLAGS.result_file:  # (refused, it gets no error written into it)
        cli.check_output_file("result_file", FLAGS.result_file, RESULT_KINDS, overwrite=FLAGS.overwrite,
                              written=tuple(d for d in (FLAGS.ckpt_dir, FLAGS.export_dir) if d))
    try:
        result = api.train(cli.tool_config(api.TrainConfig), say=cli.say)
    except api.Error as e:
        if FLAGS.result_file:  # for programs that run this tool (the sweep): the error, machine-readable
            with contextlib.suppress(OSError):  # a full disk: the error itself says so
                cli.write_output(FLAGS.result_file, {"error": cli.message(e), "exit_code": e.exit_code,
                                                     "busy": isinstance(e, api.BusyError)})
        raise
    if FLAGS.result_file:
        cli.write_output(FLAGS.result_file, result.to_json())
    if result.stopped_by_signal:
        return 128 + result.stopped_by_signal


def run():
    cli.run(main, presets=True)


if __name__ == "__main__":
    run()
