"""The installed package: its presets from any folder, its licence."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, assert_one_line_error


@pytest.mark.slow
def test_an_installed_package_runs_a_preset_from_any_folder(tiny_data, tmp_path):
    """`pip install .` (not editable): the shipped configs are package data, found by --preset."""
    source, target, work = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "checkpoints",
                                                                "logs", "runs", "exports", "tests", "benchmarks",
                                                                ".pytest_cache"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", f"--target={target}",
                              str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert sorted(p.name for p in (target / "mnist_dnn" / "configs").glob("*.cfg")) == sorted(
        p.name for p in (ROOT / "configs").glob("*.cfg"))
    assert [p.read_text() for p in target.glob("mnist_dnn_course-*.dist-info/**/LICENSE")] == [(ROOT / "LICENSE").read_text()]
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([str(target / "bin" / "mnist-dnn-train"), "--preset=fast", "--max_steps=20",
                             "--batch_size=32", f"--data_dir={tiny_data.data_dir}", "--ckpt_dir=ckpt",
                             "--log_dir=logs"], capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 32" in result.stdout and "Done at step 20" in result.stdout  # the flag after the preset wins
    assert json.loads((work / "ckpt" / "model_config.json").read_text())["hidden_units"] == [512]  # fast.cfg's
    unknown = subprocess.run([str(target / "bin" / "mnist-dnn-train"), "--preset=fastest"], capture_output=True,
                             text=True, env=env, cwd=work, timeout=600)
    assert_one_line_error(unknown, 2, "--preset=fastest", "fast")


def test_the_declared_licence_is_the_one_in_the_license_file():
    import configparser

    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "setup.cfg")
    assert metadata["metadata"]["license"] == "Apache-2.0" and metadata["metadata"]["license_files"] == "LICENSE"
    words = " ".join((ROOT / "LICENSE").read_text().split()[:5])
    assert words == "Apache License Version 2.0, January"
