"""benchmarks/: every script runs at --smoke and writes its JSON with the machine record; the harness's parts."""

import concurrent.futures
import contextlib
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np
import pytest
from tensorflow.python.util import _pywrap_util_port  # (TensorFlow's own answer; no public name)

import tensorflow as tf
from conftest import ROOT, _environment

BENCHMARKS = ROOT / "benchmarks"
_spec = importlib.util.spec_from_file_location("benchmarks_harness", BENCHMARKS / "harness.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


# The benchmarks that start no other TensorFlow process run in this one (their main(), as `python
# benchmarks/NAME.py --smoke` calls it), which has TensorFlow started: a start-up of some 5 CPU seconds
# saved for each. Not phases.py, which times the start-up of its own process and wraps the library's
# functions for good: it runs as a script, beside them. Every other script of the folder starts the
# tools, workers or a server (two to four TensorFlow start-ups each, 145 CPU seconds in all): the slow tier.
IN_PROCESS = ("dropout_masks.py", "inference.py", "periodic_stop.py", "phases.py")


def scripts() -> list[str]:
    """Every benchmark: the folder's listing, so that a new or a stale script cannot be left out."""
    return sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "harness.py")


def committed_results() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in BENCHMARKS.iterdir() if p.is_file()}


def smoke_arguments(script: str, tiny_data, out) -> list[str]:
    return [str(BENCHMARKS / script), "--smoke", f"--out={out}", f"--data_dir={tiny_data.data_dir}",
            f"--idx_dir={tiny_data.idx_dir}"]


def smoke(script: str, tiny_data, out) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DNN_IDX_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *smoke_arguments(script, tiny_data, out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    return done, time.perf_counter() - started


def smoke_here(script: str, tiny_data, out) -> tuple[subprocess.CompletedProcess, float]:
    """`python benchmarks/SCRIPT --smoke` in this process: its main() with the same arguments and environment;
    what it sets in the environment is undone. Exit 1 with the traceback if it raises."""
    argv = smoke_arguments(script, tiny_data, out)
    env = {k: v for k, v in os.environ.items() if k != "MNIST_DNN_IDX_DIR"}
    spec = importlib.util.spec_from_file_location(f"benchmark_{script[:-len('.py')]}", BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    started, code, err = time.perf_counter(), 0, io.StringIO()
    with _environment(env), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        sys.argv, sys.modules["harness"] = argv, harness  # (`import harness`, as beside it)
        try:
            spec.loader.exec_module(module)
            module.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        except Exception:
            code = 1
            traceback.print_exc(file=err)
        finally:
            del sys.modules["harness"]
    return subprocess.CompletedProcess(argv, code, "", err.getvalue()), time.perf_counter() - started


def cpu_flags() -> list[str]:
    with open("/proc/cpuinfo") as f:
        return next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()


def check_machine(machine: dict) -> None:
    """The machine record, against /proc/cpuinfo and this process's TensorFlow (imported whole, same environment)."""
    flags = cpu_flags()
    assert machine["cpu"]["cores"] == os.cpu_count()
    assert machine["cpu"]["avx2"] == ("avx2" in flags)
    assert machine["cpu"]["avx512"] == sorted(f for f in flags if f.startswith("avx512"))
    assert machine["cpu"]["amx"] == sorted(f for f in flags if f.startswith("amx"))
    assert machine["tensorflow"]["version"] == tf.__version__
    assert machine["tensorflow"]["onednn"] == _pywrap_util_port.IsMklEnabled()
    assert machine["tensorflow"]["TF_ENABLE_ONEDNN_OPTS"] == os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    assert [len(machine["load_average"][when]) for when in ("before", "after")] == [3, 3]


def run_at_smoke(names: list[str], tiny_data, tmp_path, here=()) -> None:
    """Each script at --smoke, those in `here` in this process, the others a few at a time in their own, meanwhile:
    exit 0, a JSON with the machine record, nothing in benchmarks/ changed."""
    before = committed_results()
    with concurrent.futures.ThreadPoolExecutor(min(6, (os.cpu_count() or 1) + 1)) as pool:
        started = {name: pool.submit(smoke, name, tiny_data, tmp_path / f"{name}.json")
                   for name in names if name not in here}
        runs = {name: smoke_here(name, tiny_data, tmp_path / f"{name}.json") for name in here}  # meanwhile
        runs.update((name, future.result()) for name, future in started.items())
    for name, (done, seconds) in sorted(runs.items(), key=lambda item: -item[1][1]):
        print(f"{name}: exit {done.returncode}, {seconds:.1f} s")
    failed = {name: done.stderr[-1500:] for name, (done, _) in runs.items() if done.returncode}
    assert not failed, "\n\n".join(f"{name}:\n{tail}" for name, tail in failed.items())
    assert committed_results() == before
    for name in names:
        report = json.loads((tmp_path / f"{name}.json").read_text())
        assert (report["benchmark"], report["smoke"]) == (name[:-len(".py")], True)
        assert report["results"], name
        check_machine(report["machine"])


def test_benchmarks_that_start_no_other_process_run_at_smoke(tiny_data, tmp_path):
    assert set(IN_PROCESS) <= set(scripts())
    run_at_smoke(list(IN_PROCESS), tiny_data, tmp_path, here=[n for n in IN_PROCESS if n != "phases.py"])


@pytest.mark.slow
def test_every_other_benchmark_runs_at_smoke(tiny_data, tmp_path):
    others = [name for name in scripts() if name not in IN_PROCESS]
    assert len(others) >= 9
    run_at_smoke(others, tiny_data, tmp_path)


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
    path = harness.Benchmark("example", args).write({"x": 1})
    try:
        assert os.path.dirname(path) != str(BENCHMARKS)
        report = json.load(open(path))
        assert report["results"] == {"x": 1}
        check_machine(report["machine"])
    finally:
        os.remove(path)
