"""Command line and YAML recipes -> argument dataclasses.

`--config recipe.yaml` sets defaults, any `--field value` on the command line overrides them, and a YAML key
that no dataclass owns is an error that names the key (and the closest real field).
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from .configs import ConfigError, DataArguments, FinetuneTrainingArguments, ModelArguments


def make_parser() -> HfArgumentParser:
    """The parser behind `recipes/finetune.py` and the tests: model, data and Trainer arguments."""
    # allow_abbrev=False: `--learning_rat` must be an error, as the same typo is in YAML, not silently a prefix match
    return HfArgumentParser((ModelArguments, DataArguments, FinetuneTrainingArguments), allow_abbrev=False)


def _known_fields(parser: HfArgumentParser) -> set[str]:
    return {f.name for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init}


def read_recipe(path: str | Path, parser: HfArgumentParser) -> dict:
    """Load a YAML recipe and reject keys no argument dataclass owns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe {str(path)!r} does not exist; pass --config with the path to a YAML file.")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"Recipe {str(path)!r} must be a mapping of field: value, got {type(values).__name__}.")
    known = _known_fields(parser)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Unknown key {key!r} in recipe {str(path)!r}.{hint} Remove it or fix its name.")
    return values


def parse_args(argv: list[str] | None = None):
    """Return (model_args, data_args, training_args) from `--config X.yaml` plus command-line overrides."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs the path of a YAML recipe.")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    elif any(a.startswith("--config=") for a in argv):
        i = next(i for i, a in enumerate(argv) if a.startswith("--config="))
        config_path = argv.pop(i).split("=", 1)[1]
    if config_path is not None:
        parser.set_defaults(**read_recipe(config_path, parser))
    model_args, data_args, training_args, unknown = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    if unknown:
        raise ConfigError(f"Unknown command-line arguments {unknown}; run with --help for the list of fields.")
    return model_args, data_args, training_args
