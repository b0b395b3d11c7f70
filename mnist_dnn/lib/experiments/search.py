"""Hyperparameter search on Optuna: a study of trials, each an ordinary training run folder.

    space (NAME=KIND:ARGS) + base TrainConfig + SearchConfig
      -> an Optuna study in an RDB storage (root/study.db, or a shared PostgreSQL/MySQL URL)
      -> N worker processes; each asks the study for a trial, trains it in root/trial-NNNN/
         (ckpt/, logs/, train.log, result.json, done.json), reports the validation accuracy at
         each evaluation, and stops it through the loop's own stop path when the pruner says so.

Resuming: a trial whose worker was stopped (a signal: it saved a checkpoint) is marked failed and
queued again at once; a worker that vanished without a word (SIGKILL of the whole tree, a lost
machine) stops sending heartbeats, and after `GRACE_PERIOD_S` Optuna fails its trial and queues it
again (RetryHeartbeatStaleTrialCallback). Either way the retry trains in the original trial's
folder, so it resumes from its checkpoint, and only the retry counts towards `trials`.
"""

import dataclasses
import logging
import math
import os
import warnings

from mnist_dnn.lib import files
from mnist_dnn.lib.config import SEARCH_KINDS as KINDS, ConfigError, SearchConfig, TrainConfig, build_config
from mnist_dnn.lib.errors import DataError, UsageError, first_line
from mnist_dnn.lib.experiments import roots

STORAGE_KINDS = ("sqlite", "postgresql", "mysql")
OBJECTIVE = "maximize best validation accuracy"
HEARTBEAT_S = 10
GRACE_PERIOD_S = 30
POLL_S = 2.0
# Flags a search sets for every trial; the space cannot vary them.
TRIAL_FLAGS = ("ckpt_dir", "log_dir", "result_file", "export_dir")


def storage_url(config: SearchConfig) -> str:
    return config.storage or "sqlite:///" + os.path.abspath(os.path.join(config.root, roots.STUDY_FILE))


