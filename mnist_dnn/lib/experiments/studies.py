"""The Optuna side of a search: the storage, the study, its sampler and pruner, its progress.

Optuna is imported inside the functions: it is an optional extra (`pip install -e ".[search]"`).
"""

import logging
import os
import socket
import warnings

from mnist_dnn.lib import files
from mnist_dnn.lib.experiments import roots, search
from mnist_dnn.lib.config import ConfigError
from mnist_dnn.lib.errors import DataError, UsageError, first_line

INSTALL_HINT = "the search needs Optuna: pip install -e '.[search]' (in a checkout; or 'mnist-dnn-course[search]')"
STORAGE_ENV = "MNIST_DNN_STORAGE"  # the storage URL with its password, which no file holds
FEW_TRIALS = 10  # parameter importances from fewer finished trials say so
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting", "FAIL": "failed"}


def optuna():
    """The optuna module, quiet: its experimental-feature warnings and per-trial INFO lines off."""
    try:
        import optuna as module
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    warnings.filterwarnings("ignore", category=module.exceptions.ExperimentalWarning)
    module.logging.set_verbosity(logging.ERROR)
    return module


def check_storage_url(url: str) -> None:
    kind = url.split(":", 1)[0].split("+", 1)[0] if ":" in url else ""
    if kind not in search.STORAGE_KINDS:
        raise ConfigError("storage", f"{url!r} is not an Optuna RDB storage URL; use one of "
                          f"{', '.join(k + '://' for k in search.STORAGE_KINDS)}, e.g. "
                          "postgresql+psycopg://user@host:5432/db")
    if kind == "sqlite" and url.partition("://")[2].split("?")[0] in ("", "/", "/:memory:"):
        raise ConfigError("storage", f"{url} is a database in memory, which each process has its own of: the "
                          "workers could not share it; name a file (sqlite:///path/study.db), or leave `storage` out")


def shown(url: str | None, masked: bool = True) -> str | None:
    """The URL with *** for its password, for messages; not `masked`: left out, as search.json keeps it."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # noqa: BLE001 (None, or a URL that does not parse, is shown as given)
        return url
    return (parsed if masked else parsed._replace(password=None)).render_as_string(hide_password=True)


def without_password(url: str | None) -> str | None:
    return shown(url, masked=False)


def connect_url(url: str) -> str:
    """The URL to connect with: `url`, or the environment's STORAGE_ENV when that is `url` with a password (else
    the driver finds one in ~/.pgpass, or connects without)."""
    given = os.environ.get(STORAGE_ENV)
    if given and shown(url) == without_password(url) == without_password(given):
        return given
    return url


def _engine_kwargs(url: str) -> dict:
    if url.startswith("sqlite"):  # several workers share the file: wait for its lock; BEGIN is `open_storage`'s
        return {"connect_args": {"timeout": 60, "isolation_level": None}}
    return {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}


def open_storage(url: str):
    """The RDB storage, with heartbeats: a trial whose worker vanished is failed and queued again."""
    op = optuna()
    import sqlalchemy.event
    import sqlalchemy.exc

    url = connect_url(url)
    try:
        storage = op.storages.RDBStorage(
            url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=search.HEARTBEAT_S,
            grace_period=search.GRACE_PERIOD_S,
            heartbeat_stale_trial_callback=op.storages.RetryHeartbeatStaleTrialCallback())
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        if "no password supplied" in str(e):
            raise UsageError(f"the storage {shown(url)} needs a password, and none was given: put the whole URL in "
                             f"the environment, {STORAGE_ENV}=postgresql+psycopg://user:PASSWORD@host/db, or the "
                             "password in ~/.pgpass (no file of the search holds it)") from None
        raise DataError(f"cannot open the study storage {shown(url)}: {first_line(e)}") from None
    if url.startswith("sqlite"):
        # Each transaction takes the write lock as it begins, so that Optuna's read-then-write steps are whole.
        # pysqlite began it at the first write, after the read (and SQLite ignores SELECT ... FOR UPDATE): several
        # workers read the same waiting (or stale) trial, and all took it, trained it in one folder, and failed.
        sqlalchemy.event.listen(storage.engine, "begin", lambda c: c.exec_driver_sql("BEGIN IMMEDIATE"))
    return storage


def default_storage_exists(config: search.SearchConfig) -> bool:
    return os.path.isfile(os.path.join(config.root, roots.STUDY_FILE))


def open_study(config: search.SearchConfig, description: dict, create: bool):
    """Loads the study (or creates it, when `create`), refusing one of another space or objective."""
    op = optuna()
    storage = open_storage(config.storage_url())
    try:
        study = op.load_study(study_name=config.study_name, storage=storage)
    except KeyError:
        if not create:
            raise DataError(f"the storage {shown(config.storage_url())} holds no study {config.study_name}") from None
        study = op.create_study(storage=storage, study_name=config.study_name, direction="maximize",
                                load_if_exists=True)
    stored = study.user_attrs.get("search")
    if stored is None and create:
        study.set_user_attr("search", description)
    elif stored != description:
        raise UsageError(f"the study {config.study_name} in {shown(config.storage_url())} was created with another "
                         f"space or objective ({'; '.join((stored or {}).get('space', []))}; "
                         f"{(stored or {}).get('objective')}); pass the same `space`, or another `study_name` or `root`")
    return study


def make_sampler(name: str, space, seed: int | None, total: int):
    """TPE starts from a third of the budget's trials drawn at random (2 to 10; Optuna's default is 10)."""
    samplers = optuna().samplers
    if name == "grid":
        return samplers.GridSampler({p.name: p.grid() for p in space}, seed=seed)
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    return samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, total // 3)))


def make_pruner(name: str, eval_every: int, max_steps: int):
    """Median: stop a trial below the median of earlier trials at the same step (after 3 trials).
    Hyperband: successive halving over brackets, from one evaluation to the whole run."""
    pruners = optuna().pruners
    if name == "median":
        return pruners.MedianPruner(n_startup_trials=3)
    if name == "hyperband":
        return pruners.HyperbandPruner(min_resource=eval_every, max_resource=max_steps)
    return pruners.NopPruner()


def counts_toward_total(trial) -> bool:
    """Finished trials: complete, pruned, or failed on their own (an error); not those interrupted and queued again."""
    state = trial.state.name
    return state in ("COMPLETE", "PRUNED") or (state == "FAIL" and "error" in trial.user_attrs)


def progress(study) -> tuple[int, int, int]:
    """(finished, running, waiting) trials."""
    trials = study.get_trials(deepcopy=False)
    return (sum(counts_toward_total(t) for t in trials), sum(t.state.name == "RUNNING" for t in trials),
            sum(t.state.name == "WAITING" for t in trials))


def trials_before(study, number: int) -> int:
    """Trials numbered below `number` that finished or will: the ones a new trial comes after."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.number < number and (counts_toward_total(t) or t.state.name in ("RUNNING", "WAITING")))


