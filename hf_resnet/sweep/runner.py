"""`hf-resnet sweep`: the recipe's run, N times, with the values Optuna picks from a search space.

    hf-resnet sweep --config smoke/digits_smoke --space smoke/digits_sweep --n_trials 6 --output_dir sweeps/digits

Before any trial: the recipe and the command line's fields are parsed as `hf-resnet train` parses them, and so is
every end and choice of the space (`space.py`). Then, until N trials are complete or pruned (counting those of
other processes on the same storage, and those still running), the main process asks the study for a trial,
shares its values with the other processes of `accelerate launch`, and every process runs it
(`trial.run_trial`). The objective is the trial's best evaluation of `metric_for_best_model` (the recipe's;
accuracy by default), and the model each trial keeps is that evaluation's (`load_best_model_at_end` is set when
the recipe's eval and save schedules allow it). At the end: `trials.csv`, the plots, `best/` (`outputs.py`) and
a summary line.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from ..constants import value_of
from ..errors import ConfigError, NonFiniteLossError, first_line
from ..parser import parse_args
from ..reports.model_card import format_value
from ..run import setup_logging
from .outputs import best_trial, publish_best, trial_line, write_plots, write_trials_csv
from .space import SearchSpace, load_space
from .study import (
    counts,
    finished,
    import_optuna,
    make_sampler,
    open_storage,
    open_study,
    owner,
    recover,
    retry,
    trial_seed,
)
from .trial import metric_key, remove_checkpoints, run_trial, share, trial_dir

logger = logging.getLogger(__name__)


@dataclass
class SweepOptions:
    """The sweep's own options (every other flag is a field of `hf-resnet train`)."""

    space: str
    n_trials: int
    output_dir: str
    config: str | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None
    study_name: str = "hf-resnet"
    keep_checkpoints: bool = False


class Surplus(Exception):
    """Another process started the N-th trial first: this one is not needed."""


def objective_metric(training_args) -> tuple[str, bool]:
    """`metric_for_best_model` (accuracy when the recipe names none) and whether higher is better."""
    metric = training_args.metric_for_best_model or "accuracy"
    greater = training_args.greater_is_better if training_args.metric_for_best_model else None
    return metric, (not metric.endswith("loss")) if greater is None else greater


def keep_best_flags(argv: list[str], training_args, metric: str) -> list[str]:
    """`--load_best_model_at_end true` (with the objective's metric) when the recipe's schedules allow it, so the
    model a trial keeps, and best/ serves, is the evaluation its objective counts."""
    if training_args.load_best_model_at_end or any(a.startswith("--load_best_model_at_end") for a in argv):
        return []
    extra = ["--load_best_model_at_end", "true", "--metric_for_best_model", metric]
    try:
        parse_args([*argv, *extra])
    except ConfigError as err:
        logger.warning("Each trial keeps its last model, not its best (%s)", first_line(err))
        return []
    return extra


def check_schedule(training_args) -> None:
    if not training_args.do_train or not training_args.do_eval or value_of(training_args.eval_strategy) == "no":
        raise ConfigError("A sweep scores each trial by its evaluations during training; keep `do_train` and "
                          "`do_eval` true and set `eval_strategy` to epoch (or steps).")


@dataclass
class Sweep:
    """What every process of the sweep knows: the trial's command line without its values, and the objective."""

    options: SweepOptions
    space: SearchSpace
    argv: list[str]
    metric: str
    maximize: bool
    seed: int

    @property
    def output_dir(self) -> Path:
        return Path(self.options.output_dir)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.space.params]

    def train(self, number: int, values: dict, trial=None):
        """Run trial `number` with `values`; `trial` (Optuna's) on the main process only."""
        return run_trial([*self.argv, *self.space.argv(values)], trial_dir(self.output_dir, number), trial,
                         self.metric, self.maximize, trial is not None, self.options.keep_checkpoints)

    def settings(self) -> dict:
        """What a study must keep to be gone on with: the metric, its direction and the space."""
        space = {p.name: {k: v for k, v in asdict(p).items() if k not in ("name", "labels")}
                 for p in self.space.params}
        settings = {"metric": metric_key(self.metric), "direction": "maximize" if self.maximize else "minimize",
                    "space": space}
        return json.loads(json.dumps(settings))  # as the storage gives it back


def prepare(options: SweepOptions, train_argv: list[str]) -> tuple[Sweep, bool]:
    """Every check before any trial; returns the sweep and whether this is the main process."""
    base = (["--config", options.config] if options.config else []) + list(train_argv)
    probe = [*base, "--output_dir", str(Path(options.output_dir) / "trial-000")]
    *_, training_args = parse_args(probe)  # under accelerate launch this also starts the process group
    setup_logging(training_args)  # the sweep's own lines before the first trial (a trial queued again, the grid)
    check_schedule(training_args)
    space = load_space(options.space, probe, parse_args)
    if options.sampler == "grid":
        space.grid()  # every field needs a finite set of values
    metric, maximize = objective_metric(training_args)
    argv = [*base, *keep_best_flags(probe, training_args, metric)]
    return Sweep(options, space, argv, metric, maximize, training_args.seed), training_args.process_index == 0


