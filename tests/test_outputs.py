"""Where the tools write their output files (issue 27, item 2); the refusals are cases of test_bad_input.py.

These are the other side: what stays allowed (a new file, an earlier output of the same tool, a
sweep's result.json beside its run, a file replaced on purpose with --overwrite).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import call_tool
from mnist_dnn.cli import app as cli
from mnist_dnn.lib import files
from mnist_dnn.lib.errors import UsageError

METRICS = (("checkpoint", "step", "validation", "test"),)


def test_a_new_file_or_an_earlier_output_of_the_same_kind_may_be_written(tmp_path):
    cli.check_output_file("metrics_file", str(tmp_path / "new.json"), METRICS)
    earlier = tmp_path / "m.json"
    earlier.write_text(json.dumps({"checkpoint": "c", "step": 3, "validation": {}, "test": {}, "more": 1}))
    cli.check_output_file("metrics_file", str(earlier), METRICS)


@pytest.mark.parametrize("content", ['{"checkpoint": "c", "step": 3}', "[1, 2]", "not json", ""])
def test_another_file_is_replaced_only_with_overwrite(tmp_path, content):
    other = tmp_path / "other.json"
    other.write_text(content)
    with pytest.raises(UsageError, match="exists and is not a file this tool wrote"):
        cli.check_output_file("metrics_file", str(other), METRICS)
    cli.check_output_file("metrics_file", str(other), METRICS, overwrite=True)


def test_a_file_beside_a_run_folder_is_not_inside_it(tmp_path):
    """A sweep's <root>/<run>/result.json sits beside the run's ckpt/: allowed."""
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    (tmp_path / "run" / "ckpt" / "model_config.json").write_text("{}")
    cli.check_output_file("result_file", str(tmp_path / "run" / "result.json"), (("step",),))
    with pytest.raises(UsageError, match="is inside a run folder"):
        cli.check_output_file("result_file", str(tmp_path / "run" / "ckpt" / "result.json"), (("step",),))


def test_a_folder_of_checkpoints_without_its_config_is_a_run_folder_too(tmp_path):
    (tmp_path / "model.ckpt-30.index").write_bytes(b"")
    with pytest.raises(UsageError, match="is inside a run folder"):
        cli.check_output_file("metrics_file", str(tmp_path / "m.json"), METRICS)


def test_numbered_folders_without_a_model_are_no_export(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "notes.txt").write_text("a numbered folder of my own")
    cli.check_output_file("metrics_file", str(tmp_path / "m.json"), METRICS)


def test_predict_replaces_its_own_request_and_another_file_with_overwrite(tmp_path):
    digit = tmp_path / "seven.png"
    digit.write_bytes(tf.io.encode_png(np.full((28, 28, 1), 7, np.uint8)).numpy())
    request = tmp_path / "request.json"
    for _ in range(2):  # the second call replaces the first one's request: the tool's own file
        result = call_tool("predict", f"--rest_request={request}", str(digit))
        assert result.returncode == 0, result.stderr
    assert json.loads(request.read_text())["signature_name"] == "serving_bytes"
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    refused = call_tool("predict", f"--rest_request={notes}", str(digit))
    assert refused.returncode == 2 and notes.read_text() == "mine"
    assert call_tool("predict", f"--rest_request={notes}", "--overwrite", str(digit)).returncode == 0
    assert len(json.loads(notes.read_text())["instances"]) == 1


@pytest.mark.parametrize("make", ["fifo", "folder", "link to a fifo"])
def test_a_write_never_replaces_what_is_not_a_regular_file(tmp_path, make):
    """issue 37 (item 1): the atomic write renamed its temporary file over a FIFO or a device."""
    from mnist_dnn.lib import files

    fifo, target = tmp_path / "fifo", tmp_path / "target"
    os.mkfifo(fifo)
    {"fifo": lambda: os.mkfifo(target), "folder": target.mkdir,
     "link to a fifo": lambda: target.symlink_to(fifo)}[make]()
    kind = os.lstat(target).st_mode
    with pytest.raises(UsageError, match="not a regular file"):
        cli.check_output_file("metrics_file", str(target), METRICS, overwrite=True)
    with pytest.raises(OSError, match="not a regular file"):
        files.write_text(str(target), "{}")
    assert os.lstat(target).st_mode == kind and sorted(os.listdir(tmp_path)) == ["fifo", "target"]


# issue 37 (item 2): the reader under every input (the cases of test_bad_input.py: FIFOs, devices, sizes).
def test_an_input_is_read_up_to_its_size_and_one_that_grows_meanwhile_is_refused(tmp_path):
    (tmp_path / "small").write_bytes(b"12345")
    assert files.read_input(str(tmp_path / "small"), 5) == b"12345"
    with pytest.raises(OSError, match="is 5 bytes, over the cap of 4; raise it"):
        files.read_input(str(tmp_path / "small"), 4, "raise it")
    if os.path.exists("/proc/self/status"):  # a regular file of size 0 whose reads return text: it "grows"
        with pytest.raises(OSError, match="grew while it was read"):
            files.read_input("/proc/self/status", 1000)
