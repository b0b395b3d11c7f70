"""The README, run as a new user runs it: every command of its `sh` blocks, top to bottom, in one shell.

It runs in a copy of the checkout (a fresh clone's files), offline (MNIST_DNN_IDX_DIR, a TFDS
folder of its own), with these mechanical rewrites and nothing else (`script`):

- `pip install` lines are left out: the test runs in the environment that `.[test]` installed;
- the test commands (`python -m pytest`) are left out: they would run this test again;
- every `train`, `sweep` and `search` command trains at most MAX_STEPS steps: a `--max_steps=N` it
  gives becomes `--max_steps=min(N, MAX_STEPS)`, else `--max_steps=MAX_STEPS` is added (flags
  after a preset override it);
- the REST port 8501 becomes a free one: `--port=P` is added to `serve`, and 8501 becomes P in URLs.

A command that fails fails the test, naming the command. Every fenced block of the README must
say what it is (`sh`: commands, run here; `text`: anything else), so no command escapes.
"""

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import REAL_IDX_DIR, ROOT
from mnist_dnn.lib.core import data

MAX_STEPS = 300  # above search_example's --eval_every (250): each trial validates once
TRAINING = re.compile(r"^(python -m mnist_dnn\.(train|sweep|search)|mnist-dnn-(train|sweep|search))\b")
FENCE = re.compile(r"^```(\S*)\s*$")
PORT = "8501"


def blocks(readme: str) -> list[tuple[str, list[str]]]:
    """(language, lines) of every fenced block, in order."""
    found, current = [], None
    for line in readme.splitlines():
        match = FENCE.match(line)
        if match and current is None:
            current = (match[1], [])
        elif line.startswith("```") and current is not None:
            found.append(current)
            current = None
        elif current is not None:
            current[1].append(line)
    assert current is None, "a fenced block is not closed"
    return found