def sweep(options: SweepOptions, train_argv: list[str]) -> dict | None:
    """The whole sweep, on every process; the main process returns the summary."""
    import_optuna()
    plan, main_process = prepare(options, train_argv)
    if not main_process:
        while (message := share()) is not None:
            plan.train(*message)
        return None
    return lead(plan)


def lead(plan: Sweep) -> dict:
    """The main process: the study's trials, one at a time, until the sweep has its N."""
    import optuna
    import torch
    from optuna.trial import TrialState

    options, output_dir = plan.options, plan.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(open_storage(options.storage, output_dir), options.study_name, plan.maximize, plan.settings(),
                       options.pruner)
    total, grid = options.n_trials, plan.space.grid() if options.sampler == "grid" else None
    if grid is not None and total > math.prod(len(v) for v in grid.values()):
        total = math.prod(len(v) for v in grid.values())
        logger.info("The grid has %d points: the sweep runs %d trials.", total, total)
    current: dict = {}

    def objective(trial) -> float:
        current["number"] = trial.number
        for key, value in owner().items():
            trial.set_user_attr(key, value)
        if "retry_of" not in trial.user_attrs and sum(
                t.number < trial.number and t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                                                        TrialState.WAITING)
                for t in study.get_trials(deepcopy=False)) >= total:
            trial.set_user_attr("surplus", True)
            raise Surplus
        if options.sampler != "grid":  # (the grid sampler picks its point when the trial is created)
            study.sampler = make_sampler(options.sampler, trial_seed(study, trial, plan.seed))
        values = plan.space.suggest(trial)
        share((trial.number, values))
        result = plan.train(trial.number, values, trial)
        trial.set_user_attr("objective", result.objective)
        trial.set_user_attr("evaluations", len(result.evaluations))
        trial.set_user_attr("epochs", round(result.epochs, 2))
        if result.pruned:
            raise optuna.TrialPruned(f"pruned after evaluation {len(result.evaluations)}")
        return result.objective

    while True:
        for number in recover(study):  # a process of this machine died in that trial: it runs again, afresh
            if not options.keep_checkpoints:
                remove_checkpoints(trial_dir(output_dir, number))
        found = counts(study)
        if finished(study) + found.get("RUNNING", 0) >= total and not found.get("WAITING"):
            break
        study.sampler = make_sampler(options.sampler, plan.seed, grid)
        try:
            # a diverging rate or a batch too big for the GPU is that trial's outcome (FAIL), not the sweep's end
            study.optimize(objective, n_trials=1, catch=(torch.OutOfMemoryError, NonFiniteLossError))
        except Surplus:
            break
        except KeyboardInterrupt:
            if "number" in current:
                retry(study, study.trials[current["number"]])
            raise
        trial = study.trials[current["number"]]
        print(trial_line(trial, plan.names, best_trial(study)), flush=True)
        write_trials_csv(study, plan.names, output_dir / "trials.csv")
    share(None)  # the other processes of accelerate launch stop here
    return finish(plan, study, total)


def finish(plan: Sweep, study, total: int) -> dict:
    """trials.csv, the plots, best/, and the summary line."""
    output_dir = plan.output_dir
    csv = write_trials_csv(study, plan.names, output_dir / "trials.csv")
    plots = write_plots(study, output_dir)
    best = best_trial(study)
    card = {**plan.settings(), "sampler": plan.options.sampler, "pruner": plan.options.pruner,
            "space": plan.space.source}
    best_dir = publish_best(study, plan.names, card, trial_dir(output_dir, best.number), output_dir, plots) \
        if best is not None else None
    found = counts(study)
    line = (f"sweep {plan.options.study_name!r}: {finished(study)} of {total} trials finished "
            f"({found.get('PRUNED', 0)} pruned, {found.get('FAIL', 0)} failed")
    line += f", {found['RUNNING']} still running elsewhere)" if found.get("RUNNING") else ")"
    if best is not None:
        values = ", ".join(f"{k}={format_value(v)}" for k, v in plan.space.decode(best.params).items())
        line += f"; best: trial {best.number}, {metric_key(plan.metric)} {best.value:.4f}, {values}"
    line += f"; {best_dir or 'no best/'}, {csv}" + "".join(f", {p.name}" for p in plots)
    print(line, flush=True)
    return {"best_trial": None if best is None else best.number, "best_value": None if best is None else best.value,
            "best_params": None if best is None else plan.space.decode(best.params), "finished": finished(study),
            "counts": found, "best_dir": None if best_dir is None else str(best_dir)}
