"""The training display in a real terminal: tmux at 80 and 160 columns, read back with capture-pane.

A run is stopped with Ctrl-C once its progress bar shows, then resumed: the screen must show the
stop on a line of its own, a bar that counts from the step it resumed at, accuracy in % as the
validation lines have it, examples/s as a whole number, and no line longer than the terminal.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

BAR = re.compile(r"^step (\d+)/(\d+) .* \d\d:\d\d<\d\d:\d\d, loss \d+\.\d{4}, accuracy \d+\.\d\d%, [\d,]+ ex/s")


class Terminal:
    """A tmux server of its own with one window of `width` columns, running bash."""

    def __init__(self, width: int, env: dict):
        self.socket = f"mnist-dnn-test-{os.getpid()}-{width}"
        self.env = env
        self._tmux("new-session", "-d", "-x", str(width), "-y", "50", "bash --noprofile --norc")
        self._tmux("set-option", "-g", "history-limit", "5000")
        self.socket_path = self._tmux("display-message", "-p", "#{socket_path}").strip()

    def _tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], env=self.env, capture_output=True, text=True,
                              check=True, timeout=30).stdout

    def type(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def screen(self) -> list[str]:
        """Every line shown since the start, wrapped lines joined back (-J): one entry per line printed."""
        return [line.rstrip() for line in self._tmux("capture-pane", "-p", "-J", "-S", "-").splitlines()]

    def wait_for(self, pattern: str, after: int = 0, timeout: float = 240) -> int:
        """The index of the first screen line at or after `after` that matches `pattern`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, line in enumerate(self.screen()[after:], after):
                if re.search(pattern, line):
                    return i
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}:\n" + "\n".join(self.screen()))

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], env=self.env, capture_output=True, timeout=30)
        if os.path.exists(self.socket_path):  # the server leaves its socket file behind
            os.remove(self.socket_path)


@pytest.fixture(scope="module")
def tmux():
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it from Debian's packages: apt-get install tmux)")


@pytest.mark.slow
@pytest.mark.parametrize("width", [80, 160])
def test_the_progress_display_in_a_real_terminal_stops_resumes_and_fits(tmux, width, tiny_data, tmp_path):
    env = {**os.environ, "TERM": "xterm-256color",
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    env.pop("MNIST_DNN_IDX_DIR", None)
    env.pop("COLUMNS", None)  # the terminal's own width, as a user's shell has it
    env.pop("LINES", None)
    train = ["python", "-m", "mnist_dnn.train", f"--data_dir={tiny_data.data_dir}", "--ckpt_dir=run",
             "--hidden_units=32", "--batch_size=16", "--eval_every=20000", "--checkpoint_every=100000"]
    terminal = Terminal(width, env)
    try:
        terminal.type(f"cd {shlex.quote(str(tmp_path))}", "Enter")  # short paths in the lines: words fit
        terminal.type(shlex.join([*train, "--max_steps=1000000"]), "Enter")
        terminal.wait_for(BAR.pattern)
        terminal.type("C-c")
        stopped = terminal.wait_for(r"Stopped by signal 2 at step \d+")
        step = int(re.search(r"at step (\d+)", terminal.screen()[stopped])[1])
        terminal.type(shlex.join([*train, f"--max_steps={step + 3000}"]), "Enter")
        done = terminal.wait_for(r"^Done at step \d+", after=stopped)
        screen = terminal.screen()
    finally:
        terminal.close()
    shown = "\n".join(screen)
    # Nothing wrapped: the header, the bar, the validation and stop lines all fit the terminal.
    assert [line for line in screen if len(line) > width and "python -m mnist_dnn.train" not in line] == [], shown
    assert screen[stopped].startswith("Stopped by signal 2"), shown  # not glued to the bar
    assert any(line.startswith("Training dense 784-32-10 with adam") for line in screen), shown
    resumed = next(i for i, line in enumerate(screen) if line.startswith("Resumed from "))
    bars = [BAR.match(line) for line in screen[resumed:done]]
    counts = [int(bar[1]) for bar in bars if bar]
    assert counts and min(counts) > step and max(counts) == step + 3000, shown  # counts on from the resumed step
    assert all(int(bar[2]) == step + 3000 for bar in bars if bar), shown
    assert not re.search(r"\d\.\d{4}\b(?!,)", "\n".join(line for line in screen if BAR.match(line)).replace("loss ", "")), shown
