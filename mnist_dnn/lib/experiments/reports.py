"""The report of a sweep or a search: its runs ranked by best validation accuracy and their curves, in the root's
report files (roots.py lists them); on a search root a run's status is its trial's state in the study."""

import csv
import dataclasses
import functools
import io
import math
import os
import socket
import warnings

import numpy as np
import tensorflow as tf

from mnist_dnn.lib import files
from mnist_dnn.lib.core import data, evaluation
from mnist_dnn.lib.errors import first_line
from mnist_dnn.lib.experiments import roots, search, sweeps
from mnist_dnn.lib.core.checkpoint_store import CheckpointStore

PARTS = ("train", "validation", "diagnostics")  # a run's summaries: its log folder's tag prefixes
PLOTS_HEIGHT = 4.2  # inches of report.png above the legend
LEGEND_MARGIN = 0.2  # inches around the legend (constrained layout's padding)
PLOTS_HINT = "install matplotlib (pip install matplotlib, or the package's plots extra) to draw report.png"
FEW_TRIALS = 10  # parameter importances from fewer finished trials say so
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting", "FAIL": "failed"}


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    params: dict
    status: str  # done, unfinished, not started; a search's trial: complete, pruned, running, waiting, failed
    steps: int | None = None
    best_accuracy: float | None = None  # validation
    best_step: int | None = None
    test_accuracy: float | None = None  # of the best checkpoint
    wall_time_s: float | None = None  # of the attempt that finished the run
    examples_per_second: float | None = None
    resumed_from_step: int | None = None
    host: str | None = None  # a search's trial: where it trained, so that every root's report finds it
    folder: str | None = None


def collect_row(root: str, name: str, params: dict, data_dir=None, idx_dir=None, load_splits=data.load_splits,
                status: str | None = None) -> Row:
    """The run's row; `status` (a search trial's state) replaces the one its folder tells."""
    folder = roots.run_dir(root, name)
    ckpt_dir = os.path.join(folder, roots.CKPT_DIR)
    done_path = os.path.join(folder, roots.DONE_FILE)
    if not os.path.isdir(ckpt_dir):
        return Row(name, params, status or "not started")
    best = CheckpointStore(ckpt_dir).read_best()
    test_accuracy = None
    if best is not None:
        test_accuracy = evaluation.evaluate_checkpoint(ckpt_dir, data_dir=data_dir, idx_dir=idx_dir, which="best",
                                                       load_splits=load_splits)["test"]["accuracy"]
    fields = dict(best_accuracy=best and best.accuracy, best_step=best and best.step, test_accuracy=test_accuracy)
    if not os.path.exists(done_path):
        return Row(name, params, status or "unfinished", (CheckpointStore(ckpt_dir).steps() or [None])[-1], **fields)
    done = files.read_json(done_path)
    return Row(name, params, status or "done", done["steps"], wall_time_s=done["wall_time_s"],
               examples_per_second=done["examples_per_second"], resumed_from_step=done["resumed_from_step"], **fields)


def collect(root: str, data_dir=None, idx_dir=None, say=print) -> tuple[list[str], list[Row]]:
    """The varied flag names and the rows, best validation accuracy first (runs without one last).

    `say` tells of a dataset import (the test accuracy of each run's best checkpoint needs the data)."""
    load_once = functools.lru_cache(maxsize=None)(functools.partial(data.load_splits, say=say))  # one dataset for all
    row = functools.partial(collect_row, root, data_dir=data_dir, idx_dir=idx_dir, load_splits=load_once)
    if os.path.isdir(root) and search.is_search_root(root):
        names, rows = trial_rows(search.load_from_root(root), root, row)
    else:
        sweep = sweeps.load(root)
        names, rows = list(sweep["grid"]), [row(r["name"], r["params"]) for r in sweep["runs"]]
    rows.sort(key=lambda r: -r.best_accuracy if r.best_accuracy is not None else math.inf)
    return names, rows


def trial_rows(study, root: str, row) -> tuple[list[str], list[Row]]:
    """The space's names, and the row of each trial folder of the study, from every root that shares it (its latest
    trial): `row` reads a folder under `root`; another root's trial is what the study holds of it."""
    latest = {t.user_attrs["folder"]: t for t in study.get_trials(deepcopy=False) if "folder" in t.user_attrs}
    names = [spec.split("=", 1)[0] for spec in study.user_attrs.get("search", {}).get("space", [])]
    rows = []
    for name, trial in sorted(latest.items()):
        params = {"trial": name, **{n: value_text(trial.params.get(n, "")) for n in names}}
        status = STATES.get(trial.state.name, trial.state.name.lower())
        host, folder = where(trial, root)
        if _in_root(trial, root):
            rows.append(dataclasses.replace(row(name, params, status=status), host=host, folder=folder))
        else:  # a folder on another root: what the study holds
            rows.append(Row(name, params, status, **reported(trial), host=host, folder=folder))
    return ["trial", *names], rows


