"""Command line and YAML recipes -> argument dataclasses.

`--config recipe.yaml` sets defaults, any `--field value` on the command line overrides them, and a YAML key
that no dataclass owns is an error that names the key (and the closest real field). `--config` takes a path, or
the name of a recipe shipped in the package (`smoke/digits_smoke`, see `hf_resnet/recipes/`), so an installed
package trains without a clone of the repository.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .configs import DataArguments, FinetuneTrainingArguments, ModelArguments, StrategyArguments
from .errors import ConfigError

RECIPES = Path(__file__).parent / "recipes"
ARGUMENT_CLASSES = (ModelArguments, DataArguments, StrategyArguments, FinetuneTrainingArguments)


def make_parser() -> HfArgumentParser:
    """The parser behind `hf-resnet train`, `recipes/finetune.py` and the tests: model, data, strategy, Trainer."""
    # allow_abbrev=False: `--learning_rat` must be an error, as the same typo is in YAML, not silently a prefix match
    return HfArgumentParser(ARGUMENT_CLASSES, allow_abbrev=False)


def shipped_recipes() -> list[str]:
    """Names of the recipes inside the package, as `--config` takes them (`smoke/digits_smoke`)."""
    return sorted(p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.rglob("*.yaml"))


def find_recipe(name: str | Path) -> Path:
    """A recipe path as given, else the shipped recipe of that name (`smoke/digits_smoke`, with or without
    `.yaml`, with or without a leading `recipes/` as the repository's docs once spelt it)."""
    path = Path(name)
    if path.is_file():
        return path
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("recipes",) else path
    for candidate in (RECIPES / relative, RECIPES / relative.with_suffix(".yaml")):
        if candidate.is_file() and RECIPES in candidate.resolve().parents:
            return candidate
    raise ConfigError(
        f"Recipe {str(name)!r} is neither a YAML file nor a shipped recipe; pass --config with a path, or one of: "
        f"{', '.join(shipped_recipes())}."
    )


def _known_fields(parser: HfArgumentParser) -> set[str]:
    return {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init}


def read_recipe(path: str | Path, parser: HfArgumentParser) -> dict:
    """Load a YAML recipe (a path or a shipped name) and reject keys no argument dataclass owns."""
    path = find_recipe(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"Recipe {str(path)!r} is not valid YAML ({str(err).splitlines()[0]}).") from err
    if not isinstance(values, dict):
        raise ConfigError(f"Recipe {str(path)!r} must be a mapping of field: value, got {type(values).__name__}.")
    known = _known_fields(parser)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown key {key!r} in recipe {str(path)!r}.{hint} Remove it or fix its name.")
    return values


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


def parse_args(argv: list[str] | None = None):
    """Return (model_args, data_args, strategy_args, training_args) from `--config X.yaml` plus command-line
    overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    config_path = _pop_config(argv)
    if config_path is not None:
        parser.set_defaults(**read_recipe(config_path, parser))
    *arguments, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        raise ConfigError(f"Unknown command-line arguments {unknown}; run with --help for the list of fields.")
    return tuple(arguments)
