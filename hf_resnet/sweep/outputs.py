"""What a sweep leaves beside its trials: `trials.csv`, the best trial's model as `best/` (its card says it won
the sweep and shows the trials), Optuna's plots as PNGs, and the lines printed as it goes.

Every process sharing a study writes these from the study as it stands when it ends, so the last to end writes
the complete ones; `best/` is copied into a temporary folder and renamed into place, never half-written.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from pathlib import Path

from ..reports.model_card import format_value

logger = logging.getLogger(__name__)

PLOTS = {  # file -> (optuna.visualization.matplotlib function, complete trials it needs)
    "optimization_history.png": ("plot_optimization_history", 1),
    "param_importances.png": ("plot_param_importances", 2),
    "parallel_coordinate.png": ("plot_parallel_coordinate", 2),
}
CARD_SECTION = "## Hyperparameter sweep"


def objective_of(trial) -> float | None:
    """A finished trial's objective: its best evaluation (a pruned trial's too, though it cannot win)."""
    return trial.user_attrs.get("objective", trial.value)


def shown_trials(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]


def trials_table(study, names: list[str]):
    """One row per trial: number, state, every parameter, objective, evaluations and epochs run, seconds."""
    import pandas

    frame = study.trials_dataframe(attrs=("number", "state", "params", "user_attrs", "duration"))
    columns = {f"params_{name}": name for name in names}
    if frame.empty:  # no trial yet (they all run elsewhere)
        return pandas.DataFrame(columns=["number", "state", *names, "objective", "epochs", "evaluations",
                                         "retry_of", "seconds"])
    frame = frame[frame["number"].isin([t.number for t in shown_trials(study)])]
    columns.update({"user_attrs_objective": "objective", "user_attrs_epochs": "epochs",
                    "user_attrs_evaluations": "evaluations", "user_attrs_retry_of": "retry_of"})
    for column in columns:
        if column not in frame:
            frame[column] = None
    for column in ("user_attrs_evaluations", "user_attrs_retry_of"):  # whole numbers, also beside a FAIL's blank
        frame[column] = frame[column].astype("Int64")
    frame["seconds"] = frame["duration"].dt.total_seconds().round(1) if "duration" in frame else None
    return frame[["number", "state", *columns, "seconds"]].rename(columns=columns)


def write_trials_csv(study, names: list[str], path: Path) -> Path:
    table = trials_table(study, names)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    table.to_csv(temporary, index=False)
    os.replace(temporary, path)
    return path


def trial_line(trial, names: list[str], best) -> str:
    """`trial 3 COMPLETE  learning_rate=0.0042 ...  objective 0.9630 (2 epochs, 5.1 s)  best 0.9741 (trial 1)`"""
    values = " ".join(f"{name}={format_value(trial.params.get(name))}" for name in names)
    objective = objective_of(trial)
    score = "-" if objective is None else f"{objective:.4f}"
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    best_text = f"best {best.value:.4f} (trial {best.number})" if best is not None else "best -"
    return (f"trial {trial.number} {trial.state.name}  {values}  objective {score} "
            f"({format_value(trial.user_attrs.get('epochs', 0))} epochs, {seconds:.1f} s)  {best_text}")


def best_trial(study):
    from optuna.trial import TrialState

    return study.best_trial if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else None


def write_plots(study, output_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNGs; a plot the study cannot have yet is skipped, with the reason logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    written = []
    for name, (function, needed) in PLOTS.items():
        if complete < needed:
            logger.info("No %s: it needs %d complete trial(s), the study has %d.", name, needed, complete)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = getattr(plots, function)(study)
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.savefig(output_dir / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(output_dir / name)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances of a parameter never varied
            logger.info("No %s: %s", name, err)
    return written


def _cell(value, spec: str | None = None) -> str:
    if value is None or value != value:  # None, or pandas' NaN for a value a trial does not have
        return "-"
    return format(value, spec) if spec else format_value(value)


def card_section(study, names: list[str], best, settings: dict, plots: list[Path]) -> str:
    """The section appended to best/README.md: which sweep it won, and every trial."""
    table = trials_table(study, names)
    head = ["trial", "state", *names, "objective", "epochs", "seconds"]
    lines = [CARD_SECTION, "",
             f"This model won a hyperparameter sweep by `hf-resnet sweep`: trial {best.number} of {len(table)}, "
             f"chosen by its best `{settings['metric']}` over its evaluations on the validation split "
             f"({'highest' if settings['direction'] == 'maximize' else 'lowest'} wins), {best.value:.4f}. Optuna's "
             f"{settings['sampler']} sampler searched `{settings['space']}` with the {settings['pruner']} pruner; "
             "each trial was the recipe's run with the values below. The metrics above are this trial's, on the "
             "same validation split that chose it, so expect a little less on new images.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [str(row["number"]), row["state"], *(_cell(row[n]) for n in names), _cell(row["objective"], ".4f"),
                 _cell(row["epochs"]), _cell(row["seconds"])]
        if row["number"] == best.number:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *(f"![{p.stem.replace('_', ' ')}](sweep/{p.name})" for p in plots)]
    return "\n".join(lines) + "\n"


def publish_best(study, names: list[str], settings: dict, trial_folder: Path, output_dir: Path,
                 plots: list[Path]) -> Path | None:
    """Copy the best trial's folder (what `pipeline()` loads, its report and card) to DIR/best, and add the
    sweep's section to its card. None when that trial's folder is not on this machine."""
    best = best_trial(study)
    if best is None:
        logger.info("No best/: no trial completed.")
        return None
    if not (trial_folder / "config.json").is_file():
        logger.info("No best/ here: the best trial (%d) ran where its folder %s is not.", best.number, trial_folder)
        return None
    target = output_dir / "best"
    staging = output_dir / f".best-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(trial_folder, staging, ignore=shutil.ignore_patterns("checkpoint-*", "example_ids"))
    if plots:
        (staging / "sweep").mkdir()
        for plot in plots:
            shutil.copy2(plot, staging / "sweep" / plot.name)
    card = staging / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    text = text.replace(str(trial_folder.resolve()), str(target.resolve()))  # the quick start loads best/
    card.write_text(text.rstrip("\n") + "\n\n" + card_section(study, names, best, settings, plots), encoding="utf-8")
    old = output_dir / f".best-old-{os.getpid()}"
    for _ in range(5):  # another sweep on the same study may be swapping its own best/ in at the same moment
        try:
            if target.exists():
                os.replace(target, old)
            os.replace(staging, target)
            break
        except OSError:
            time.sleep(1)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
    return target
