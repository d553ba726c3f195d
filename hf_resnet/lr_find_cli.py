"""`hf-resnet lr-find`: the learning-rate range test (`lr_find.py`) on the run `hf-resnet train` would start, with
its curve in `lr_find.png`, its record in `lr_find.json`, and the train command that uses the suggestion. Only
argparse at import, so `--help` stays fast; the recipe's fields go to `parser.parse_args` as `train`'s do."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .flags import both, positive

DESCRIPTION = """\
Run the learning-rate range test on the run `hf-resnet train` would start with the same arguments (the recipe's
freezing, parameter groups, loss, mixed precision and processes): the rate grows exponentially from --start_lr to
--end_lr over --num_steps optimizer steps, every group's rate scaled together so their ratios hold, and the test
stops once the smoothed loss passes --diverge times its best. Writes lr_find.png (the loss against the rate, log
axis, the suggestions marked) and lr_find.json (suggested_learning_rate, each suggestion, the curve) to
--output_dir, and prints the suggestion and the train command that uses it. No model or checkpoint is saved.

Suggestions (fastai's): valley (default), slide, minimum (the lowest loss's rate / 10), steep. Any field of
`hf-resnet train` is accepted. Examples:

  hf-resnet lr-find --config smoke/digits_smoke --output_dir lr-find-digits
  hf-resnet lr-find --config resnet50/imagefolder_fine_tune --train_dir data/train --at_epoch 1
"""
OPTIONS = (  # (flag, type, default, help)
    ("--start_lr", float, 1e-7, "first rate of the test (default 1e-7)"),
    ("--end_lr", float, 10.0, "last rate of the test (default 10)"),
    ("--num_steps", positive, 100, "optimizer steps of the test (default 100)"),
    ("--diverge", float, 4.0, "stop when the smoothed loss passes this many times its best (default 4)"),
    ("--beta", float, 0.98, "smoothing of the loss, an exponential moving average (default 0.98)"),
    ("--at_epoch", float, 0.0, "test with the freezing due at this epoch of the recipe's unfreeze_epochs "
     "(default 0: the first step's)"),
    ("--suggestion", str, "valley", "the suggestion printed and put in the command: valley, slide, minimum, steep"),
)


def add_command(commands) -> argparse.ArgumentParser:
    """`hf-resnet lr-find` in the command line's sub-commands (`cli.build_parser`: its --help, the list)."""
    return add_arguments(commands.add_parser(
        "lr-find", help="learning-rate range test on a recipe: lr_find.png, a suggested rate and the train command",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for flag, kind, default, text in OPTIONS:
        parser.add_argument(*both(flag), dest=flag[2:], type=kind, default=default, help=text)
    parser.add_argument(*both("--config"), metavar="RECIPE", help="the YAML recipe (path or shipped name); any "
                        "`hf-resnet train` field may follow, e.g. --train_dir DIR")
    return parser


def main(argv: list[str]) -> int:
    """`hf-resnet lr-find ARGS`: its own flags, then any `train` field for the recipe parser (`cli.main`)."""
    parser = add_arguments(argparse.ArgumentParser(  # no abbreviations: `--start` must reach the recipe parser whole
        prog="hf-resnet lr-find", description=DESCRIPTION, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter))
    known, rest = parser.parse_known_args(argv)
    from .data.images import decoder_choice_problem

    if problem := decoder_choice_problem():
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return run(known, rest)


def scaled_rates(strategy_args, learning_rate: float, factor: float) -> list[str]:
    """The flags that set every rate of the recipe `factor` times higher: learning_rate, head_learning_rate and each
    param_groups entry's lr (so their ratios hold, as in the test)."""
    flags = ["--learning_rate", f"{learning_rate * factor:.3g}"]
    if strategy_args.head_learning_rate is not None:
        flags += ["--head_learning_rate", f"{strategy_args.head_learning_rate * factor:.3g}"]
    if any(group["lr"] is not None for group in strategy_args.param_groups):
        flags.append("--param_groups")
        for group in strategy_args.param_groups:
            options = [f"{key}={group[key] * (factor if key == 'lr' else 1):.3g}" for key in ("lr", "weight_decay")
                       if group[key] is not None]
            flags.append(f"{group['params']}: {', '.join(options)}")
    return flags


def run(args: argparse.Namespace, rest: list[str] | None = None) -> int:
    from .errors import HfResnetError
    from .parser import parse_args
    from .training.distributed import end_process_group

    forwarded = ([] if args.config is None else ["--config", args.config]) + list(rest or [])
    try:
        model_args, data_args, strategy_args, training_args = parse_args(forwarded)
        from .lr_find import find_lr
        from .reports.plots import lr_find_png
        from .run import build_trainer

        built = build_trainer(model_args, data_args, strategy_args, training_args, resume=False)
        if built.trainer.train_dataset is None:
            raise HfResnetError("lr-find trains: it needs a train split and `do_train: true`.")
        result = find_lr(built.trainer, args.start_lr, args.end_lr, args.num_steps, args.beta, args.diverge,
                         args.at_epoch, args.suggestion)
    except HfResnetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if built.trainer.is_world_process_zero():
        folder = Path(training_args.output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        record = {**result.to_json(), "start_lr": args.start_lr, "end_lr": args.end_lr, "num_steps": args.num_steps,
                  "recipe_learning_rate": training_args.learning_rate}
        (folder / "lr_find.json").write_text(json.dumps(record, indent=2) + "\n")
        lr_find_png(folder / "lr_find.png", result.rates, result.losses, result.smoothed,
                    {name: result.marker(name) for name in result.suggestions}, result.suggestion)
        others = ", ".join(f"{name} {rate:.3g}" for name, rate in result.suggestions.items()
                           if name != result.suggestion)
        factor = result.suggested / training_args.learning_rate
        command = ["hf-resnet", "train", *forwarded, *scaled_rates(strategy_args, training_args.learning_rate, factor)]
        print(f"\nSuggested learning_rate: {result.suggested:.3g} ({result.suggestion}; {others}); the recipe's is "
              f"{training_args.learning_rate:g}. {len(result.rates)} steps, {result.stopped}.\n"
              f"Curve: {folder / 'lr_find.png'}, record: {folder / 'lr_find.json'}\nTrain with it:\n  "
              f"{shlex.join(command)}")
    end_process_group()
    return 0
