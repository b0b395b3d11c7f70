"""The workers of a search: processes that each train one trial at a time, in-process.

`run_workers` starts `search.workers` processes (multiprocessing, spawn) and waits for them;
each runs `work`: until the study holds `total` finished trials, it asks Optuna for a trial
and trains it in its run folder. The cores are split between the workers: each gets
cores // workers intra-op threads (at least one) and one inter-op thread, so two workers on
two cores train side by side on one core each.
"""

import contextlib
import dataclasses
import functools
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from multiprocessing import resource_tracker

from mnist_dnn.lib import files, processes
from mnist_dnn.lib.experiments import roots, search, sweeps
from mnist_dnn.lib.config import SearchConfig, TrainConfig
from mnist_dnn.lib.errors import Error, first_line

ORPHAN_EXIT_S = 3  # a worker whose search is gone ends within this, whatever it is doing


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything a worker process needs (it is pickled to the process)."""

    search: SearchConfig
    space: tuple[search.Param, ...]
    base: TrainConfig
    total: int  # trials in total: --trials, or the grid's size if smaller
    threads: int  # intra-op threads per worker


class _Interrupted(Exception):
    """A signal (the argument) stopped the trial's training (it saved a checkpoint)."""


class _NoRoom(Exception):
    """Other workers took the last trials of the budget first."""


class SearchError(Error):
    """The search stopped before its end (interrupted, or its workers failed)."""


def check_search(config: SearchConfig, space_specs: list[str], base: TrainConfig):
    """(the config, its storage $MNIST_DNN_STORAGE if it names none; the space's Params), checked before any write."""
    if config.storage is None and os.environ.get(search.STORAGE_ENV):
        config = dataclasses.replace(config, storage=os.environ[search.STORAGE_ENV])
    config.validate()
    search.check_root(config)
    if config.storage:
        search.check_storage_url(config.storage)
    check, is_flag = functools.partial(sweeps.check_value, "space"), sweeps.TRAIN_FLAGS.__contains__
    space = [search.parse_param(spec, is_flag, check) for spec in space_specs]
    search.check_space(space, config.sampler)
    base.validate()
    search.check_space_against(base, space)
    return config, space


def start_search(config: SearchConfig, space, base: TrainConfig, say) -> "Plan":
    """Opens (or creates) the study and its root; the plan that `run_workers` carries out."""
    search.start(config, space, say)
    plan = make_plan(config, space, base)
    say(f"Search of {plan.total} trials in {config.root} ({config.sampler} sampler, {config.pruner} pruner): "
        + " x ".join(p.spec() for p in space))
    return plan


def check_exit_codes(codes: list[int]) -> None:
    if any(c in (128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGTERM) for c in codes):
        raise SearchError("interrupted (the trials saved a checkpoint); run the same command to resume")
    if any(codes):
        raise SearchError(f"{sum(map(bool, codes))} worker(s) failed (exit codes {codes}); see the lines above")


def make_plan(config: SearchConfig, space, base: TrainConfig) -> Plan:
    total = min(config.trials, search.grid_size(space)) if config.sampler == "grid" else config.trials
    return Plan(config, tuple(space), base, total, threads=max(1, len(os.sched_getaffinity(0)) // config.workers))


def run_workers(plan: Plan, say) -> list[int]:
    """Starts the workers, forwards SIGINT/SIGTERM to them, and returns their exit codes."""
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_worker_main, args=(plan, i, os.getpid()), name=f"search-worker-{i}")
               for i in range(plan.search.workers)]

    def forward(signum, frame):
        for process in workers:
            if process.is_alive():
                process.terminate()  # SIGTERM; one that ended in between is left alone

    resource_tracker.ensure_running()  # now: its start unblocks the signals that are blocked below
    with processes.signals_to(forward):
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, processes.STOP_SIGNALS)  # the workers start so, until
        try:  # their handler is in place; here they wait (none is lost)
            for process in workers:
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        say(f"{len(workers)} worker process(es), {plan.threads} intra-op thread(s) each")
        for process in workers:
            process.join()
    return [p.exitcode for p in workers]


