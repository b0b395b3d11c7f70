"""Sweeps: every combination of a grid of training flags, each as its own run, resumably. A grid axis is written
`NAME=V1,V2,...`: values are separated by commas. A list-valued flag (`hidden_units`) writes the elements of one value
joined by `-`, as run folder names do: `hidden_units=128,256-128` is two values, [128] and [256, 128]. Each run is
`<train command> <base flags> <its combination>` in a subprocess (the command is the tool's to give, e.g. `python -m
mnist_dnn.train`), one after another, in `root/<name>/` with `ckpt/`, `logs/` and `train.log`, where the name is the
combination, e.g. `learning_rate=0.1,hidden_units=256-128`. A run that ends well gets a `done.json` (wall time,
examples/s, steps, best); running the sweep again skips those, resumes an interrupted run from its checkpoint (train
resumes by itself) and starts the others. `root/sweep.json` records the sweep, so a different one is refused there."""

import dataclasses
import functools
import itertools
import os
import signal
import subprocess
import time

from mnist_dnn.lib import files, processes
from mnist_dnn.lib.config import TrainConfig, build_config, flag_fields, value_type
from mnist_dnn.lib.experiments import roots
from mnist_dnn.lib.errors import DataError, Error, UsageError

# Flags the sweep sets for each run; a grid or base flag cannot set them.
RUN_FLAGS = ("ckpt_dir", "log_dir", "result_file")
# The training flags that a grid or a search space varies, and those of them that take a list.
TRAIN_FLAGS = [name for _, name in flag_fields(TrainConfig)]
LIST_FLAGS = {name for field, name in flag_fields(TrainConfig) if value_type(field.type) is tuple}


class SweepError(Error):
    """Some runs of a sweep failed."""


class SweepBusy(SweepError):
    """Some runs of a sweep are being trained by another process (the same sweep started twice); none failed."""

    exit_code = 75  # EX_TEMPFAIL of sysexits.h: try again later


@dataclasses.dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[str, ...]  # as written in the grid, e.g. "256-128"


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # the folder name, e.g. "learning_rate=0.1,hidden_units=256-128"
    params: dict  # flag name -> value as written in the grid
    args: tuple[str, ...]  # the flags for train, e.g. ("--learning_rate=0.1", "--hidden_units=256,128")


def parse_axis(spec: str, list_flags, check_value) -> Axis:
    """Parses `NAME=V1,V2`; `check_value(name, value)` raises UsageError on a bad value."""
    name, sep, values = spec.partition("=")
    name = name.strip().lstrip("-")
    if not sep or not name or not values:
        raise UsageError(f"`grid`={spec!r} must be NAME=VALUE1,VALUE2,... e.g. learning_rate=0.1,0.01")
    if name in RUN_FLAGS:
        raise UsageError(f"`grid` cannot vary `{name}`: the sweep sets it for every run under `root`")
    parts = tuple(v.strip() for v in values.split(","))
    if any(not v for v in parts):
        raise UsageError(f"`grid`={spec!r} has an empty value; separate values with single commas")
    if len(set(parts)) != len(parts):
        raise UsageError(f"`grid`={spec!r} repeats a value")
    for value in parts:
        check_value(name, value.replace("-", ",") if name in list_flags else value)
    return Axis(name, parts)


def check_value(source: str, name: str, text: str) -> None:
    """Reads a value that a grid or a search space (the flag `source`) gives training flag `name`, as the flag's."""
    if name not in TRAIN_FLAGS:
        raise UsageError(f"`{source}` names --{name}, which is not a flag of mnist_dnn.train")
    build_config(TrainConfig, {name: text}, source)


def check_axes(axes: list[Axis]) -> None:
    names = [a.name for a in axes]
    if not axes:
        raise UsageError("give at least one `grid`=NAME=VALUE1,VALUE2,...")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"`grid` gives {', '.join(repeated)} more than once; put all values in one `grid`")


