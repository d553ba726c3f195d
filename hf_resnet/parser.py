"""Command line and YAML recipes -> argument dataclasses.

- `--config recipe.yaml` sets defaults; any `--field value` on the command line overrides them. `--config` takes a
  path, or the name of a recipe shipped in the package (`smoke/digits_smoke`, see `hf_resnet/recipes/`), so an
  installed package trains without a clone of the repository.
- A YAML key or flag that no dataclass owns is an error that names it (and the closest real field).
- `--field null` (or `none`, or an empty value) clears any optional field, e.g. a recipe's `dataset_name`.
- A data source on the command line replaces the recipe's: `--train_dir`/`--validation_dir` drop a recipe's
  `dataset_name`, and `--dataset_name` drops a recipe's `train_dir`/`validation_dir`.
- Every parse error is a `ConfigError` (one line, exit 2), never argparse's page of usage.
- `--help` prints a short summary (the fields people set); `--help-all` prints every field.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import textwrap
import types
import typing
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .configs import DataArguments, FinetuneTrainingArguments, ModelArguments
from .constants import is_null, value_of
from .errors import ConfigError, first_line
from .settings import check_arguments
from .strategy_config import StrategyArguments

RECIPES = Path(__file__).parent / "recipes"
ARGUMENT_CLASSES = (ModelArguments, DataArguments, StrategyArguments, FinetuneTrainingArguments)
NONE_IS_A_VALUE = {"report_to"}  # `--report_to none` means "no tracker", as transformers documents it
SPACE_SUFFIX = "_sweep"  # recipes/<folder>/<name>_sweep.yaml: a search space (`hf-resnet sweep --space`), no recipe
DATA_SOURCES = {"hub": ("dataset_name", "dataset_config_name"), "folders": ("train_dir", "validation_dir")}
# The TrainingArguments fields `--help` shows; `--help-all` shows the other ~90.
TRAINER_FIELDS = (
    "output_dir", "num_train_epochs", "max_steps", "per_device_train_batch_size", "per_device_eval_batch_size",
    "gradient_accumulation_steps", "learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps", "optim",
    "bf16", "fp16", "dataloader_num_workers", "eval_strategy", "save_strategy", "save_total_limit",
    "load_best_model_at_end", "metric_for_best_model", "resume_from_checkpoint", "on_nonfinite_loss", "do_train",
    "do_eval", "push_to_hub", "hub_model_id", "report_to", "seed", "torch_compile",
)


class RecipeParser(HfArgumentParser):
    """HfArgumentParser whose errors are one-line `ConfigError`s instead of a usage page and exit."""

    def error(self, message: str):
        raise ConfigError(f"{message}; run with --help for the fields (--help-all for every one).")


def make_parser() -> RecipeParser:
    """The parser behind `hf-resnet train`, `recipes/finetune.py` and the tests: model, data, strategy, Trainer."""
    # allow_abbrev=False: `--learning_rat` must be an error, as the same typo is in YAML, not silently a prefix match
    return RecipeParser(ARGUMENT_CLASSES, allow_abbrev=False, prog="hf-resnet train")


# Recipes -----------------------------------------------------------------------------------------------------------


def shipped_recipes(kind: str = "recipe") -> list[str]:
    """Names of the recipes inside the package, as `--config` takes them (`smoke/digits_smoke`); with
    `kind="space"`, the search spaces of `hf-resnet sweep --space` (`smoke/digits_sweep`), shipped beside them."""
    names = sorted(p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.rglob("*.yaml"))
    return [name for name in names if name.endswith(SPACE_SUFFIX) == (kind == "space")]


def find_recipe(name: str | Path, kind: str = "recipe") -> Path:
    """A recipe path as given, else the shipped recipe of that name (`smoke/digits_smoke`, with or without
    `.yaml`, with or without a leading `recipes/`); `kind="space"` looks among the shipped search spaces."""
    path = Path(name)
    if path.is_file():
        return path
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("recipes",) else path
    for candidate in (RECIPES / relative, RECIPES / relative.with_suffix(".yaml")):
        if candidate.is_file() and RECIPES in candidate.resolve().parents and \
                candidate.stem.endswith(SPACE_SUFFIX) == (kind == "space"):
            return candidate
    flag, what = ("--space", "search space") if kind == "space" else ("--config", "recipe")
    raise ConfigError(
        f"{what.capitalize()} {str(name)!r} is neither a YAML file nor a shipped {what}; pass {flag} with a path, or "
        f"one of: {', '.join(shipped_recipes(kind))}."
    )


def argument_fields() -> dict[str, tuple[type, dataclasses.Field]]:
    """Every field the parser owns: name -> (its dataclass, the field)."""
    return {f.name: (dtype, f) for dtype in ARGUMENT_CLASSES for f in dataclasses.fields(dtype) if f.init}


def read_recipe(path: str | Path) -> dict:
    """Load a YAML recipe (a path or a shipped name) and reject keys no argument dataclass owns."""
    path = find_recipe(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Recipe {str(path)!r} is not valid YAML ({first_line(err)}).") from err
    if not isinstance(values, dict):
        raise ConfigError(f"Recipe {str(path)!r} must be a mapping of field: value, got {type(values).__name__}.")
    known = argument_fields()
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown key {key!r} in recipe {str(path)!r}.{hint} Remove it or fix its name.")
    return values


# The command line --------------------------------------------------------------------------------------------------


def _pop_config(argv: list[str]) -> str | None:
    """Remove `--config X` / `--config=X` from argv; return X."""
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs the path of a YAML recipe (or a shipped recipe's name).")
            value = argv[i + 1]
            del argv[i : i + 2]
            return value
        if arg.startswith("--config="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def _is_optional(dtype: type, name: str) -> bool:
    hint = typing.get_type_hints(dtype)[name]
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _pop_nulls(argv: list[str]) -> dict[str, None]:
    """Remove `--field null` (`none`, `~`, empty) from argv for optional fields; return them as None defaults."""
    known, nulls, i = argument_fields(), {}, 0
    while i < len(argv):
        arg = argv[i]
        name, value, width = arg[2:], argv[i + 1] if i + 1 < len(argv) else None, 2
        if "=" in arg:
            name, value, width = arg[2:].split("=", 1)[0], arg.split("=", 1)[1], 1
        name = name.replace("-", "_")
        null = value is not None and is_null(value)
        if null and name in NONE_IS_A_VALUE and value.strip().lower() == "none":
            null = False
        if arg.startswith("--") and name in known and null:
            if not _is_optional(known[name][0], name):
                raise ConfigError(f"`--{name}` cannot be null: it needs a value (see --help).")
            nulls[name] = None
            del argv[i : i + width]
            continue
        i += 1
    return nulls


def _flags(argv: list[str]) -> set[str]:
    return {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}


def _replace_data_source(recipe: dict, given: set[str]) -> dict:
    """A data source named on the command line replaces the recipe's other kind of source."""
    for kind, fields in DATA_SOURCES.items():
        if given & set(fields):
            other = next(f for k, f in DATA_SOURCES.items() if k != kind)
            recipe = {key: value for key, value in recipe.items() if key not in other}
    return recipe


