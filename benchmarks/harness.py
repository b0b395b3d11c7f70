"""What every benchmark runs on: its command line, the machine record, interleaved rounds, the JSON out.

A benchmark script (run as `python benchmarks/NAME.py`, which puts this folder on the path):

    import harness
    parser = harness.parser(__doc__, "NAME.json")          # --smoke, --out, --idx_dir, --data_dir
    parser.add_argument("--rounds", type=int, default=5)
    args = harness.parse(parser, smoke={"rounds": 1})      # --smoke: these defaults, a few seconds
    bench = harness.Benchmark("NAME", args)                # the machine record, the load average before
    rounds = harness.interleaved({"a": measure_a, "b": measure_b}, args.rounds)
    bench.write({name: harness.spread(values) for name, values in rounds.items()}, table)

`--smoke` runs the benchmark's code end to end at tiny sizes, so that a stale one fails the fast
tier (tests/test_benchmarks.py runs every script of this folder so, in its own process, with the
processes a script starts through `call` and `start` run there too); its JSON goes to a temporary
file unless --out names one, and never into this folder, whose JSON files are measured figures.
"""

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# TensorFlow's own answer, from its `_pywrap_util_port` extension loaded alone: importing all of
# TensorFlow costs 4-5 CPU seconds, which the benchmarks that only start other processes would pay
# for this one record. In a process of its own: loading the extension beside a full import of
# TensorFlow crashes that process at exit. Run with the benchmark's environment, it answers as the
# processes the benchmark starts will find it (TF_ENABLE_ONEDNN_OPTS, the CPU).
_TENSORFLOW_PROBE = """
import glob, importlib.metadata, importlib.util, json, os
folder = os.path.dirname(importlib.util.find_spec("tensorflow").origin)
path = glob.glob(os.path.join(folder, "python", "util", "_pywrap_util_port*.so"))[0]
port = importlib.util.module_from_spec(importlib.util.spec_from_file_location("_pywrap_util_port", path))
distribution = importlib.metadata.packages_distributions()["tensorflow"][0]
print(json.dumps({"version": importlib.metadata.version(distribution), "onednn": port.IsMklEnabled()}))
"""


def main(run) -> None:
    """Runs the benchmark's `run()`, then ends its process without Python's teardown of TensorFlow.

    That teardown costs a second or more of CPU and checks nothing (the tools end their process so
    too); the benchmark's files are closed by then. A SystemExit's message goes to stderr, as Python prints it.
    """
    try:
        run()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def parser(doc: str, out: str) -> argparse.ArgumentParser:
    """The options every benchmark has; `out` is the name of its JSON in this folder."""
    result = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--smoke", action="store_true",
                        help="tiny sizes, a few seconds: checks that the benchmark runs, measures nothing")
    default_out = os.path.join(HERE, out)
    result.add_argument("--out", default=default_out, help="the JSON results (default: %(default)s; with --smoke, "
                                                           "a temporary file)")
    result.add_argument("--idx_dir", default=os.environ.get("MNIST_DNN_IDX_DIR"),
                        help="a folder of the four MNIST IDX files (default: $MNIST_DNN_IDX_DIR; none: TFDS downloads)")
    result.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "mnist_dnn_bench_tfds"),
                        help="the TFDS folder the data is imported into (once)")
    result.set_defaults(default_out=default_out)
    return result


def parse(parser: argparse.ArgumentParser, smoke: dict, argv=None, rest: bool = False) -> argparse.Namespace:
    """The arguments; with --smoke, `smoke` replaces the defaults (what the command line says still wins).

    With `rest`, the arguments the parser does not know are left in `args.rest` (for a tool's flags)."""
    if parser.parse_known_args(argv)[0].smoke:
        parser.set_defaults(**smoke)
    args, args.rest = parser.parse_known_args(argv) if rest else (parser.parse_args(argv), [])
    if args.smoke and args.out == args.default_out:
        args.out = None  # a temporary file, chosen when written
    elif args.smoke and os.path.dirname(os.path.abspath(args.out)) == HERE:
        parser.error(f"--smoke does not write into {HERE}: its JSON files are measured figures; "
                     "leave --out out (a temporary file) or name a file elsewhere")
    return args


# --smoke's flags for a `mnist_dnn.train` (or `.search`) command: a few steps, no diagnostics, and the tf.data runner,
# since compiling the default loop with XLA takes most of such a short run's seconds when XLA's cache is cold (a
# fresh checkout's tests); the real runs compile.
SMOKE_TRAINING = ["--max_steps=5", "--eval_every=5", "--checkpoint_every=5", "--log_every=5", "--nodiagnostics",
                  "--nojit_compile"]