def frozen(study, number: int):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def folder_name(trial) -> str:
    """A retried trial (a FrozenTrial) trains in its original's folder, and so resumes from its checkpoint."""
    history = trial.system_attrs.get("retry_history") or [trial.number]
    return roots.trial_name(history[0])


def root_description(config: search.SearchConfig) -> dict:
    """What root/search.json holds: the study's name and storage URL, without its password."""
    return {"study_name": config.study_name, "storage": without_password(config.storage)}


def check_root(config: search.SearchConfig) -> None:
    """Refuses a --root that is not a folder, or that holds the trials of another study."""
    files.check_link("root", config.root, "pass a folder for the search's trials")
    if os.path.exists(config.root) and not os.path.isdir(config.root):
        raise ConfigError("root", f"{config.root} is a file; pass a folder for the search's trials")
    if is_search_root(config.root):
        stored = read_root(config.root)
        if {**stored, "storage": without_password(stored.get("storage"))} != root_description(config):
            where = shown(stored.get("storage") or f"its {roots.STUDY_FILE}")
            raise ConfigError("root", f"{config.root} holds the trials of another study ({stored['study_name']} in "
                              f"{where}); pass another --root")


def start(config: search.SearchConfig, space, say) -> None:
    """Creates the study, or checks that the stored one has this space, before anything is written; then the root."""
    description = search.describe(space)
    if config.storage or default_storage_exists(config):
        open_study(config, description, create=True)
    record_root(config, say)
    open_study(config, description, create=True)


def record_root(config: search.SearchConfig, say=print) -> None:
    """root/search.json names the study, for the report (the search refused a root of another study first). One
    written before the password was left out is written again without it."""
    path = os.path.join(config.root, roots.SEARCH_FILE)
    rewrite = os.path.exists(path)
    if rewrite and read_root(config.root) == root_description(config):
        return
    os.makedirs(config.root, exist_ok=True)
    files.write_json(path, root_description(config))
    if rewrite:
        say(f"{path} held the storage's password: written again without it (give it in `storage`, {STORAGE_ENV} or "
            "~/.pgpass)")


def read_root(root: str) -> dict:
    path = os.path.join(root, roots.SEARCH_FILE)
    try:
        stored = files.read_json(path)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{path} is not a readable search description ({e}); restore it, or pass another `root`") from None
    if not isinstance(stored, dict) or "study_name" not in stored:
        raise DataError(f"{path} is not a search description (no study_name); restore it, or pass another `root`")
    return stored


def is_search_root(root: str) -> bool:
    return os.path.isfile(os.path.join(root, roots.SEARCH_FILE))


def load_from_root(root: str):
    stored = read_root(root)
    config = search.SearchConfig(root=root, study_name=stored["study_name"], storage=stored.get("storage"))
    try:
        return optuna().load_study(study_name=config.study_name, storage=open_storage(config.storage_url()))
    except KeyError:
        raise DataError(f"{shown(config.storage_url())} holds no study {config.study_name}") from None


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


def runs(study, root: str) -> tuple[list[str], list[dict]]:
    """The space's names, and one run per trial folder of the study, from every root that shares it (its latest
    trial): name, params, status, trial, host, folder; and `reported` for a folder that is not under `root`."""
    latest = {t.user_attrs["folder"]: t for t in study.get_trials(deepcopy=False) if "folder" in t.user_attrs}
    names = [spec.split("=", 1)[0] for spec in study.user_attrs.get("search", {}).get("space", [])]
    return ["trial", *names], [
        {"name": folder, "params": {"trial": folder, **{n: value_text(t.params.get(n, "")) for n in names}},
         "status": STATES.get(t.state.name, t.state.name.lower()), "trial": t.number,
         **dict(zip(("host", "folder"), where(t, root))), **({} if _in_root(t, root) else {"reported": reported(t)})}
        for folder, t in sorted(latest.items())]


def best(study):
    """The best complete trial of the study, or None."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return max(complete, key=lambda t: t.value) if complete else None


def plot(study, root: str, say) -> list[str]:
    """Optuna's optimization history and parameter importances as PNGs in `root` (with matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    plots = optuna().visualization.matplotlib
    drawings = dict(zip(roots.STUDY_PLOTS, (plots.plot_optimization_history, plots.plot_param_importances)))
    written = []
    if best(study) is None:
        return written
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