def value_text(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _in_root(trial, root: str) -> bool:
    return "folder" in trial.user_attrs and os.path.isdir(os.path.join(root, trial.user_attrs["folder"]))


def where(trial, root: str) -> tuple[str | None, str | None]:
    """(host, folder) of the trial: its folder under `root`, or where the host that trained it wrote it."""
    if _in_root(trial, root):
        return trial.user_attrs.get("host") or socket.gethostname(), roots.run_dir(root, trial.user_attrs["folder"])
    folder = trial.user_attrs.get("root") and os.path.join(trial.user_attrs["root"], trial.user_attrs["folder"])
    return trial.user_attrs.get("host"), folder


def reported(trial) -> dict:
    """The best validation the trial reported to the study, and its step: for a trial whose folder is elsewhere."""
    values = trial.intermediate_values
    step = max(values, key=lambda s: (values[s], -s)) if values else None
    return {"steps": trial.last_step, "best_accuracy": values.get(step), "best_step": step}


COLUMNS = ("status", "steps", "best val acc", "best step", "test acc (best)", "wall s", "examples/s")


def cells(row: Row) -> list[str]:
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    wall = fmt(row.wall_time_s, ".1f")
    if row.resumed_from_step:
        wall += f" (from step {row.resumed_from_step})"
    return [row.status, fmt(row.steps, "d"), fmt(row.best_accuracy, ".2%"), fmt(row.best_step, "d"),
            fmt(row.test_accuracy, ".2%"), wall, fmt(row.examples_per_second, ",.0f")]


def table(names: list[str], rows: list[Row]) -> list[list[str]]:
    where = any(r.folder for r in rows)  # a search's: the host and folder of each trial
    header = ["rank", *names, *COLUMNS, *(["host", "folder"] if where else [])]
    return [header] + [[str(i), *(r.params[n] for n in names), *cells(r), *([r.host or "", r.folder or ""] if where
                                                                            else [])] for i, r in enumerate(rows, 1)]


def format_text(grid: list[list[str]]) -> str:
    widths = [max(len(row[c]) for row in grid) for c in range(len(grid[0]))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)).rstrip() for row in grid)


def format_markdown(grid: list[list[str]]) -> str:
    lines = ["| " + " | ".join(row) + " |" for row in grid]
    lines.insert(1, "|" + "---|" * len(grid[0]))
    return "\n".join(lines) + "\n"


def write_csv(path: str, names: list[str], rows: list[Row]) -> None:
    """Plain numbers (fractions, seconds), one row per run, in rank order."""
    fields = ["rank", *names, "status", "steps", "best_val_accuracy", "best_step", "test_accuracy_of_best",
              "wall_time_s", "examples_per_second", "resumed_from_step", "run", "host", "folder"]
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(fields)
    for i, r in enumerate(rows, 1):
        writer.writerow([i, *(r.params[n] for n in names), r.status, r.steps, r.best_accuracy, r.best_step,
                         r.test_accuracy, r.wall_time_s, r.examples_per_second, r.resumed_from_step, r.name,
                         r.host, r.folder])
    files.write_text(path, text.getvalue())