def cpu(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The CPU's model, its vector extensions (AVX2, FMA, any AVX-512 and AMX) and the cores this process may use."""
    try:
        with open(cpuinfo) as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        fields = {}
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = fields.get("flags", "").split()
    return {"model": fields.get("model name", platform.processor() or platform.machine()),
            "family": fields.get("cpu family"), "avx2": "avx2" in flags, "fma": "fma" in flags,
            "avx512": sorted(f for f in flags if f.startswith("avx512")),
            "amx": sorted(f for f in flags if f.startswith("amx")),
            "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0))}


def tensorflow() -> dict:
    """TensorFlow's version and whether its oneDNN kernels are on, as TensorFlow reports it, and the variable."""
    if "tensorflow" in sys.modules:  # imported already (a benchmark run in a test's process): its own answer
        from tensorflow.python.util import _pywrap_util_port
        found = {"version": sys.modules["tensorflow"].__version__, "onednn": _pywrap_util_port.IsMklEnabled()}
    else:
        found = probe_tensorflow()
    return {**found, "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}


def probe_tensorflow() -> dict:
    """TensorFlow's version and oneDNN answer, from a process that loads only the extension that knows it."""
    done = subprocess.run([sys.executable, "-c", _TENSORFLOW_PROBE], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def commit() -> str | None:
    """The checkout's commit (with -dirty if it has changes), or None outside a git checkout."""
    try:
        done = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None


class Benchmark:
    """One run of a benchmark: the machine record at its start, the JSON at its end."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name, self.args = name, args
        self.machine = {"cpu": cpu(), "tensorflow": tensorflow(), "python": platform.python_version(),
                        "commit": commit(), "load_average": {"before": os.getloadavg()}}

    def write(self, results, table: str = "") -> str:
        """Writes the JSON (date, machine record with the load average after, arguments, results) and prints `table`."""
        self.machine["load_average"]["after"] = os.getloadavg()
        arguments = {k: v for k, v in vars(self.args).items() if k not in ("out", "default_out", "worker")}
        report = {"benchmark": self.name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "smoke": self.args.smoke, "machine": self.machine, "arguments": arguments, "results": results}
        if table:
            report["table"] = table
        path = self.args.out
        if path is None:
            handle, path = tempfile.mkstemp(prefix=f"mnist_dnn_smoke_{self.name}_", suffix=".json")
            os.close(handle)
        with open(path, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        if table:
            print(table)
        print(f"wrote {path}", flush=True)
        return path


def interleaved(rows: dict, rounds: int) -> dict[str, list]:
    """Each row's measure() once a round, the rows in turn (A B A B ...): a machine's drift hits every row alike."""
    values = {name: [] for name in rows}
    for round_ in range(rounds):
        for name, measure in rows.items():
            values[name].append(measure())
            print(f"round {round_ + 1}/{rounds}, {name}: {values[name][-1]}", flush=True)
    return values


def seconds(work) -> float:
    """The wall seconds of work()."""
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def spread(values) -> dict:
    """The median of the measurements, with their minimum, maximum and all of them."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def installed(rows, needs: dict) -> list:
    """The rows whose framework (needs[row], a module name) is installed; says which it skips."""
    kept = []
    for row in rows:
        module = needs.get(row)
        if module and importlib.util.find_spec(module) is None:
            print(f"{row}: skipped, {module} is not installed (pip install -r benchmarks/requirements.txt)", flush=True)
        else:
            kept.append(row)
    return kept


class Failed(SystemExit):
    """A command that failed or timed out: uncaught, it ends the benchmark with its message (exit 1)."""


# call() and start() are where a benchmark starts another process (a tool, a worker, a server): the fast
# tier replaces them with in-process runs of the same commands (tests/test_benchmarks.py).


def call(command: list[str], timeout: float | None = None, env=None) -> subprocess.CompletedProcess:
    """Runs `command` from the checkout's root, its output captured. Raises subprocess.TimeoutExpired."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def start(command: list[str]) -> subprocess.Popen:
    """Starts `command` from the checkout's root, its stdout a pipe of text lines."""
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)


def run(command: list[str], timeout: float | None = None, env=None) -> tuple[float, str]:
    """Runs `command` from the checkout's root: its wall seconds and stdout. Raises Failed."""
    started = time.perf_counter()
    try:
        done = call(command, timeout, env)
    except subprocess.TimeoutExpired:
        raise Failed(f"error: timed out after {timeout} s: {' '.join(command)}") from None
    if done.returncode:
        raise Failed(f"error: exit {done.returncode}: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started, done.stdout


def in_workers(command: list[str], rows: list[str], rounds: int, together: bool, timeout=None) -> dict[str, list]:
    """Interleaved rounds of rows measured by worker processes.

    `command + ["--worker=ROW,..."]` measures those rows and prints one JSON line {"row": ROW, ...}
    for each. Every row gets a fresh process; with `together` (--smoke), a round's rows share one.
    A worker that fails or times out gives each of its rows {"error": the last line of its message}.
    """
    def measure(group):
        try:
            _, stdout = run(command + ["--worker=" + ",".join(group)], timeout)
            lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
            return {line.pop("row"): line for line in lines}
        except Failed as e:
            return {row: {"error": str(e.code).strip().splitlines()[-1]} for row in group}

    groups = [rows] if together else [[row] for row in rows]
    values = {row: [] for row in rows}
    for measured in interleaved({",".join(group): lambda g=group: measure(g) for group in groups}, rounds).values():
        for found in measured:
            for row, value in found.items():
                values[row].append(value)
    return values


def worker_line(row: str, result: dict) -> None:
    """What a worker prints for one row (read by in_workers)."""
    print(json.dumps({"row": row, **result}), flush=True)