class Stop:
    """A worker's SIGINT/SIGTERM handler. It raises nothing into what runs (such an exception was lost in a `__del__`,
    or printed a traceback from the middle of an import). Outside `deferred()` (starting, importing, between trials)
    the worker ends at once, 128 + the signal; inside (a trial) the signal is recorded in `signals`: training stops
    on it (a checkpoint) and the trial is queued again. A worker whose search is gone ends within ORPHAN_EXIT_S,
    but never between failing a trial and queueing it again (`whole`)."""

    def __init__(self, parent: int):
        self.parent, self.signals, self.deferring, self.whole, self.orphaned = parent, [], False, False, None

    def __call__(self, signum, frame):
        self.signals.append(signum)
        if not self.deferring:
            os._exit(128 + signum)  # noqa: SLF001
        if os.getppid() != self.parent:
            self.orphaned = time.monotonic()

    def watch(self) -> None:
        """In a thread of its own, started before any signal: the handler may not start one (that takes a lock
        which the code it cut may hold)."""
        while self.orphaned is None or time.monotonic() < self.orphaned + ORPHAN_EXIT_S or self.whole:
            time.sleep(0.05)
        os._exit(128 + self.signals[0])  # noqa: SLF001

    @contextlib.contextmanager
    def deferred(self, whole: bool = False):
        self.deferring, self.whole = True, whole
        try:
            yield
        finally:
            self.deferring = self.whole = False


