"""`hf-resnet sweep` on the command line: its own options, then any field of `hf-resnet train` for every trial.
Nothing heavy is imported before the options are read, so `--help` answers at once; a user's error is one line
and exit code 2, as for `hf-resnet train`.
"""

from __future__ import annotations

import argparse
import sys

from ..flags import both, positive

DESCRIPTION = """\
Search hyperparameters: run the recipe N times with the values Optuna picks from SPACE (a YAML file, or a shipped
space: smoke/digits_sweep, resnet50/report_sweep), each trial in DIR/trial-NNN/, scored by its best evaluation of
metric_for_best_model (the recipe's; accuracy by default). Writes DIR/trials.csv, DIR/best/ (the best trial's
model, which pipeline() loads, its card showing the sweep), PNGs of the optimisation history, the parameter
importances and parallel coordinates, and one line per finished trial.

The study lives in DIR/study.db: after a kill, rerun the same command to go on (the interrupted trial runs again
with the same values). The same command on other machines or GPUs against one --storage shares the trials.
Every other flag is a field of `hf-resnet train`, given to every trial. Needs Optuna: pip install
"hf-resnet[sweep]". A space entry reads `learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}`,
`weight_decay: {type: float, low: 1.0e-4, high: 5.0e-4}`, `per_device_train_batch_size: {type: categorical,
choices: [32, 64, 128]}` or `num_train_epochs: {type: int, low: 2, high: 6, step: 2}`. Examples:

  hf-resnet sweep --config smoke/digits_smoke --space smoke/digits_sweep --n_trials 6 --output_dir sweeps/digits
  hf-resnet sweep --config resnet50/report_recipe --space resnet50/report_sweep --n_trials 20 \\
      --output_dir sweeps/report --train_dir data/train --validation_dir data/val --storage journal:/shared/s.log
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit code 2."""

    def error(self, message: str):
        print(f"error: {message}; run `{self.prog} --help` for the options.", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(OneLineParser(prog="hf-resnet sweep", description=DESCRIPTION, allow_abbrev=False,
                                       formatter_class=argparse.RawDescriptionHelpFormatter))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The sweep's own options (also shown by `hf-resnet --help`'s sub-command parser)."""
    parser.add_argument("--config", metavar="RECIPE", help="the recipe every trial runs (a path or a shipped name)")
    parser.add_argument("--space", metavar="SPACE", required=True,
                        help="the search space: YAML of field: {type: float|int|categorical, ...}, or a shipped one")
    parser.add_argument(*both("--n_trials"), type=positive, required=True, metavar="N",
                        help="complete or pruned trials the study should reach, across every process sharing it")
    parser.add_argument(*both("--output_dir"), required=True, metavar="DIR",
                        help="where the trials, study.db, trials.csv, the plots and best/ go")
    parser.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe",
                        help="Optuna's sampler, seeded with the recipe's seed (default tpe)")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                        help="stop a trial whose evaluations fall behind the others' (default median, once 3 trials "
                        "finished)")
    parser.add_argument("--storage", metavar="URL", help="an RDB URL (postgresql://..., sqlite:///PATH) or a journal "
                        "file for a shared file system (journal:PATH, or PATH.log); default DIR/study.db")
    parser.add_argument(*both("--study_name"), default="hf-resnet", metavar="NAME",
                        help="the study's name in the storage (default hf-resnet)")
    parser.add_argument(*both("--keep_checkpoints"), action="store_true",
                        help="keep each trial's checkpoint-* folders (by default removed when the trial ends)")
    return parser


def main(argv: list[str]) -> int:
    """`hf-resnet sweep ARGS`, on every process of `accelerate launch`; returns the exit code."""
    known, train_fields = build_parser().parse_known_args(argv)  # --help answers here
    from ..data.images import decoder_choice_problem
    from ..errors import ConfigError, HfResnetError

    try:
        if problem := decoder_choice_problem():
            raise ConfigError(problem)
        from ..training.distributed import end_process_group
        from .runner import SweepOptions, sweep

        sweep(SweepOptions(**vars(known)), train_fields)
        end_process_group()
    except HfResnetError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("\ninterrupted. Rerun the same command to go on: the finished trials are kept, and the interrupted "
              "one runs again with the same values.", file=sys.stderr)
        raise SystemExit(130) from None
    return 0


if __name__ == "__main__":  # accelerate launch -m hf_resnet.sweep.command ...
    sys.exit(main(sys.argv[1:]))