def parse_args(argv: list[str] | None = None):
    """Return (model_args, data_args, strategy_args, training_args) from `--config X.yaml` plus command-line
    overrides; `--help` prints the summary and exits 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help-all" in argv:
        make_parser().print_help()
        raise SystemExit(0)
    if "-h" in argv or "--help" in argv:
        print(summary_help())
        raise SystemExit(0)
    parser = make_parser()
    config_path = _pop_config(argv)
    nulls = _pop_nulls(argv)
    defaults = _replace_data_source(read_recipe(config_path), _flags(argv) | set(nulls)) if config_path else {}
    parser.set_defaults(**{**defaults, **nulls})
    try:
        *arguments, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:  # a dataclass's own checks (TrainingArguments raises ValueError)
        raise ConfigError(first_line(err)) from err
    if unknown:
        close = difflib.get_close_matches(unknown[0].lstrip("-"), sorted(argument_fields()), n=1)
        hint = f" Did you mean --{close[0]}?" if close else ""
        raise ConfigError(f"Unknown command-line arguments {unknown}.{hint} Run with --help for the fields.")
    check_arguments(*arguments)  # the checks across dataclasses, before anything loads
    return tuple(arguments)


# --help ------------------------------------------------------------------------------------------------------------

USAGE = """\
usage: hf-resnet train --config RECIPE [--field value ...]
       (the same as: python recipes/finetune.py ..., or accelerate launch recipes/finetune.py ...)

Fine-tune a ResNet image classifier and save what pipeline("image-classification") loads. A recipe (YAML) sets
the fields; --field value overrides any of them; --field null clears an optional one.

examples:
  hf-resnet train --config smoke/digits_smoke                       # offline: small ResNet, bundled digits
  hf-resnet train --config smoke/imagefolder_smoke --train_dir my/train    # offline: small ResNet, your folder
  hf-resnet train --config resnet50/imagefolder_full --train_dir data/train --validation_dir data/val

  --config RECIPE                   a YAML file, or a shipped recipe:
{recipes}"""
SECTIONS = (
    ("model (what is fine-tuned, its head):", ModelArguments),
    ("data (what it trains and evaluates on, how it is split and preprocessed):", DataArguments),
    ("strategy (what trains when, the rates, optimizer, schedule, loss, EMA, stopping):", StrategyArguments),
)


def _first_sentence(text: str) -> str:
    """The summary's share of a field's help: its first sentence (`--help-all` prints the rest)."""
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`])", text, maxsplit=1)[0]


def _describe(name: str, field: dataclasses.Field, width: int = 118) -> str:
    default = field.default if field.default is not dataclasses.MISSING else (
        field.default_factory() if field.default_factory is not dataclasses.MISSING else None
    )
    default = value_of(default)
    help_text = _first_sentence(" ".join(str(field.metadata.get("help", "")).split()))
    text = f"{help_text} (default: {default})" if default not in (None, "") else help_text
    lines = textwrap.wrap(text, width - 36) or [""]
    head = f"  --{name:<32}"
    if len(head) > 36:
        return "\n".join([head.rstrip(), *(" " * 36 + line for line in lines)])
    return "\n".join([head + lines[0], *(" " * 36 + line for line in lines[1:])])


def summary_help() -> str:
    """`--help`: usage and examples, every field hf-resnet adds, and the Trainer fields people change."""
    recipes = textwrap.fill(", ".join(shipped_recipes()), 118, initial_indent=" " * 36, subsequent_indent=" " * 36)
    out = [USAGE.format(recipes=recipes)]
    training = {f.name: f for f in dataclasses.fields(FinetuneTrainingArguments)}
    sections = [(title, dataclasses.fields(dtype)) for title, dtype in SECTIONS]
    sections.append(("training (the Trainer fields people change most; every TrainingArguments field is accepted):",
                     [training[name] for name in TRAINER_FIELDS]))
    for title, fields in sections:
        out += ["", title]
        out += [_describe(f.name, f) for f in fields if f.init]
    out += ["", "Every other TrainingArguments field: hf-resnet train --help-all"]
    return "\n".join(out)
