"""The Optuna study behind `hf-resnet sweep`: where it is stored, its sampler and pruner, and what becomes of the
trials a killed process left running.

- Storage: `DIR/study.db` (SQLite) unless `--storage` names an RDB URL (`postgresql://...`, `mysql://...`,
  `sqlite:///...`) or Optuna's journal file (`journal:PATH`, or a path ending in `.log` / `.journal`), the one to
  use on a shared file system (NFS) where SQLite's locks are not safe. Several sweeps on one storage share its
  trials: each asks Optuna for the next one.
- A trial left RUNNING by a process that died (kill -9, a lost machine) is marked FAIL and queued again with
  the same values, so a rerun completes it and the total of finished trials is still `--n_trials`. On this
  machine a dead process is seen at once (each trial records its host and process id); on an RDB storage one
  on another machine is seen by its heartbeat, `GRACE_S` after its last one.
- Sampling is deterministic under the seed: each new trial's sampler is seeded with the seed plus the number of
  trials before it that did not fail, so a sweep that was killed and rerun asks for the same values in the same
  order as one that never was (the failed trial's rerun takes its values from the queue, not the sampler), and
  two sweeps sharing a study never draw alike. With the median pruner or none; Hyperband's brackets follow the
  trials' numbers, which the rerun shifts.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path

from ..errors import ConfigError

logger = logging.getLogger(__name__)

STUDY_FILE = "study.db"
HEARTBEAT_S = 30  # an RDB storage's heartbeat, for trials of processes on other machines
GRACE_S = 120  # a trial whose heartbeat is this old is taken for dead
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
MEDIAN_STARTUP_TRIALS = 3  # trials finished before the median pruner prunes any
INSTALL = 'hf-resnet sweep needs Optuna: pip install "hf-resnet[sweep]" (or pip install "optuna>=4").'


def import_optuna():
    """Optuna, or the one line that says how to install it (`optuna` is the `sweep` extra)."""
    try:
        import optuna
    except ImportError as err:
        raise ConfigError(INSTALL) from err
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial
    return optuna


def retry(study, trial) -> None:
    """Queue a trial that died again, with the same values (`retry_of`: the first one's number)."""
    original = trial.user_attrs.get("retry_of", trial.number)
    if any(t.user_attrs.get("retry_of") == original and t.number > trial.number for t in study.get_trials(
            deepcopy=False)):
        return  # another process queued it already
    logger.info("Trial %d did not finish (its process died); it is queued again with the same values.", trial.number)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": original})


def open_storage(storage: str | None, output_dir: Path):
    """`--storage` (or DIR/study.db) as an Optuna storage."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        storage = f"sqlite:///{(output_dir / STUDY_FILE).resolve()}"
    if storage.startswith("journal:") or storage.endswith((".log", ".journal")):
        path = Path(storage.removeprefix("journal:"))
        if not path.parent.is_dir():
            raise ConfigError(f"The folder of the journal file {str(path)!r} does not exist; create it first.")
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in storage:
        raise ConfigError(f"--storage {storage!r} is neither a database URL (sqlite:///PATH.db, postgresql://...) "
                          "nor a journal file (journal:PATH, or a path ending in .log).")
    engine = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else {}  # two sweeps wait, not fail
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental; optimize() relies on it all the same
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=retry)
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as err:
        raise ConfigError(f"--storage {storage!r} cannot be opened ({type(err).__name__}: {err}); check the URL and "
                          "that its database driver is installed.") from err


def make_sampler(kind: str, seed: int, grid: dict | None = None):
    from optuna.samplers import GridSampler, RandomSampler, TPESampler

    if kind == "grid":
        return GridSampler(grid, seed=seed)
    return RandomSampler(seed=seed) if kind == "random" else TPESampler(seed=seed)


def make_pruner(kind: str):
    """Pruning on the n-th evaluation of every trial (epoch n with `eval_strategy: epoch`)."""
    from optuna.pruners import HyperbandPruner, MedianPruner, NopPruner

    if kind == "median":
        return MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
    return HyperbandPruner() if kind == "hyperband" else NopPruner()


def open_study(storage, name: str, maximize: bool, settings: dict, pruner: str):
    """The study (created, or loaded to go on); `settings` (metric, space) must match the stored study's."""
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                direction="maximize" if maximize else "minimize", pruner=make_pruner(pruner))
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        changed = sorted(key for key in {*stored, *settings} if stored.get(key) != settings.get(key))
        raise ConfigError(f"Study {name!r} in this storage was started with another {' and '.join(changed)}; "
                          "rerun with the same ones to go on, or pass another --output_dir or --study_name.")
    return study


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(study) -> list[int]:
    """Fail (and queue again) the RUNNING trials whose process on this machine is gone, and, on an RDB storage,
    the ones whose heartbeat stopped. Returns the numbers failed here."""
    import optuna
    from optuna.trial import TrialState

    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        where = trial.user_attrs.get("host"), trial.user_attrs.get("pid")
        if where[0] == host and where[1] is not None and not _alive(where[1]):
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            retry(study, trial)
            failed.append(trial.number)
    with warnings.catch_warnings():  # fail_stale_trials is marked experimental; it is what optimize() calls too
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return failed


def counts(study) -> dict[str, int]:
    """Trials by state name: COMPLETE, PRUNED, RUNNING, WAITING, FAIL (surplus ones left out)."""
    found: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        if not trial.user_attrs.get("surplus"):  # asked for by two sweeps at once, and left unrun
            found[trial.state.name] = found.get(trial.state.name, 0) + 1
    return found


def finished(study) -> int:
    found = counts(study)
    return found.get("COMPLETE", 0) + found.get("PRUNED", 0)


def trial_seed(study, trial, seed: int) -> int:
    """The sampler's seed for `trial`: the seed plus the trials before it that did not fail. A sweep killed and
    rerun thus seeds its new trials as one that never was; two sweeps sharing a study, never alike."""
    from optuna.trial import TrialState

    return seed + sum(t.number < trial.number and t.state != TrialState.FAIL for t in study.get_trials(deepcopy=False))
