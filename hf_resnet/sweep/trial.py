"""One trial of a sweep: the normal training run (`parse_args` + `run.main`, in this process) with a callback
that reports every evaluation to Optuna and stops the run when the pruner says so.

Under `accelerate launch` with several processes, only the main process talks to Optuna; `share` sends its
objects (the trial's values, the pruner's answer) to the others over the process group the Trainer's arguments
started, so every process runs the same trial and a pruned one stops on every process at the same evaluation.

A pruned trial is stopped, not broken off: the Trainer ends its epoch, keeps (with `load_best_model_at_end`) its
best checkpoint, and the run writes its model, report and card as any run does; only then is Optuna told.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from ..errors import ConfigError
from ..parser import parse_args
from ..run import main as run_main
from ..training.checkpoints import CHECKPOINT_RE

logger = logging.getLogger(__name__)


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def share(value=None):
    """The main process's `value`, on every process (itself alone: `value`)."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def metric_key(metric: str) -> str:
    return metric if metric.startswith("eval_") else f"eval_{metric}"


class PruningCallback(TrainerCallback):
    """Reports `metric` after each evaluation during training as the trial's n-th intermediate value; when the
    pruner (asked on the main process, its answer shared) says so, training stops after that evaluation."""

    def __init__(self, trial, metric: str, maximize: bool):
        self.trial, self.key, self.maximize = trial, metric_key(metric), maximize
        self.values: list[float] = []
        self.pruned = self.training = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False  # the run's final evaluations are the report's, not the trial's

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not self.training:
            return
        if self.key not in (metrics or {}):
            raise ConfigError(f"The sweep's objective `{self.key}` is not among the evaluation's metrics "
                              f"({', '.join(sorted(metrics or {}))}); set --metric_for_best_model to one of them.")
        self.values.append(float(metrics[self.key]))
        prune = False
        if self.trial is not None:
            self.trial.report(self.values[-1], step=len(self.values))
            prune = self.trial.should_prune()
        if share(prune):
            self.pruned = True
            control.should_training_stop = True

    @property
    def best(self) -> float | None:
        """The objective: the best evaluation of the trial, not its last."""
        if not self.values:
            return None
        return max(self.values) if self.maximize else min(self.values)


@dataclass
class TrialResult:
    objective: float | None
    evaluations: list[float]
    pruned: bool
    epochs: float
    seconds: float
    metrics: dict = field(default_factory=dict)


def remove_checkpoints(folder: Path) -> int:
    found = [p for p in folder.iterdir() if p.is_dir() and CHECKPOINT_RE.match(p.name)] if folder.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return len(found)


def trial_dir(output_dir: Path, number: int) -> Path:
    return output_dir / f"trial-{number:03d}"


def run_trial(argv: list[str], folder: Path, trial, metric: str, maximize: bool, main_process: bool,
              keep_checkpoints: bool) -> TrialResult:
    """Train with `argv` (recipe, fields, the trial's values) into `folder`; `trial` is None off the main
    process. A folder left by an earlier study in the same DIR is cleared first (a trial number is run once)."""
    if main_process and folder.exists():
        logger.info("Clearing %s, left by an earlier run: this trial starts afresh.", folder)
        shutil.rmtree(folder)
    share()  # no process starts before the folder is clear
    callback = PruningCallback(trial, metric, maximize)
    start = time.perf_counter()
    arguments = parse_args([*argv, "--output_dir", str(folder)])
    metrics = run_main(*arguments, callbacks=[callback])
    if main_process and not keep_checkpoints:
        remove_checkpoints(folder)
    epochs = float(metrics.get("epoch", 0.0))
    return TrialResult(callback.best, callback.values, callback.pruned, epochs, time.perf_counter() - start, metrics)
