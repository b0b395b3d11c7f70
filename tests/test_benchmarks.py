"""benchmarks/: every script runs at --smoke and writes its JSON with the machine record; the harness's parts.

The fast tier runs each script's main() in this process, with the processes it would start (tools, its own
workers, `-c` code, the server) run here too (harness.call and harness.start replaced): TensorFlow starts once for
all of them. The slow tier runs every script as the command it is, with real processes."""

import concurrent.futures
import contextlib
import gc
import hashlib
import importlib
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from keras.src.backend.common import global_state as keras_state  # (dtype policy and seeds: no public getter)
from tensorflow.python.eager import context as tf_context  # (the global seed: no public getter)
from tensorflow.python.util import _pywrap_util_port  # (TensorFlow's own answer; no public name)

import tensorflow as tf
from absl import flags
from conftest import ROOT, _forget_tools, call_tool
from mnist_dnn.lib.experiments import trials
from mnist_dnn.lib.serve import server

BENCHMARKS = ROOT / "benchmarks"
MAKE_UVICORN = server.uvicorn_server


def load(path, name: str):
    """The script at `path` imported afresh as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = load(BENCHMARKS / "harness.py", "harness")  # the module the scripts find as `import harness`


def scripts() -> list[str]:
    """Every benchmark: the folder's listing, so that a new or a stale script cannot be left out."""
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "harness.py")


def committed_results() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in BENCHMARKS.iterdir() if p.is_file()}


def checkout_files() -> set[str]:
    """The checkout's files and folders (not git's, pytest's or Python's caches, nor a virtualenv in it, whose tens of
    thousands of files walked twice a test cost more than the benchmark): a run must add none (logs/, ...)."""
    found = set()
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", ".pytest_cache", "__pycache__", ".import_linter_cache")
                   and not os.path.isfile(os.path.join(folder, d, "pyvenv.cfg"))]
        found.update(os.path.relpath(os.path.join(folder, name), ROOT) for name in dirs + names)
    return found