@dataclasses.dataclass(frozen=True)
class Param:
    """One axis of the space: `name=kind:args` as written, e.g. learning_rate=loguniform:1e-4:1e-1."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def spec(self) -> str:
        args = ",".join(self.choices) if self.kind == "choice" else f"{self.low:g}:{self.high:g}"
        return f"{self.name}={self.kind}:{args}"

    def candidates(self) -> list[str]:
        """The values to check against the base config: the bounds, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        return [str(int(bound)) if self.kind == "int" else repr(float(bound)) for bound in (self.low, self.high)]

    def grid(self) -> list:
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1))
        raise ConfigError("space", f"{self.spec()}: `sampler`=grid takes choice and int parameters only")

    def suggest(self, trial) -> str:
        """The trial's value, as text for the training flag."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return str(trial.suggest_int(self.name, int(self.low), int(self.high)))
        return repr(trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform"))


def parse_param(spec: str, is_flag, check_value) -> Param:
    """Parses NAME=KIND:ARGS; `is_flag(name)` and `check_value(name, text)` are the training flags' own checks."""
    name, sep, rest = spec.partition("=")
    kind, colon, args = rest.partition(":")
    name, kind = name.strip().lstrip("-"), kind.strip()
    if not sep or not name or not colon or not args:
        raise ConfigError("space", f"{spec!r} must be NAME=KIND:ARGS, e.g. learning_rate=loguniform:1e-4:1e-1 or "
                          "optimizer=choice:sgd,adam")
    if kind not in KINDS:
        raise ConfigError("space", f"{spec!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    if name in TRIAL_FLAGS or not is_flag(name):
        raise ConfigError("space", f"{spec!r}: {name} is not a training flag a search can vary")
    param = _choice(spec, name, args) if kind == "choice" else _range(spec, name, kind, args)
    for value in param.candidates():
        check_value(name, value)
    return param


def _choice(spec: str, name: str, args: str) -> Param:
    values = tuple(v.strip() for v in args.split(","))
    if any(not v for v in values):
        raise ConfigError("space", f"{spec!r} has an empty choice; separate values with single commas")
    if len(set(values)) != len(values):
        raise ConfigError("space", f"{spec!r} repeats a choice")
    return Param(name, "choice", choices=values)


def _range(spec: str, name: str, kind: str, args: str) -> Param:
    bounds = args.split(":")
    try:
        low, high = (int(b) if kind == "int" else float(b) for b in bounds) if len(bounds) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError("space", f"{spec!r}: {kind} takes LOW:HIGH, two {'whole ' if kind == 'int' else ''}numbers")
    if low >= high:
        raise ConfigError("space", f"{spec!r}: the low bound {low:g} must be below the high bound {high:g}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError("space", f"{spec!r}: loguniform needs a positive low bound")
    return Param(name, kind, low, high)


def check_space(space: list[Param], sampler: str) -> None:
    if not space:
        raise ConfigError("space", "is empty: give at least one `space`=NAME=KIND:ARGS")
    names = [p.name for p in space]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError("space", f"gives {', '.join(repeated)} more than once")
    if sampler == "grid":
        for param in space:
            param.grid()


def grid_size(space: list[Param]) -> int:
    return math.prod(len(p.grid()) for p in space)


def trial_config(base: TrainConfig, values: dict, folder: str) -> TrainConfig:
    config = build_config(base, values)
    return dataclasses.replace(config, ckpt_dir=os.path.join(folder, roots.CKPT_DIR),
                               log_dir=os.path.join(folder, roots.LOGS_DIR), export_dir=None)


def check_space_against(base: TrainConfig, space: list[Param]) -> None:
    """Each bound and choice, put into the base config, passes training's own validation."""
    for param in space:
        for value in param.candidates():
            build_config(base, {param.name: value}).validate()


def describe(space: list[Param]) -> dict:
    """What a study is, as stored in it: the same study must keep the same space and objective."""
    return {"space": [p.spec() for p in space], "objective": OBJECTIVE}


# --- The Optuna study (Optuna is imported inside the functions: it is the optional extra `search`) ---


INSTALL_HINT = "the search needs Optuna: pip install -e '.[search]' (in a checkout; or 'mnist-dnn-course[search]')"
STORAGE_ENV = "MNIST_DNN_STORAGE"  # the storage URL with its password, which no file holds


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
    if kind not in STORAGE_KINDS:
        raise ConfigError("storage", f"{url!r} is not an Optuna RDB storage URL; use one of "
                          f"{', '.join(k + '://' for k in STORAGE_KINDS)}, e.g. "
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


def connect_url(url: str) -> str:
    """The URL to connect with: `url`, or the environment's STORAGE_ENV when that is `url` with a password (else
    the driver finds one in ~/.pgpass, or connects without)."""
    given = os.environ.get(STORAGE_ENV)
    if given and shown(url) == shown(url, masked=False) == shown(given, masked=False):
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
            url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_PERIOD_S,
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


def open_study(config: SearchConfig, description: dict | None, create: bool):
    """Loads the study (or creates it, when `create`), refusing one of another space or objective (any, without a
    `description`: the report's)."""
    op = optuna()
    storage = open_storage(storage_url(config))
    try:
        study = op.load_study(study_name=config.study_name, storage=storage)
    except KeyError:
        if not create:
            raise DataError(f"the storage {shown(storage_url(config))} holds no study {config.study_name}") from None
        study = op.create_study(storage=storage, study_name=config.study_name, direction="maximize",
                                load_if_exists=True)
    stored = study.user_attrs.get("search")
    if stored is None and create:
        study.set_user_attr("search", description)
    elif description is not None and stored != description:
        raise UsageError(f"the study {config.study_name} in {shown(storage_url(config))} was created with another "
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


def root_description(config: SearchConfig) -> dict:
    """What root/search.json holds: the study's name and storage URL, without its password."""
    return {"study_name": config.study_name, "storage": shown(config.storage, masked=False)}


def check_root(config: SearchConfig) -> None:
    """Refuses a --root that is not a folder, or that holds the trials of another study."""
    files.check_link("root", config.root, "pass a folder for the search's trials")
    if os.path.exists(config.root) and not os.path.isdir(config.root):
        raise ConfigError("root", f"{config.root} is a file; pass a folder for the search's trials")
    if is_search_root(config.root):
        stored = read_root(config.root)
        if {**stored, "storage": shown(stored.get("storage"), masked=False)} != root_description(config):
            where = shown(stored.get("storage") or f"its {roots.STUDY_FILE}")
            raise ConfigError("root", f"{config.root} holds the trials of another study ({stored['study_name']} in "
                              f"{where}); pass another --root")


def start(config: SearchConfig, space, say) -> None:
    """Creates the study, or checks that the stored one has this space, before anything is written; then the root."""
    description = describe(space)
    if config.storage or os.path.isfile(os.path.join(config.root, roots.STUDY_FILE)):
        open_study(config, description, create=True)
    record_root(config, say)
    open_study(config, description, create=True)


def record_root(config: SearchConfig, say=print) -> None:
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
    return open_study(SearchConfig(root=root, study_name=stored["study_name"], storage=stored.get("storage")), None,
                      create=False)
