"""The notebooks of notebooks/ (issue 36, item 2): the course's is docs/course.md, and both run top to bottom.

The slow tier executes each one with nbclient in a fresh kernel of this Python (a kernelspec of the
test's own, so that no other "python3" kernel on the machine is used), in a temporary folder, on the
real MNIST, with fewer steps: the quickstart through its parameters cell (a cell after it sets them,
as papermill does), the course by the same rewrites of its step counts as tests/test_course.py. The
install cell runs as written: the package and matplotlib are importable, so it must do nothing.
A last cell added by the test prints what the checks below compare, as JSON.
"""

import importlib.util
import json
import os
import sys

import nbformat
import numpy as np
import pytest
import tensorflow as tf

from conftest import REAL_IDX_DIR, ROOT
from mnist_dnn.lib.core import data

NOTEBOOKS = ROOT / "notebooks"
_spec = importlib.util.spec_from_file_location("build_course", NOTEBOOKS / "build_course.py")
build_course = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_course)


def test_the_course_notebook_is_docs_course_md():
    """Edit docs/course.md, then run `python notebooks/build_course.py`: this fails until then."""
    committed = (NOTEBOOKS / "course.ipynb").read_text()
    assert committed == build_course.notebook(build_course.PAGE.read_text()), \
        "notebooks/course.ipynb is not docs/course.md: run python notebooks/build_course.py"
    notebook = nbformat.reads(committed, as_version=4)
    nbformat.validate(notebook)
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    page = build_course.PAGE.read_text()
    python_blocks = [m[3].strip("\n") for m in build_course.FENCE.finditer(page) if m[1] == "python"]
    assert [source for source in code if not source.startswith("%%bash")][1:] == python_blocks  # after the install cell
    shell = [line for source in code if source.startswith("%%bash") for line in source.splitlines()]
    assert "python -m mnist_dnn.evaluate --ckpt_dir=checkpoints/course-dnn" in shell
    assert not any("tensorboard" in line or "mnist_dnn.sweep" in line for line in shell)  # shown, not run


def test_every_notebook_starts_with_its_install_cell_and_has_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert '%pip install --quiet -e "..[plots]"' in code[0].source, path.name
        assert "if not all(importlib.util.find_spec(name)" in code[0].source, path.name
        assert all(cell.outputs == [] and cell.execution_count is None for cell in code), path.name
        assert notebook.metadata.kernelspec.name == "python3", path.name


def test_the_page_s_blocks_become_cells_by_the_page_s_conventions():
    cells = build_course.cells("Read [speed](speed.md#x), [a](https://a.b/c.md) and [b](#1-top).\n\n"
                               "```python\nx = 1\n```\n\n```sh test\npython -m a\npython -m b\n```\n\n"
                               "```sh\ntensorboard --logdir logs\n```\n\n```\nout\n```\n")
    assert cells[2:] == [("markdown", "Read [speed](../docs/speed.md#x), [a](https://a.b/c.md) and [b](#1-top)."),
                         ("code", "x = 1"), ("code", "%%bash\nset -e\npython -m a\npython -m b"),
                         ("markdown", "```sh\ntensorboard --logdir logs\n```\n\n```\nout\n```")]


def kernel_environment(tmp_path, monkeypatch, real_data) -> dict:
    """A "python3" kernelspec that runs this Python, first on the kernel search path; the kernel's environment."""
    kernels = tmp_path / "jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (the tests')", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter" / "runtime"))
    return {**os.environ, "PYTHONPATH": str(ROOT), "MNIST_DNN_IDX_DIR": REAL_IDX_DIR,
            "TFDS_DATA_DIR": real_data.data_dir, "IPYTHONDIR": str(tmp_path / "ipython")}