def smoke(script: str, tiny_data, out) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DNN_IDX_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *smoke_flags(tiny_data, out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    return done, time.perf_counter() - started


def smoke_flags(tiny_data, out) -> list[str]:
    return ["--smoke", f"--out={out}", f"--data_dir={tiny_data.data_dir}", f"--idx_dir={tiny_data.idx_dir}"]


def cpu_flags() -> list[str]:
    with open("/proc/cpuinfo") as f:
        return next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()


def check_machine(machine: dict) -> None:
    """The machine record, against /proc/cpuinfo and this process's TensorFlow (imported whole, same environment)."""
    found = cpu_flags()
    assert machine["cpu"]["cores"] == os.cpu_count()
    assert machine["cpu"]["avx2"] == ("avx2" in found)
    assert machine["cpu"]["avx512"] == sorted(f for f in found if f.startswith("avx512"))
    assert machine["cpu"]["amx"] == sorted(f for f in found if f.startswith("amx"))
    assert machine["tensorflow"]["version"] == tf.__version__
    assert machine["tensorflow"]["onednn"] == _pywrap_util_port.IsMklEnabled()
    assert machine["tensorflow"]["TF_ENABLE_ONEDNN_OPTS"] == os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    assert [len(machine["load_average"][when]) for when in ("before", "after")] == [3, 3]


def check_report(path, name: str) -> None:
    """The script's JSON: its name, --smoke, results without an error row, the machine record."""
    report = json.loads(path.read_text())
    assert (report["benchmark"], report["smoke"]) == (name[:-len(".py")], True)
    assert report["results"], name
    errors = list(error_rows(report["results"]))
    assert not errors, errors  # a worker that failed: the benchmark records it and goes on
    check_machine(report["machine"])


def error_rows(results):
    if isinstance(results, dict):
        if "error" in results:
            yield results["error"]
        for value in results.values():
            yield from error_rows(value)
    elif isinstance(results, list):
        for value in results:
            yield from error_rows(value)


# --- the fast tier: each script in this process ------------------------------------------------


def exit_code(e: SystemExit) -> int:
    if e.code is not None and not isinstance(e.code, int):
        print(e.code, file=sys.stderr)
    return e.code if isinstance(e.code, int) else 0 if e.code is None else 1


def call_in_process(command, timeout=None, env=None) -> subprocess.CompletedProcess:
    """harness.call in this process: `python -m mnist_dnn.TOOL` as call_tool runs it, `python -c CODE`, or a script's
    main() (a benchmark's worker). An exception other than SystemExit is raised here (its traceback in the test)."""
    python, first, *rest = command
    assert python == sys.executable, command
    if first == "-m":
        assert rest[0].startswith("mnist_dnn."), command
        done = call_tool(rest[0].removeprefix("mnist_dnn."), *rest[1:])
        return subprocess.CompletedProcess(command, done.returncode, done.stdout, done.stderr)
    out, err, argv, code = io.StringIO(), io.StringIO(), sys.argv, 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if first == "-c":
                sys.argv = ["-c", *rest[1:]]
                exec(rest[0], {"__name__": "__main__"})
            else:
                sys.argv = [first, *rest]
                load(first, "benchmark_worker").main()
        except SystemExit as e:
            code = exit_code(e)
        finally:
            sys.argv = argv
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


class ServerInProcess:
    """harness.start for `python -m mnist_dnn.serve FLAGS`: the tool's main() in a thread of this process (its flags
    parsed here), its lines on a pipe as a process's stdout. Signals stay with the main thread."""

    def __init__(self, command, monkeypatch):
        assert command[:3] == [sys.executable, "-m", "mnist_dnn.serve"], command
        _forget_tools()
        serve = importlib.import_module("mnist_dnn.serve")
        flags.FLAGS(["serve", *command[3:]])
        read, write = os.pipe()
        self.stdout, self._lines = os.fdopen(read), os.fdopen(write, "w")
        self.servers = []
        monkeypatch.setattr(server, "uvicorn_server", lambda app: self.servers.append(MAKE_UVICORN(app)) or
                            self.servers[-1])
        monkeypatch.setattr(server.processes, "signals_to", lambda *_: contextlib.nullcontext())
        monkeypatch.setattr(serve, "say", lambda line: print(line, file=self._lines, flush=True))
        self.thread = threading.Thread(target=self._main, args=(serve,), daemon=True)
        self.thread.start()

    def _main(self, serve):
        try:
            serve.main([])
        except BaseException as e:
            print(f"error: {e!r}", file=self._lines, flush=True)
            raise
        finally:
            self._lines.close()
            gc.unfreeze()  # main() froze this process's objects, as a server's own

    def terminate(self):
        deadline = time.monotonic() + 60
        while not self.servers and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # the line "Serving" came before the server was made
        for uvicorn in self.servers:
            uvicorn.should_exit = True

    kill = terminate

    def wait(self, timeout=None):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"
        return 0


@contextlib.contextmanager
def process_state_kept():
    """What a benchmark run in this process may change, put back after it: the attributes of mnist_dnn's modules and
    classes (phases.py times the library's functions, cnn_speed.py's bare row removes a check), the environment and
    sys.argv, Keras' global state (speed.py's bfloat16 policy, a peer's keras.utils.set_random_seed), the global
    seeds, the tools' flags. (Op determinism: conftest's autouse fixture.)"""
    owners = [m for name, m in list(sys.modules.items()) if name.startswith("mnist_dnn") and m is not None]
    owners += [c for m in list(owners) for c in vars(m).values()
               if isinstance(c, type) and c.__module__ == m.__name__]
    attributes = [(owner, dict(vars(owner))) for owner in owners]
    environ, argv, keras_globals = dict(os.environ), list(sys.argv), dict(vars(keras_state.GLOBAL_STATE_TRACKER))
    seeds = (tf_context.global_seed(), np.random.get_state(), random.getstate())
    _forget_tools()  # the scripts that import a tool define its flags afresh
    try:
        yield
    finally:
        for owner, saved in attributes:
            for name, value in saved.items():
                if vars(owner).get(name) is not value and name not in ("__dict__", "__weakref__"):
                    setattr(owner, name, value)
        os.environ.clear()
        os.environ.update(environ)
        sys.argv = argv
        vars(keras_state.GLOBAL_STATE_TRACKER).clear()
        vars(keras_state.GLOBAL_STATE_TRACKER).update(keras_globals)
        if tf_context.global_seed() != seeds[0]:
            tf.random.set_seed(seeds[0])
        np.random.set_state(seeds[1])
        random.setstate(seeds[2])
        _forget_tools()


@pytest.mark.parametrize("script", scripts())
def test_every_benchmark_runs_at_smoke_in_process(script, tiny_data, tmp_path, monkeypatch):
    """Its whole code path (its rows, the tools and workers it calls, its JSON and machine record) on the tiny data,
    a round of a few steps, the peers that are not installed skipped; nothing in benchmarks/ changed."""
    before, files = committed_results(), checkout_files()
    out = tmp_path / f"{script}.json"
    with process_state_kept():
        monkeypatch.chdir(ROOT)  # as harness.call runs the commands
        monkeypatch.setattr(harness, "call", call_in_process)
        monkeypatch.setattr(harness, "start", lambda command: ServerInProcess(command, monkeypatch))
        monkeypatch.setattr(trials, "run_workers",  # search's worker processes: its workers' loop, here
                            lambda plan, say: [trials.work(plan, i, say) for i in range(plan.search.workers)])
        monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *smoke_flags(tiny_data, out)])
        try:
            load(BENCHMARKS / script, f"benchmark_{script[:-3]}").main()
        except SystemExit as e:  # a command that failed (harness.Failed), a usage error
            pytest.fail(f"{script} --smoke ended with {e.code!r}")
        finally:
            monkeypatch.undo()
    assert committed_results() == before
    assert checkout_files() == files
    check_report(out, script)