def read_scalars(log_dir: str, tag: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a scalar summary (stored as tensors) a run logged: `read_scalars("runs/x/logs",
    "validation/accuracy")`. A part's folder, as runs before 2026-12 wrote them (`read_scalars("runs/x/logs/validation",
    "accuracy")`), reads both layouts: a run resumed since has both."""
    from tensorboard.backend.event_processing import event_accumulator

    parent, part = os.path.split(os.path.normpath(log_dir))
    by_step = {}
    for event_dir, name in ((log_dir, tag), *([(parent, f"{part}/{tag}")] if part in PARTS else [])):
        if not os.path.isdir(event_dir):
            continue
        acc = event_accumulator.EventAccumulator(event_dir, size_guidance={event_accumulator.TENSORS: 0})
        acc.Reload()
        if name in acc.Tags()["tensors"]:  # a resume rewrites steps: the last value of each
            by_step.update({e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(name)})
    steps = np.array(sorted(by_step), int)
    return steps, np.array([by_step[s] for s in steps])


def _pyplot():
    """matplotlib's pyplot, drawing to files only; None without matplotlib (the `plots` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(root: str, names: list[str], rows: list[Row], path: str) -> bool:
    """Draws validation accuracy and training loss against step for every run; False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, PLOTS_HEIGHT), dpi=100, layout="constrained")
    for row in rows:
        logs = os.path.join(roots.run_dir(root, row.name), roots.LOGS_DIR)
        label = ", ".join(row.name if row.params[n] == row.name else f"{n}={row.params[n]}" for n in names)
        line, = left.plot(*read_scalars(logs, "validation/accuracy"), marker=".", label=label)
        right.plot(*read_scalars(logs, "train/loss"), color=line.get_color(), label=label)
    left.set(title="validation accuracy", xlabel="step")
    right.set(title="training loss", xlabel="step", yscale="log")
    for axes in (left, right):
        axes.grid(alpha=0.3)
    _legend_below(figure, left)
    try:
        files.write_with(path, lambda f: figure.savefig(f, format="png"))
    finally:
        plt.close(figure)
    return True


def _legend_below(figure, axes) -> None:
    """The runs' legend under both plots, the figure made taller to hold it.

    Inside an axes, the legend of a search's many trials ran off the figure. As many columns as
    labels of the longest one's length fit in the width (about 120 characters at the small size).
    """
    handles, labels = axes.get_legend_handles_labels()
    if not labels:  # runs without hyperparameters to tell them apart
        return
    columns = max(1, min(4, 120 // max(map(len, labels))))
    legend = figure.legend(handles, labels, loc="outside lower center", ncols=columns, fontsize="small")
    height = legend.get_window_extent(figure.canvas.get_renderer()).height / figure.dpi
    figure.set_figheight(PLOTS_HEIGHT + height + LEGEND_MARGIN)


def report(root: str, data_dir=None, idx_dir=None, out=print) -> list[Row]:
    """Prints the ranked table and writes report.csv, report.md and report.png into `root`."""
    names, rows = collect(root, data_dir, idx_dir, out)
    grid = table(names, rows)
    out(format_text(grid))
    study = search.load_from_root(root) if search.is_search_root(root) else None
    best = study and best_trial_line(root, study)
    if best:
        out(best)
    written = [os.path.join(root, n) for n in (roots.REPORT_CSV, roots.REPORT_MD)]
    write_csv(written[0], names, rows)
    files.write_text(written[1], format_markdown(grid) + (f"\n{best}\n" if best else ""))
    png = os.path.join(root, roots.REPORT_PNG)
    if plot(root, names, rows, png):
        written.append(png)
    else:
        out(f"No picture: {PLOTS_HINT}.")
    if study is not None:
        written += plot_study(study, root, out)
    out(f"Wrote {', '.join(written)}")
    return rows


def best_trial_line(root: str, study) -> str | None:
    """Names the best complete trial of a search, its run folder and host (any root's)."""
    best = best_trial(study)
    if best is None:
        return None
    host, folder = where(best, root)
    return (f"Best trial: {best.number} in {folder or best.user_attrs['folder']}{f' on {host}' if host else ''} "
            f"(best validation accuracy {best.value:.2%}): "
            + ", ".join(f"{k}={value_text(v)}" for k, v in best.params.items()))


def best_trial(study):
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return max(complete, key=lambda t: t.value) if complete else None


def plot_study(study, root: str, say) -> list[str]:
    """Optuna's optimization history and parameter importances as PNGs in `root` (with matplotlib)."""
    plt = _pyplot()
    if plt is None or best_trial(study) is None:
        return []
    plots = search.optuna().visualization.matplotlib
    drawings = dict(zip(roots.STUDY_PLOTS, (plots.plot_optimization_history, plots.plot_param_importances)))
    written = []
    finished = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
    for name, draw in drawings.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # matplotlib: an empty legend
                axes = draw(study)
        except (ValueError, RuntimeError) as e:  # too few finished trials, or a single-valued space
            say(f"No {name}: {first_line(e)}")
            continue
        if draw is plots.plot_param_importances and finished < FEW_TRIALS:
            caveat = f"from {finished} finished trials only: a rough guide until {FEW_TRIALS} or more"
            axes.set_title(f"{axes.get_title()}\n({caveat})")
            say(f"{name}: {caveat}")
        path = os.path.join(root, name)
        axes.figure.set_size_inches(8, 5)
        axes.figure.tight_layout()
        # Two searches sharing a root may draw at once: each writes its own temporary file.
        files.write_with(path, lambda f: axes.figure.savefig(f, format="png", dpi=100))
        plt.close(axes.figure)
        written.append(path)
    return written
