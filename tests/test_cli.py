"""What the tools share: flagfiles, and IDX folders refused before anything is prepared."""

import gzip

import pytest

from conftest import call_tool, folder_hashes, write_idx_folder


def _one_error(result, code, *fragments):
    assert result.returncode == code, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_a_flagfile_with_an_unknown_flag_is_refused(tmp_path):
    flagfile = tmp_path / "x.cfg"
    flagfile.write_text("--model=raw\n--hidden=128\n")
    _one_error(call_tool("train", f"--flagfile={flagfile}", f"--ckpt_dir={tmp_path / 'c'}"), 2, "hidden")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.cfg"]


def test_flagfile_values_are_overridden_by_the_command_line(tmp_path):
    flagfile = tmp_path / "x.cfg"
    flagfile.write_text("--model=raw\n--learning_rate=0.5\n")
    result = call_tool("train", f"--flagfile={flagfile}", "--learning_rate=-1", f"--ckpt_dir={tmp_path / 'c'}")
    _one_error(result, 2, "--learning_rate must be a positive number of at most 1e6; got -1.0")


@pytest.mark.parametrize("damage, fragment", [
    ("no folder", "is not a folder"),
    ("wrong magic", "magic number"),
    ("truncated", "truncated"),
])
def test_a_bad_idx_folder_is_a_one_line_error_that_prepares_nothing(tmp_path, damage, fragment):
    idx = tmp_path / "idx"
    if damage != "no folder":
        write_idx_folder(idx, n_train=20, n_test=10)
        path = idx / "train-images-idx3-ubyte.gz"
        raw = bytearray(gzip.decompress(path.read_bytes()))
        if damage == "wrong magic":
            raw[3] = 0x01
        else:
            raw = raw[:-100]
        path.write_bytes(gzip.compress(bytes(raw)))
    before = folder_hashes(tmp_path)
    result = call_tool("train", f"--idx_dir={idx}", f"--data_dir={tmp_path / 'tfds'}", f"--ckpt_dir={tmp_path / 'ckpt'}")
    _one_error(result, 1, fragment)
    assert folder_hashes(tmp_path) == before and not (tmp_path / "tfds").exists()



def test_the_library_names_settings_by_field_and_the_command_line_names_them_as_flags():
    from absl import flags

    from mnist_dnn.cli import app as cli
    from mnist_dnn.lib.errors import CheckpointError

    tool_flags = flags.FlagValues()  # a tool that defines --ckpt_dir only
    flags.DEFINE_string("ckpt_dir", None, "", flag_values=tool_flags)
    error = CheckpointError("holds no checkpoint; train first, or pass another `ckpt_dir`", field="ckpt_dir")
    assert str(error) == "ckpt_dir holds no checkpoint; train first, or pass another `ckpt_dir`"
    assert cli.message(error, tool_flags) == "--ckpt_dir holds no checkpoint; train first, or pass another --ckpt_dir"
    # A name that is no flag of the running tool stays as the library wrote it.
    assert cli.as_flags("lower `learning_rate`, see `ckpt_dir`", tool_flags) == "lower `learning_rate`, see --ckpt_dir"


def test_the_tools_show_the_librarys_warnings_on_stderr_and_the_rest_on_stdout_with_flag_names(capsys):
    from absl import flags

    from mnist_dnn.cli import app as cli

    cli.say("warning: skipping model.ckpt-10: it is damaged")
    cli.say("Resumed from model.ckpt-20 at step 20")
    out, err = capsys.readouterr()
    assert err == "warning: skipping model.ckpt-10: it is damaged\n"
    assert out == "Resumed from model.ckpt-20 at step 20\n"
    flags.DEFINE_string("say_test_flag", None, "")
    try:
        cli.say("pass another `say_test_flag`")
        assert capsys.readouterr().out == "pass another --say_test_flag\n"
    finally:
        delattr(flags.FLAGS, "say_test_flag")


def test_a_tool_turns_tfds_progress_bars_off(tmp_path, monkeypatch):
    from tensorflow_datasets.core.utils import tqdm_utils

    monkeypatch.setattr(tqdm_utils, "_active", True)  # (no public getter or setter that restores)
    call_tool("report", f"--root={tmp_path}")
    assert tqdm_utils._active is False