def prepare(root: str, grid: list[str], train_settings: dict, given_args: dict[str, str], say) -> tuple[list, list]:
    """(the runs, the flags passed to each) of the sweep of `grid` in `root`, checked before anything is written, and
    recorded in root/sweep.json. `given_args`: the flags given (name -> --name=value), passed on but those of the grid."""
    check_root(root)
    axes = [parse_axis(spec, LIST_FLAGS, functools.partial(check_value, "grid")) for spec in grid]
    check_axes(axes)
    args = base_args(given_args, {a.name for a in axes})
    runs = expand(axes, LIST_FLAGS)
    for run in runs:  # each run's settings, the given ones under its own, pass train's own validation
        build_config(TrainConfig, {**train_settings, **run.params}).validate()
    record(root, describe(axes, args, runs))
    say(f"Sweep of {len(runs)} runs in {root}: {' x '.join(f'{a.name} ({len(a.values)})' for a in axes)}")
    return runs, args


def base_args(given_args: dict[str, str], grid_names) -> list[str]:
    """The training flags given (command line or flagfiles, and train's --overwrite), but those of the grid and those
    the sweep sets per run (--ckpt_dir, --log_dir, --result_file: a single run's flagfile may set them)."""
    skipped = set(grid_names) | set(RUN_FLAGS)
    return [given_args[n] for n in sorted({*TRAIN_FLAGS, "overwrite"}) if n in given_args and n not in skipped]


def expand(axes: list[Axis], list_flags) -> list[Run]:
    """Every combination, the first axis varying slowest."""
    runs = []
    for combination in itertools.product(*(a.values for a in axes)):
        params = {a.name: v for a, v in zip(axes, combination)}
        name = ",".join(f"{k}={v}" for k, v in params.items())
        args = tuple(f"--{k}={v.replace('-', ',') if k in list_flags else v}" for k, v in params.items())
        runs.append(Run(name, params, args))
    return runs


def describe(axes: list[Axis], base_args: list[str], runs: list[Run]) -> dict:
    return {"grid": {a.name: list(a.values) for a in axes}, "base_args": list(base_args),
            "runs": [{"name": r.name, "params": r.params} for r in runs]}


def check_root(root: str | None, fix: str = "pass a folder for the sweep's runs") -> dict | None:
    """Refuses a --root that cannot hold a sweep (`fix`: what to pass instead), and a damaged sweep.json, before
    anything is written; returns the sweep that sweep.json describes, if there is one."""
    if not root:
        raise UsageError("`root` is required: the folder of the sweep's runs, e.g. `root`=runs/lr-width")
    files.check_link("root", root, fix)
    if os.path.exists(root) and not os.path.isdir(root):
        raise UsageError(f"`root` {root} is a file; {fix}")
    path = os.path.join(root, roots.SWEEP_FILE)
    return _read_description(path) if os.path.exists(path) else None


def _read_description(path: str) -> dict:
    try:
        description = files.read_json(path)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path} is not a readable sweep description ({e}); restore it, or pass another `root`") from None
    if not isinstance(description, dict) or not isinstance(description.get("runs"), list):
        raise DataError(f"{path} is not a sweep description (no list of runs); restore it, or pass another `root`")
    return description


def record(root: str, description: dict) -> None:
    """Writes root/sweep.json, or checks that the root holds this very sweep."""
    stored, path = check_root(root), os.path.join(root, roots.SWEEP_FILE)
    if stored is None:
        os.makedirs(root, exist_ok=True)
        files.write_json(path, description)
    elif stored != description:
        raise UsageError(f"{root} holds another sweep ({path}: grid {stored.get('grid')}, base flags "
                         f"{stored.get('base_args')}); pass another `root` or the same flags")


def load(root: str) -> dict:
    description = check_root(root, "pass the folder mnist_dnn.sweep or mnist_dnn.search wrote")
    if description is None:
        raise UsageError(f"{os.path.join(root, roots.SWEEP_FILE)} is missing: is `root`={root} a folder written by "
                         "mnist_dnn.sweep?")
    return description


def train_command(folder: str, run: Run, base_args: list[str], train: list[str]) -> list[str]:
    """`train` (the training tool's command) with the flags of the run in `folder`."""
    return [*train, *base_args, *run.args,
            f"--ckpt_dir={os.path.join(folder, roots.CKPT_DIR)}", f"--log_dir={os.path.join(folder, roots.LOGS_DIR)}",
            f"--result_file={os.path.join(folder, roots.RESULT_FILE)}"]