# --- the slow tier: each script as its command -------------------------------------------------


@pytest.mark.slow
def test_every_benchmark_runs_at_smoke_as_a_command(tiny_data, tmp_path):
    """Each script as `python benchmarks/NAME.py --smoke`, a few at a time: its real processes (tools, workers,
    the server); exit 0, its JSON with the machine record, nothing in benchmarks/ changed."""
    names, before, files = scripts(), committed_results(), checkout_files()
    with concurrent.futures.ThreadPoolExecutor(min(6, (os.cpu_count() or 1) + 1)) as pool:
        runs = dict(zip(names, pool.map(lambda name: smoke(name, tiny_data, tmp_path / f"{name}.json"), names)))
    for name, (done, seconds) in sorted(runs.items(), key=lambda item: -item[1][1]):
        print(f"{name}: exit {done.returncode}, {seconds:.1f} s")
    failed = {name: done.stderr[-1500:] for name, (done, _) in runs.items() if done.returncode}
    assert not failed, "\n\n".join(f"{name}:\n{tail}" for name, tail in failed.items())
    assert committed_results() == before
    assert checkout_files() == files
    for name in names:
        check_report(tmp_path / f"{name}.json", name)


# --- the harness's parts -----------------------------------------------------------------------


def test_rows_take_turns_round_by_round():
    calls = []
    rounds = harness.interleaved({"a": lambda: calls.append("a") or len(calls), "b": lambda: calls.append("b") or 0}, 3)
    assert calls == ["a", "b"] * 3
    assert rounds == {"a": [1, 3, 5], "b": [0, 0, 0]}


def test_spread_is_the_median_with_min_and_max():
    values = [3.0, 9.0, 1.0, 4.0]
    assert harness.spread(iter(values)) == {"median": float(np.median(values)), "min": 1.0, "max": 9.0,
                                            "values": values}


def test_smoke_writes_a_temporary_file_and_never_into_benchmarks(tmp_path, capsys):
    parser = harness.parser("doc", "example.json")
    parser.add_argument("--rounds", type=int, default=5)
    assert harness.parse(parser, {"rounds": 1}, []).out == str(BENCHMARKS / "example.json")
    args = harness.parse(parser, {"rounds": 1}, ["--smoke"])
    assert (args.out, args.rounds) == (None, 1)
    assert harness.parse(parser, {"rounds": 1}, ["--smoke", "--rounds=2"]).rounds == 2
    with pytest.raises(SystemExit):
        harness.parse(parser, {"rounds": 1}, ["--smoke", f"--out={BENCHMARKS / 'speed.json'}"])
    assert "measured figures" in capsys.readouterr().err
    assert harness.probe_tensorflow() == {"version": tf.__version__, "onednn": _pywrap_util_port.IsMklEnabled()}
    path = harness.Benchmark("example", args).write({"x": 1})
    try:
        assert os.path.dirname(path) != str(BENCHMARKS)
        report = json.load(open(path))
        assert report["results"] == {"x": 1}
        check_machine(report["machine"])
    finally:
        os.remove(path)
