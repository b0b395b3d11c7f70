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
import math
import os

from mnist_dnn.lib import settings
from mnist_dnn.lib.config import ConfigError, TrainConfig, setting
from mnist_dnn.lib.experiments import roots

KINDS = ("loguniform", "uniform", "int", "choice")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
STORAGE_KINDS = ("sqlite", "postgresql", "mysql")
OBJECTIVE = "maximize best validation accuracy"
HEARTBEAT_S = 10
GRACE_PERIOD_S = 30
POLL_S = 2.0
# Flags a search sets for every trial; the space cannot vary them.
TRIAL_FLAGS = ("ckpt_dir", "log_dir", "result_file", "export_dir")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    root: str | None = setting(None, "Folder of the search: one run folder per trial (trial-NNNN/), the study "
                               "(study.db unless --storage), report.{csv,md,png}.")
    trials: int = setting(20, "Trials in total, over every run of this command and every worker sharing the study.")
    workers: int = setting(1, "Trials trained at once on this machine, each in a process of its own; the CPU cores "
                           "are split between them.")
    sampler: str = setting("tpe", f"How trials are chosen: {', '.join(SAMPLERS)} (every combination of the choice "
                           "and int parameters).")
    pruner: str = setting("median", f"Stops hopeless trials at an evaluation: {', '.join(PRUNERS)}.")
    storage: str | None = setting(None, "Optuna RDB storage URL shared by several machines, e.g. "
                                  "postgresql+psycopg://user@host/db, its password in ~/.pgpass; or the whole URL in "
                                  "MNIST_DNN_STORAGE (default: sqlite under --root). No file holds the password.")
    study_name: str = setting("mnist_dnn", "Name of the study in the storage (one storage can hold several).")
    search_seed: int | None = setting(None, "Seed of the sampler (worker i uses seed + i); default: random.")

    def validate(self) -> None:
        if not self.root:
            raise ConfigError("root", "is required: the folder of the search's trials, e.g. `root`=runs/search")
        for field, maximum in (("trials", 100_000), ("workers", 64)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
                raise ConfigError(field, f"must be a whole number from 1 to {maximum:,}; got {value!r}")
        for field, choices in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            if getattr(self, field) not in choices:
                raise ConfigError(field, f"must be one of {', '.join(choices)}; got {getattr(self, field)!r}")
        if not self.study_name:
            raise ConfigError("study_name", "must not be empty")

    def storage_url(self) -> str:
        return self.storage or "sqlite:///" + os.path.abspath(os.path.join(self.root, roots.STUDY_FILE))


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
        return [_number_text(self, self.low), _number_text(self, self.high)]

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


def _number_text(param: Param, value: float) -> str:
    return str(int(value)) if param.kind == "int" else repr(float(value))


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
    config = settings.build(base, values)
    return dataclasses.replace(config, ckpt_dir=os.path.join(folder, roots.CKPT_DIR),
                               log_dir=os.path.join(folder, roots.LOGS_DIR), export_dir=None)


def check_space_against(base: TrainConfig, space: list[Param]) -> None:
    """Each bound and choice, put into the base config, passes training's own validation."""
    for param in space:
        for value in param.candidates():
            settings.build(base, {param.name: value}).validate()


def describe(space: list[Param]) -> dict:
    """What a study is, as stored in it: the same study must keep the same space and objective."""
    return {"space": [p.spec() for p in space], "objective": OBJECTIVE}