def execute(name: str, tmp_path, monkeypatch, real_data, after_parameters: str = "", rewrites=(),
            report: str = "{}") -> tuple[nbformat.NotebookNode, dict]:
    """Runs notebooks/NAME top to bottom in tmp_path/run; (the executed notebook, the JSON of `report`)."""
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in notebook.cells:
        for old, new in rewrites:
            cell.source = cell.source.replace(old, new)
    for old, _ in rewrites:
        assert any(old in cell.source for cell in nbformat.read(NOTEBOOKS / name, as_version=4).cells), old
    if after_parameters:
        at = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
        notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(after_parameters))
    notebook.cells.append(nbformat.v4.new_code_cell(f"import json, sys\nprint(json.dumps({{'python': sys.executable, "
                                                    f"**{report}}}))"))
    env = kernel_environment(tmp_path, monkeypatch, real_data)
    folder = tmp_path / "run"
    folder.mkdir()
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute(env=env)
    nbformat.write(notebook, folder / name)  # to look at (pytest --basetemp=FOLDER keeps it)
    install_cell = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert install_cell.outputs == [], install_cell.outputs  # nothing installed: the package is there
    reported = json.loads(notebook.cells[-1].outputs[-1]["text"])
    assert reported.pop("python") == sys.executable
    return notebook, reported


def images_shown(notebook) -> int:
    return sum("image/png" in output.get("data", {}) for cell in notebook.cells for output in cell.get("outputs", []))


def exported_accuracy(export_path, split: data.Split) -> tuple[float, int]:
    """(accuracy, mistakes) of a SavedModel on a split, computed here: its signature and numpy."""
    signature = tf.saved_model.load(str(export_path)).signatures["serving_default"]
    pixels = tf.reshape(split.images, [-1, 28, 28, 1])
    classes = signature(images=pixels)["classes"].numpy()
    mistakes = int(np.sum(classes != split.labels.numpy()))
    return 1 - mistakes / split.size, mistakes


QUICK_STEPS = 200  # of cnn_fast's 1,720: about 97% test accuracy instead of 99%


@pytest.mark.slow
def test_the_quickstart_runs_top_to_bottom_on_the_real_mnist(real_data, tmp_path, monkeypatch):
    notebook, reported = execute(
        "quickstart.ipynb", tmp_path, monkeypatch, real_data, after_parameters=f"MAX_STEPS = {QUICK_STEPS}",
        report="{'step': result.step, 'validation': result.validation.accuracy, 'test': metrics['test']['accuracy'], "
               "'export': export_path, 'export_accuracy': float(export_accuracy), 'mistakes': len(wrong), "
               "'shown': len(worst), 'logged_steps': [int(s) for s in steps], 'logged': float(accuracy[-1])}")
    assert reported["step"] == QUICK_STEPS
    assert reported["test"] >= 0.95, reported
    # The export's accuracy and its mistakes, as the notebook counted them and as computed here.
    accuracy, mistakes = exported_accuracy(tmp_path / "run" / reported["export"], data.load_splits(real_data)["test"])
    assert (reported["export_accuracy"], reported["mistakes"]) == (pytest.approx(accuracy), mistakes)
    assert abs(reported["export_accuracy"] - reported["test"]) <= 0.0005  # the checkpoint's, up to 5 images
    assert reported["shown"] == min(12, mistakes) and images_shown(notebook) == 2  # the mistakes, the curves
    # The curves: the logs of the run, its last validation at its last step.
    assert reported["logged_steps"][-1] == QUICK_STEPS
    assert reported["logged"] == pytest.approx(reported["validation"], abs=1e-6)


COURSE_REWRITES = (("STEPS = 2000", "STEPS = 200"), ("--max_steps=10000", "--max_steps=1000"))


@pytest.mark.slow
def test_the_course_notebook_runs_top_to_bottom_on_the_real_mnist(real_data, tmp_path, monkeypatch):
    notebook, reported = execute(
        "course.ipynb", tmp_path, monkeypatch, real_data, rewrites=COURSE_REWRITES,
        report="{**{k: float(v) for k, v in accuracies.items()}, 'test': float(test.accuracy), "
               "'cli_test': float(report['test']['accuracy']), 'cli_checkpoint': report['checkpoint']}")
    assert reported["cli_checkpoint"] == "checkpoints/course-dnn/model.ckpt-1000"
    assert reported["cli_test"] >= 0.95, reported  # the course's DNN, 1,000 steps of the command line
    assert reported["DNN"] >= 0.90 and reported["test"] >= 0.90, reported  # 200 steps of section 4
    assert reported["DNN, softmax twice"] < reported["DNN"], reported  # the course's loss learns slower
    assert reported["cnn"] >= 0.85, reported  # 50 steps of section 11
    assert (tmp_path / "run" / "course_curves.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "exports" / "mnist" / "1" / "saved_model.pb").is_file()
