"""The command-line tools, run as a user runs them, in fresh processes."""

import json

import pytest

from conftest import ROOT, assert_one_line_error, run_cli


@pytest.mark.parametrize("args, fragments", [
    (["--model=cnn"], ["--model='cnn'", "raw, dense, logistic"]),
    (["--optimizer=adamax"], ["--optimizer='adamax'", "sgd"]),
    (["--dataset=cifar10"], ["--dataset='cifar10'", "fashion_mnist"]),
    (["--learning_rate=0"], ["--learning_rate must be a positive"]),
    (["--batch_size=-3"], ["--batch_size must be a positive"]),
    (["--max_steps=0"], ["--max_steps must be a positive"]),
    (["--hidden_units=256,x"], ["--hidden_units must be comma-separated integers"]),
    (["--hidden_units=256,0"], ["--hidden_units must be positive"]),
    (["--flagfile=configs/missing.cfg"], ["missing.cfg"]),
    (["--no_such_flag=1"], ["no_such_flag"]),
    (["stray"], ["unexpected arguments"]),
])
def test_bad_train_flags_are_one_line_usage_errors_that_write_nothing(tmp_path, args, fragments):
    result = run_cli("train", f"--ckpt_dir={tmp_path / 'ckpt'}", f"--log_dir={tmp_path / 'logs'}",
                     f"--data_dir={tmp_path / 'tfds'}", *args, cwd=ROOT)
    assert_one_line_error(result, 2, *fragments)
    assert not list(tmp_path.iterdir())


def test_flagfile_values_are_overridden_by_the_command_line(tmp_path):
    flagfile = tmp_path / "x.cfg"
    flagfile.write_text("--model=raw\n--learning_rate=0.5\n")
    result = run_cli("train", f"--flagfile={flagfile}", "--learning_rate=-1", f"--ckpt_dir={tmp_path / 'c'}")
    assert_one_line_error(result, 2, "--learning_rate must be a positive number, got -1.0")


@pytest.mark.parametrize("make_dir, fragment", [
    (False, "does not exist"),
    (True, "holds no checkpoint"),
])
def test_evaluate_without_a_checkpoint_is_a_one_line_error(tmp_path, make_dir, fragment):
    ckpt_dir = tmp_path / "ckpt"
    if make_dir:
        ckpt_dir.mkdir()
    result = run_cli("evaluate", f"--ckpt_dir={ckpt_dir}", f"--data_dir={tmp_path / 'tfds'}")
    assert_one_line_error(result, 1, fragment)


def test_evaluate_refuses_a_checkpoint_of_another_architecture(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    result = run_cli("train", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={ckpt}", "--max_steps=5",
                     f"--log_dir={tmp_path / 'logs'}", "--hidden_units=16")
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((ckpt / "model_config.json").read_text())
    (ckpt / "model_config.json").write_text(json.dumps({**config, "hidden_units": [17]}))
    result = run_cli("evaluate", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={ckpt}")
    assert_one_line_error(result, 1, "cannot restore", "model.ckpt-5")