def _worker_main(plan: Plan, index: int, parent: int) -> None:
    stop = Stop(parent)
    for s in processes.STOP_SIGNALS:
        signal.signal(s, stop)
    processes.die_with_parent()  # the trial saves and is queued again if the search dies, even by SIGKILL
    threading.Thread(target=stop.watch, daemon=True).start()
    if os.getppid() != parent:  # it died before that
        os._exit(128 + signal.SIGTERM)  # noqa: SLF001
    signal.pthread_sigmask(signal.SIG_UNBLOCK, processes.STOP_SIGNALS)
    stdout = os.dup(1)

    def say(line: str) -> None:
        os.write(stdout, f"[worker {index}] {line}\n".encode())

    # A spawned worker imports TensorFlow afresh, as quietly as the search's start-up did: that set
    # TF_CPP_MIN_LOG_LEVEL to 3 exactly when it kept TensorFlow's lines off (not a 2 of the user's).
    tf = processes.import_tensorflow(quiet=os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3")
    tf.config.threading.set_intra_op_parallelism_threads(plan.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    try:
        code = work(plan, index, say, stop)
    except Error as e:
        say(f"error: {e}")
        code = e.exit_code
    sys.stdout.flush()
    os._exit(code)  # noqa: SLF001 (no teardown of TensorFlow: its files are written by now)


def work(plan: Plan, index: int, say, stop: Stop | None = None) -> int:
    """Trains trials until the study has `plan.total` finished ones; 0, or 128 + a signal that stopped it."""
    stop = stop or Stop(os.getppid())
    with processes.signals_to(stop):
        study = search.open_study(plan.search, search.describe(list(plan.space)), create=False)
        # Each worker, and each rerun, draws from its own seed: not the same points again.
        seed = None if plan.search.search_seed is None else plan.search.search_seed + 1000 * len(study.trials) + index
        study.sampler = search.make_sampler(plan.search.sampler, plan.space, seed, plan.total)
        study.pruner = search.make_pruner(plan.search.pruner, plan.base.eval_every, plan.base.max_steps)
        optuna = search.optuna()
        while not stop.signals:
            with stop.deferred(whole=True):  # a stale trial is failed, then queued again
                optuna.storages.fail_stale_trials(study)
            finished, running, waiting = search.progress(study)
            if finished >= plan.total:
                return 0
            if not waiting and finished + running >= plan.total:
                time.sleep(search.POLL_S)  # the last trials run elsewhere; one may yet be queued again
                continue
            current = []
            with stop.deferred(), contextlib.suppress(_NoRoom):
                try:
                    study.optimize(_objective(plan, study, say, current, stop), n_trials=1, catch=(Error,),
                                   gc_after_trial=True)
                except _Interrupted as e:
                    optuna.storages.RetryHeartbeatStaleTrialCallback()(study, search.frozen(study, current[0]))
                    say(f"trial {current[0]} stopped by signal {e.args[0]}; queued again to resume from its checkpoint")
        return 128 + stop.signals[0]


def _objective(plan: Plan, study, say, current: list, stop: Stop):
    def objective(trial):
        current.append(trial.number)
        if search.trials_before(study, trial.number) >= plan.total:
            trial.set_user_attr("surplus", True)
            raise _NoRoom()
        name = search.folder_name(search.frozen(study, trial.number))
        where = {"folder": name, "host": socket.gethostname(), "root": os.path.abspath(plan.search.root)}
        for key, value in where.items():
            trial.set_user_attr(key, value)  # where the report of any root of the study finds it
        settings = {p.name: p.suggest(trial) for p in plan.space}
        folder = os.path.join(plan.search.root, name)
        try:
            return train_trial(trial, folder, search.trial_config(plan.base, settings, folder), settings, say,
                               stop.signals)
        except _Interrupted:
            stop.whole = True  # the trial is failed, then queued again
            raise

    return objective


def train_trial(trial, folder: str, config: TrainConfig, settings: dict, say, stop_signals=None) -> float:
    """Trains (or resumes) the trial in `folder`, reporting each validation to the pruner (`training.train`'s
    `stop_signals`: the worker's)."""
    import optuna

    from mnist_dnn.lib.trainer import training

    resuming = os.path.isdir(config.ckpt_dir)
    say(f"trial {trial.number} {'resuming' if resuming else 'starting'} in {folder}: "
        + ", ".join(f"{k}={v}" for k, v in settings.items()))

    def report(step: int, metrics) -> bool:
        trial.report(metrics.accuracy, step)
        return trial.should_prune()

    os.makedirs(folder, exist_ok=True)
    started = time.perf_counter()
    try:
        with _output_to(os.path.join(folder, roots.LOG_FILE)) as log:
            result = training.train(config, say=lambda line: (log.write(line + "\n"), log.flush()),
                                    on_validation=report, stop_signals=stop_signals)
    except Error as e:
        _record_state(config.log_dir, "failed")
        trial.set_user_attr("error", str(e))
        files.write_json(os.path.join(folder, roots.RESULT_FILE), {"error": str(e), "exit_code": e.exit_code})
        say(f"trial {trial.number} failed: {first_line(e)}")
        raise
    files.write_text(os.path.join(folder, roots.RESULT_FILE), result.to_json())
    if result.stopped_by_signal:
        raise _Interrupted(result.stopped_by_signal)
    sweeps.write_done(folder, time.perf_counter() - started, trial=trial.number)
    _record_state(config.log_dir, "pruned" if result.pruned else "complete")
    best = result.best.accuracy if result.best else float("nan")
    if result.pruned:
        say(f"trial {trial.number} pruned at step {result.step} (best validation accuracy {best:.2%})")
        raise optuna.TrialPruned(f"at step {result.step}")
    say(f"trial {trial.number} complete: best validation accuracy {best:.2%} at step {result.best.step}")
    return best


STATE_CODES = {"complete": 1, "pruned": 2, "failed": 3}  # the HParams column search/state


def _record_state(log_dir: str, state: str) -> None:
    """The trial's end in TensorBoard's HParams: its session status, and search/state (no value yet: running)."""
    from mnist_dnn.lib.trainer import summaries

    summaries.write_session_end(log_dir, state != "failed", **{"search/state": STATE_CODES[state]})


@contextlib.contextmanager
def _output_to(path: str):
    """The process's stdout and stderr (file descriptors: TensorFlow's C++ lines too) appended to `path`;
    yields the file, for training's own lines."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield log
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