def commands(readme: str) -> list[str]:
    """The commands of the `sh` blocks, continuation lines joined, comments kept."""
    found = []
    for language, lines in blocks(readme):
        assert language in ("sh", "text"), f"a README block says {language or 'nothing'}: mark it sh or text"
        if language == "sh":
            text = "\n".join(lines).replace("\\\n", " ")
            found += [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return found


def _split_comment(command: str) -> tuple[str, str]:
    """The command and its trailing `# comment` (a # outside quotes, after a space)."""
    quote = None
    for i, char in enumerate(command):
        if char in "'\"" and quote in (None, char):
            quote = None if quote else char
        elif char == "#" and quote is None and i and command[i - 1] == " ":
            return command[:i].rstrip(), command[i:]
    return command, ""


def rewrite(command: str, port: int) -> str | None:
    """The command as the test runs it (see the module's docstring); None to leave it out."""
    if command.startswith("pip install") or command.startswith("python -m pytest"):
        return None
    command, _ = _split_comment(command)
    background = command.endswith("&")
    command = command.rstrip("&").rstrip()
    if TRAINING.match(command):
        steps = re.search(r"--max_steps=(\d+)", command)
        if steps:
            command = command.replace(steps[0], f"--max_steps={min(int(steps[1]), MAX_STEPS)}")
        else:
            command += f" --max_steps={MAX_STEPS}"
    if re.match(r"^(python -m mnist_dnn\.serve|mnist-dnn-serve)\b", command):
        command += f" --port={port}"
    command = command.replace(f":{PORT}/", f":{port}/")
    return command + (" &" if background else "")


def script(readme: str, port: int) -> str:
    """The README's commands as one bash script that stops at the first failure, saying which."""
    lines = ["set -e", "trap 'echo \"README command failed: $BASH_COMMAND\" >&2' ERR"]
    for command in commands(readme):
        run = rewrite(command, port)
        if run is not None:
            lines += [f"echo {_quoted('$ ' + run)}", run]
    lines.append("wait")  # a server the README started must have been stopped by the README
    return "\n".join(lines) + "\n"


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_rewrite_caps_training_steps_and_leaves_the_rest_as_written():
    assert rewrite("python -m mnist_dnn.train --preset=fast", 9) == f"python -m mnist_dnn.train --preset=fast --max_steps={MAX_STEPS}"
    assert rewrite("python -m mnist_dnn.train --max_steps=50 --x", 9) == "python -m mnist_dnn.train --max_steps=50 --x"
    assert rewrite("mnist-dnn-search --max_steps=9000", 9) == f"mnist-dnn-search --max_steps={MAX_STEPS}"
    assert rewrite("python -m mnist_dnn.evaluate --ckpt_dir=x  # scores", 9) == "python -m mnist_dnn.evaluate --ckpt_dir=x"
    assert rewrite("python -m mnist_dnn.serve --model_dir=e &   # serves", 9) == "python -m mnist_dnn.serve --model_dir=e --port=9 &"
    assert rewrite("curl http://localhost:8501/v1/models/mnist:predict", 9) == "curl http://localhost:9/v1/models/mnist:predict"
    assert rewrite("python -c \"print('#1')\"", 9) == "python -c \"print('#1')\""
    assert rewrite('pip install -e ".[serve]"', 9) is None and rewrite("python -m pytest -q", 9) is None


def test_every_readme_block_says_whether_it_is_commands_and_the_commands_cover_each_tool():
    readme = (ROOT / "README.md").read_text()
    run = [command for command in commands(readme) if rewrite(command, 1)]
    for tool in ("train", "search", "report", "evaluate", "export", "predict", "serve"):
        assert any(command.startswith(f"python -m mnist_dnn.{tool} ") for command in run), tool


@pytest.mark.slow
def test_the_readme_commands_work_top_to_bottom_in_a_fresh_copy(tmp_path):
    """Issue 26: `--preset=fast --batch_size=32` and the raw model's example failed after the commands before them."""
    if not os.path.isfile(os.path.join(REAL_IDX_DIR, "train-images-idx3-ubyte.gz")):
        pytest.fail(f"the real MNIST is not at {REAL_IDX_DIR}; set {data.IDX_DIR_ENV}")
    clone = tmp_path / "clone"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode == 0 and tracked.stdout:
        for name in tracked.stdout.split("\0"):
            if name and os.path.isfile(ROOT / name):
                os.makedirs((clone / name).parent, exist_ok=True)
                shutil.copy2(ROOT / name, clone / name)
    else:  # not a git checkout (a source archive): the files but what runs and builds leave behind
        shutil.copytree(ROOT, clone, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "logs",
                                                                   "runs", "exports", ".pytest_cache", "__pycache__"))
    before = {str(p.relative_to(clone)) for p in clone.rglob("*")}
    env = {**os.environ, data.IDX_DIR_ENV: REAL_IDX_DIR, "TFDS_DATA_DIR": str(tmp_path / "tfds"),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("PYTHONPATH", None)
    text = script((clone / "README.md").read_text(), _free_port())
    (tmp_path / "readme.sh").write_text(text)
    result = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, f"{result.stderr[-4000:]}\n--- stdout:\n{result.stdout[-4000:]}"
    assert "Done at step 300" in result.stdout and '"predictions"' in result.stdout  # trained; the server answered
    # What the README leaves in the clone is ignored by git (its run folders, exports, digit.png, request.json).
    created = sorted({str(p.relative_to(clone)) for p in clone.rglob("*")} - before)
    subprocess.run(["git", "init", "-q"], cwd=clone, check=True)
    ignored = subprocess.run(["git", "check-ignore", "--stdin"], cwd=clone, input="\n".join(created), text=True,
                             capture_output=True).stdout.split("\n")
    assert [name for name in created if name not in ignored and "__pycache__" not in name] == []


DISTRIBUTION = "mnist-dnn-course"
PIP_INSTALL = re.compile(r"pip install ([^`\n]*)")


def _installed_names(line: str) -> list[str]:
    """What a `pip install ...` line asks for, but options and the paths they take."""
    args = shlex.split(line.split(" #")[0].rstrip(").,;"), posix=True)
    names, skip = [], False
    for arg in args:
        if skip or arg.startswith("-"):
            skip = arg in ("-e", "--editable", "-r", "--requirement", "-c", "--constraint")
            continue
        names.append(arg)
    return names


def _is_ours_or_a_path(requirement: str) -> bool:
    if requirement.startswith((".", "/", "~")):
        return True
    name = re.match(r"[A-Za-z0-9._-]+", requirement)
    return bool(name) and re.sub(r"[-_.]+", "-", name[0]).lower() == DISTRIBUTION


def test_every_install_line_of_the_docs_names_this_distribution_or_a_path():
    """issue 36: `pip install "mnist_dnn[plots]"` installed PyPI's unrelated mnist-dnn 0.1.3."""
    offending = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for command in PIP_INSTALL.findall(line):
                offending += [f"{doc.name}:{number}: {name}" for name in _installed_names(command)
                              if not _is_ours_or_a_path(name)]
    assert not offending, offending


@pytest.mark.parametrize("line, ours", [('-e ".[search]"', True), ('"mnist-dnn-course[plots]"', True),
                                        ("mnist_dnn_course", True), ("-r benchmarks/requirements.txt", True),
                                        ('"mnist_dnn[plots]"', False), ("mnist-dnn", False),
                                        ("-e . optuna-dashboard", False), ('"tensorflow[and-cuda]>=2.21"', False)])
def test_the_install_line_check_tells_ours_from_others(line, ours):
    assert all(map(_is_ours_or_a_path, _installed_names(line))) == ours


def test_the_readme_gives_the_first_runs_measured_time_and_the_one_after():
    """The one-time data import is said, with the figures benchmarks/first_run.py measured."""
    results = json.loads((ROOT / "benchmarks" / "first_run.json").read_text())["results"]
    first, second = (round(results[run]["median"]) for run in ("first", "second"))
    assert f"first\nrun took {first} s, and {second} s from the second on" in (ROOT / "README.md").read_text()
