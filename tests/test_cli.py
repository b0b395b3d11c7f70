"""The command-line tools, run as a user runs them, in fresh processes."""

import gzip
import json
import shutil

import pytest

from conftest import ROOT, assert_one_line_error, run_cli, write_idx_folder


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


def test_a_flagfile_with_an_unknown_flag_is_refused(tmp_path):
    flagfile = tmp_path / "x.cfg"
    flagfile.write_text("--model=raw\n--hidden=128\n")
    result = run_cli("train", f"--flagfile={flagfile}", f"--ckpt_dir={tmp_path / 'c'}")
    assert_one_line_error(result, 2, "hidden")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.cfg"]


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


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained_ckpt(tiny_data, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("trained") / "ckpt"
    result = run_cli("train", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={ckpt}", "--max_steps=10",
                     "--checkpoint_every=5", f"--log_dir={ckpt}-logs", "--hidden_units=16")
    assert result.returncode == 0, result.stderr[-2000:]
    return ckpt


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _flip_bytes(path):
    raw = bytearray(path.read_bytes())
    for i in range(0, len(raw), 7):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


CHECKPOINT_DAMAGE = {
    "truncated index": (lambda c: _truncate(c / "model.ckpt-10.index", 40), "cannot restore"),
    "corrupted data": (lambda c: _flip_bytes(next(c.glob("model.ckpt-10.data-*"))), "cannot restore"),
    "missing config": (lambda c: (c / "model_config.json").unlink(), "model_config.json is missing"),
    "malformed config": (lambda c: (c / "model_config.json").write_text("{not json"), "is malformed"),
    "config of another model": (lambda c: (c / "model_config.json").write_text(
        json.dumps({"name": "raw", "hidden_units": [16], "dropout": 0.0, "dataset": "mnist"})), "cannot restore"),
}


@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGE)
def test_damaged_checkpoints_are_one_line_errors_that_modify_nothing(trained_ckpt, tiny_data, tmp_path, damage):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(trained_ckpt, ckpt)
    corrupt, fragment = CHECKPOINT_DAMAGE[damage]
    corrupt(ckpt)
    before = _snapshot(ckpt)
    result = run_cli("evaluate", f"--data_dir={tiny_data.data_dir}", f"--ckpt_dir={ckpt}",
                     f"--checkpoint={ckpt / 'model.ckpt-10'}")
    assert_one_line_error(result, 1, fragment)
    assert _snapshot(ckpt) == before


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
    before = _snapshot(tmp_path)
    result = run_cli("train", f"--idx_dir={idx}", f"--data_dir={tmp_path / 'tfds'}", f"--ckpt_dir={tmp_path / 'ckpt'}")
    assert_one_line_error(result, 1, fragment)
    assert _snapshot(tmp_path) == before and not (tmp_path / "tfds").exists()
