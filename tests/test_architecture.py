"""The layers of the house (issue 34): import-linter's contracts in setup.cfg hold, and would catch a break.

`lint-imports` reads the contracts from setup.cfg and the package from the path: it runs on this
checkout, and on a copy of the package with one forbidden import added, where it must fail.
"""

import os
import re
import shutil
import subprocess
import sys

import grimp
import pytest

from conftest import ROOT

LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")  # comes with import-linter


def lint_imports(checkout) -> subprocess.CompletedProcess:
    """`lint-imports` on the package and setup.cfg of `checkout`, writing no cache there."""
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--no-logo", "setup.cfg"], cwd=checkout,
                          env={**os.environ, "PYTHONPATH": str(checkout)}, capture_output=True, text=True, timeout=120)


def words(text: str) -> str:
    return " ".join(text.split())


def test_the_layer_contracts_hold():
    linted = lint_imports(ROOT)
    assert linted.returncode == 0, linted.stdout[-3000:] + linted.stderr[-2000:]
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken\.", linted.stdout), linted.stdout


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory):
    """A copy of the package and setup.cfg, to break; and what `lint-imports` says of it unbroken (each test
    restores the file it breaks)."""
    folder = tmp_path_factory.mktemp("checkout")
    shutil.copytree(ROOT / "mnist_dnn", folder / "mnist_dnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", folder)
    return folder, words(lint_imports(folder).stdout)


@pytest.mark.parametrize("importer, imported", [
    ("mnist_dnn.lib.trainer.steps", "mnist_dnn.lib.serve.classifier"),  # trainer and serve apart
    ("mnist_dnn.lib.core.data", "mnist_dnn.lib.trainer.batches"),  # core below the trainer
    ("mnist_dnn.lib.files", "mnist_dnn.lib.core.export_dir"),  # the ground below the core
])
def test_a_forbidden_import_breaks_a_contract(package_copy, importer, imported):
    copy, unbroken = package_copy
    path = copy.joinpath(*importer.split(".")).with_suffix(".py")
    original = path.read_text()
    package, name = imported.rsplit(".", 1)
    chain = f"- {importer} -> {imported} (l.{len(original.splitlines()) + 1})"  # as lint-imports reports it
    assert chain not in unbroken  # the copy as it is
    path.write_text(original + f"from {package} import {name}  # forbidden\n")
    try:
        linted = lint_imports(copy)
    finally:
        path.write_text(original)
    assert linted.returncode == 1 and "BROKEN" in linted.stdout, linted.stdout[-3000:] + linted.stderr[-2000:]
    assert chain in words(linted.stdout), linted.stdout[-3000:]


def test_the_module_graph_has_no_cycle():
    """Counted as lint-imports counts (`Analyzed N files, M dependencies`): every import in a module, lazy ones too."""
    graph = grimp.build_graph("mnist_dnn", cache_dir=None)
    edges = [(importer, imported) for importer in graph.modules
             for imported in graph.find_modules_directly_imported_by(importer)]
    print(f"the import graph: {len(graph.modules)} modules, {len(edges)} edges")  # issue 34 asks for at most 150
    cycles = [(a, b) for a, b in edges if graph.chain_exists(importer=b, imported=a)]
    assert not cycles
