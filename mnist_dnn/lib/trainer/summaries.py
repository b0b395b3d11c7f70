"""A run's TensorBoard files: scalar summaries, the HParams session (its trial, start and end) and the graph.

A run's folder (`logs/`) holds all of them, so that TensorBoard, whose runs are the folders that hold event files,
lists one training as one run; its parts are tag prefixes: train/, validation/, diagnostics/. (Runs before
2026-12 wrote each part into a subfolder, logs/train, logs/validation, logs/diagnostics: four runs.)"""

import glob
import os
import re

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from mnist_dnn.lib.core.run_dir import LOGS_DIR
from mnist_dnn.lib.errors import UsageError


def summary_writer(log_dir: str | None):
    """The run's one writer (TensorBoard follows one growing file per folder); `log_dir=None` writes nothing (the
    other workers of a cluster)."""
    return tf.summary.create_file_writer(log_dir) if log_dir else tf.summary.create_noop_writer()


def log_scalars(writer, step: int, part: str = "", **scalars) -> None:
    """Each scalar as the tag `part/name` (`name` without a part)."""
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tf.summary.scalar(f"{part}/{name}" if part else name, value)


def event_files(log_dir: str) -> list[str]:
    """The event files in the log folder itself (not its subfolders'), oldest first."""
    return sorted(glob.glob(os.path.join(glob.escape(log_dir), "*tfevents*")))


def write_run_summary(writer, hparams: dict, forward_graph, trial: str) -> None:
    """The run's hyperparameters (TensorBoard's HParams dashboard, as trial `trial`) and its model's forward graph
    (Graphs tab), unless None: a resumed run's folder has it already, and TensorBoard warns of a second one."""
    with writer.as_default(step=0):
        hparams_api.hparams(hparams, trial_id=trial)
        if forward_graph is not None:
            tf.summary.graph(forward_graph)
    writer.flush()


_RUN_ID = re.compile(r" \(([0-9a-f]{12})\)$")  # a trial id's run id; none in trials written before runs had ids


def trial_id(log_dir: str, run_id: str) -> str:
    """The run's trial in HParams, `<name> (<run id>)`: unique, so no two runs ever share a row. The name is the
    log folder's, or for `<run>/logs` (the default, a sweep's, a search's) the run's folder."""
    path = os.path.abspath(log_dir)
    name = os.path.basename(os.path.dirname(path)) if os.path.basename(path) == LOGS_DIR else os.path.basename(path)
    return f"{name} ({run_id})"


def check_log_dir(log_dir: str, run_id: str, new_run: bool) -> None:
    """Refuses a log folder that holds another run's TensorBoard events: a run never writes into another's curves.
    A new run takes a folder that no run has logged into; a resumed run, its own (or one with no run id)."""
    for trial in logged_trials(log_dir):
        logged_by = _RUN_ID.search(trial)
        if new_run or (logged_by and logged_by[1] != run_id):
            raise UsageError(f"`log_dir` {log_dir} holds the TensorBoard events of another run (HParams trial "
                             f"{trial!r}); pass another `log_dir`, or leave it out: by default a run logs into "
                             f"its own <ckpt_dir>/{LOGS_DIR}")


def logged_trials(log_dir: str) -> list[str]:
    """The HParams trials recorded in the log folder's own event files (not its subfolders'), oldest first."""
    from google.protobuf.message import DecodeError
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    trials = []
    # TensorBoard's reader: no TensorFlow op, so devices can still be configured after it (--virtual_cpus).
    for path in event_files(log_dir):
        try:
            for event in event_file_loader.EventFileLoader(path).Load():
                for value in event.summary.value:
                    if value.tag == metadata.SESSION_START_INFO_TAG:
                        data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                        trials.append(data.session_start_info.group_name)
        except (tf.errors.OpError, DecodeError, OSError):  # a truncated last record (a killed writer), a foreign file
            continue
    return trials


def write_session_end(log_dir: str, succeeded: bool, **scalars) -> None:
    """How a run ended, for TensorBoard's HParams (its session status), with scalars at step 0 beside it."""
    from tensorboard.plugins.hparams import api_pb2, summary

    status = api_pb2.STATUS_SUCCESS if succeeded else api_pb2.STATUS_FAILURE
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=0):
        tf.summary.experimental.write_raw_pb(summary.session_end_pb(status).SerializeToString(), step=0)
    log_scalars(writer, 0, **scalars)
    writer.close()