def execute(folder: str, run: Run, base_args: list[str], train: list[str]) -> int:
    """Runs (or resumes) the run in its `folder`, its output appended to its train.log; writes done.json on success."""
    command = train_command(folder, run, base_args, train)
    started = time.perf_counter()
    with open(os.path.join(folder, roots.LOG_FILE), "a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        # The run saves and stops if the sweep dies, even by SIGKILL; Ctrl-C or SIGTERM to the sweep reach it.
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=processes.die_with_parent)
        with processes.signals_to(lambda signum, frame: child.send_signal(signum)):
            code = child.wait()
    wall = time.perf_counter() - started
    if code == 0:
        write_done(folder, wall, command=command)
    return code


def write_done(folder: str, wall_time_s: float, **extra) -> None:
    """The run's done.json, from the result file its training wrote (a `TrainResult` as JSON): it ended well; the
    report reads its wall time and throughput."""
    result = files.read_json(os.path.join(folder, roots.RESULT_FILE))
    files.write_json(os.path.join(folder, roots.DONE_FILE), {
        "wall_time_s": wall_time_s, "examples_per_second": result["examples_per_second"], "steps": result["step"],
        "resumed_from_step": result["start_step"], "early_stopped": result["early_stopped"], "best": result["best"],
        **extra})


def last_error(root: str, name: str) -> str:
    """The run's error, as train wrote it to its result file; else the last line of its log."""
    try:
        return "error: " + files.read_json(os.path.join(roots.run_dir(root, name), roots.RESULT_FILE))["error"]
    except (OSError, ValueError, KeyError, TypeError):
        with open(os.path.join(roots.run_dir(root, name), roots.LOG_FILE)) as f:
            lines = [line.strip() for line in f if line.strip()]
        return (lines or ["(empty log)"])[-1]


def run_all(root: str, runs: list[Run], base_args: list[str], train: list[str], out=print) -> None:
    """Runs every unfinished run in order with the command `train`. Raises SweepError naming the failed runs, or
    SweepBusy naming those that another process was training (the same sweep started twice): those are busy, not failed.
    """
    failed, busy = [], []
    for i, run in enumerate(runs, 1):
        prefix = f"[{i}/{len(runs)}] {run.name}:"
        outcome = _run_one(root, run, base_args, train, prefix, out)
        (failed if outcome == "failed" else busy if outcome == "busy" else []).append(run.name)
    busy_note = f"; {len(busy)} busy in another process ({', '.join(busy)})" if busy else ""
    if failed:
        raise SweepError(f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed)}){busy_note}; see their "
                         f"{roots.LOG_FILE}, fix the cause and run the same command again to retry them")
    if busy:
        raise SweepBusy(f"{len(busy)} of {len(runs)} runs are being trained by another process ({', '.join(busy)}), "
                        "none failed; run the same command again when it has ended to finish them")


def _run_one(root: str, run: Run, base_args: list[str], train: list[str], prefix: str, out) -> str:
    """Runs one run unless it is done or another process is running it: "done", "failed" or "busy"."""
    folder = roots.run_dir(root, run.name)
    if os.path.exists(os.path.join(folder, roots.DONE_FILE)):
        out(f"{prefix} done already, skipped")
        return "done"
    os.makedirs(folder, exist_ok=True)
    # A second sweep on the same root finds the run held and skips it before it starts anything (the trainer's
    # own lock on ckpt/ would refuse it too, but only after its result file was written).
    with files.folder_lock(folder) as locked:
        if locked:
            resuming = os.path.isdir(os.path.join(folder, roots.CKPT_DIR))
            out(f"{prefix} {'resuming' if resuming else 'starting'} (log: {os.path.join(folder, roots.LOG_FILE)})")
        code = execute(folder, run, base_args, train) if locked else None
    if code is None or code and _was_busy(folder):
        out(f"{prefix} busy: another process is training it; skipped (not failed)")
        return "busy"
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise SweepError(f"interrupted during {run.name} (it saved a checkpoint); run the same command to resume")
    if code:
        out(f"{prefix} failed (exit {code}): {last_error(root, run.name)}")
        return "failed"
    out(f"{prefix} done in {files.read_json(os.path.join(folder, roots.DONE_FILE))['wall_time_s']:.1f} s")
    return "done"


def _was_busy(folder: str) -> bool:
    """Whether the run's trainer found its folder in use by another process (a `train` started by hand)."""
    try:
        return files.read_json(os.path.join(folder, roots.RESULT_FILE)).get("busy") is True
    except (OSError, ValueError, AttributeError):
        return False
