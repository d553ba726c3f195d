"""The search space of `hf-resnet sweep`: a YAML mapping of `hf-resnet train` fields to Optuna distributions,
checked against the recipe before any trial runs.

    learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
    per_device_train_batch_size: {type: categorical, choices: [32, 64, 128]}
    unfreeze_epochs: {type: categorical, choices: [[2, 4], [1, 2, 3]]}

Any field the train parser owns can be searched, the Trainer's and ours alike (the Trainer's own
`hyperparameter_search` drops the fields that are not `TrainingArguments`). A trial's values reach the run as
command-line flags after the recipe's (`--learning_rate 0.0042`), so each goes through the same conversion and
checks as `hf-resnet train` gives it, and the trial is that `hf-resnet train` command. Every end of a range and
every choice is parsed that way when the space is loaded: an unknown field, a bad range or a value the field cannot
take is a one-line `ConfigError` before the first trial.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from collections.abc import Callable
from pathlib import Path

import yaml

from ..errors import ConfigError, first_line
from ..parser import argument_fields, find_recipe

KINDS = ("float", "int", "categorical")
KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
        "categorical": {"type", "choices"}}
NOT_SEARCHED = {"output_dir": "each trial has its own, DIR/trial-NNN (set --output_dir DIR)"}
SCALARS = (type(None), bool, int, float, str)  # what Optuna stores as a categorical choice


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched field: its distribution, and for a categorical one the values behind Optuna's choices (a
    list such as `[2, 4]` is stored as its JSON text, which Optuna can persist)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()
    labels: tuple = ()

    def suggest(self, trial):
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return self.decode(trial.suggest_categorical(self.name, list(self.labels)))

    def decode(self, stored):
        """The field's value for what Optuna stored."""
        return self.choices[self.labels.index(stored)] if self.kind == "categorical" else stored

    def grid(self) -> list:
        """Every value, for `--sampler grid`: choices, or a range with a step."""
        if self.kind == "categorical":
            return list(self.labels)
        if self.step is None and self.kind == "float":
            raise ConfigError(f"`--sampler grid` needs a finite set of values; give `{self.name}` a `step` or make "
                              "it categorical.")
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        return [self.low + i * step if self.kind == "float" else int(self.low + i * step) for i in range(count)]

    def endpoints(self) -> list:
        """The values checked before the sweep: both ends of a range, every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]


def flag_values(name: str, value) -> list[str]:
    """`--name value` as the train parser reads it: null, true/false, a list as separate values."""
    if isinstance(value, dict):
        raise ConfigError(f"`{name}`: a mapping ({value!r}) cannot be given as a flag; search a field whose value "
                          "is a number, a string or a list of them.")
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"`{name}`: an empty list cannot be given as a flag; leave that choice out.")
        return [f"--{name}", *(flag_values(name, v)[1] for v in value)]
    if value is None:
        return [f"--{name}", "null"]
    return [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    source: str

    def suggest(self, trial) -> dict:
        """Ask the trial for a value of every field, in the space's order."""
        return {p.name: p.suggest(trial) for p in self.params}

    def decode(self, stored: dict) -> dict:
        """A trial's stored params -> the fields' values."""
        return {p.name: p.decode(stored[p.name]) for p in self.params if p.name in stored}

    def grid(self) -> dict:
        return {p.name: p.grid() for p in self.params}

    def argv(self, values: dict) -> list[str]:
        return [token for name, value in values.items() for token in flag_values(name, value)]


def _field_type(name: str):
    dtype, _ = argument_fields()[name]
    hint = typing.get_type_hints(dtype)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if len(args) == 1 else hint


def parse_param(name: str, spec, where: str) -> Param:
    """One entry of the space, its shape checked (the values are checked by parsing them, in `load_space`)."""
    fields = argument_fields()
    if name not in fields:
        close = difflib.get_close_matches(str(name), sorted(fields), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: {name!r} is no field of `hf-resnet train`.{hint} Fix its name or remove it.")
    if name in NOT_SEARCHED:
        raise ConfigError(f"{where}: `{name}` cannot be searched: {NOT_SEARCHED[name]}.")
    if not isinstance(spec, dict) or spec.get("type") not in KINDS:
        raise ConfigError(f"{where}: `{name}` needs a mapping with `type:` {' | '.join(KINDS)}, e.g. "
                          f"{{type: float, low: 0.001, high: 0.01, log: true}}; got {spec!r}.")
    kind = spec["type"]
    if unknown := sorted(set(spec) - KEYS[kind]):
        raise ConfigError(f"{where}: `{name}` ({kind}) takes only {', '.join(sorted(KEYS[kind]))}; remove {unknown}.")
    if kind == "categorical":
        return _categorical(name, spec.get("choices"), where)
    return _range(name, kind, spec, where)


def _categorical(name: str, choices, where: str) -> Param:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: `{name}` needs `choices:`, a non-empty list of values.")
    labels = tuple(c if isinstance(c, SCALARS) else json.dumps(c) for c in choices)
    if len(set(map(repr, labels))) != len(labels):
        raise ConfigError(f"{where}: `{name}` lists a choice twice ({choices}); list each once.")
    return Param(name, "categorical", choices=tuple(choices), labels=labels)


def _range(name: str, kind: str, spec: dict, where: str) -> Param:
    low, high, log, step = spec.get("low"), spec.get("high"), spec.get("log", False), spec.get("step")
    wanted = "whole numbers" if kind == "int" else "numbers"
    if not (_number(low) and _number(high)) or (kind == "int" and not (float(low).is_integer()
                                                                      and float(high).is_integer())):
        raise ConfigError(f"{where}: `{name}` ({kind}) needs `low` and `high`, {wanted}; got {low!r} and {high!r}.")
    if not low < high:
        raise ConfigError(f"{where}: `{name}` needs `low` below `high`; got {low} and {high}.")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: `{name}`: `log` is true or false, got {log!r}.")
    if log and low <= 0:
        raise ConfigError(f"{where}: `{name}`: a log range needs `low` above 0; got {low}.")
    if step is not None and (not _number(step) or step <= 0 or log):
        raise ConfigError(f"{where}: `{name}`: `step` must be a number above 0, and cannot go with `log: true`.")
    field_type = _field_type(name)
    if kind == "float" and field_type is not float:
        raise ConfigError(f"{where}: `{name}` takes {getattr(field_type, '__name__', field_type)} values, not any "
                          "number in a range; use `type: int` or `type: categorical`.")
    if kind == "int" and field_type not in (int, float):
        raise ConfigError(f"{where}: `{name}` takes {getattr(field_type, '__name__', field_type)} values, not "
                          "numbers; use `type: categorical`.")
    convert = int if kind == "int" else float
    return Param(name, kind, convert(low), convert(high), log, None if step is None else convert(step))


def read_space(name: str | Path) -> SearchSpace:
    """The YAML file (or shipped space, `smoke/digits_sweep`) as Params, each entry's shape checked."""
    path = find_recipe(name, kind="space")
    where = f"search space {str(name)!r}"
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML ({first_line(err)}).") from err
    if not isinstance(values, dict) or not values:
        raise ConfigError(f"{where} must be a mapping of field: {{type: ..., ...}}, with at least one field.")
    return SearchSpace(tuple(parse_param(str(k), v, where) for k, v in values.items()), str(name))


def load_space(name: str | Path, base_argv: list[str], check: Callable[[list[str]], object]) -> SearchSpace:
    """Read the space and parse every end and choice with the recipe and the command line's fields (`check`
    is `parse_args`): what a trial would meet, before any trial runs."""
    space = read_space(name)
    given = {a[2:].split("=", 1)[0].replace("-", "_") for a in base_argv if a.startswith("--")}
    for param in space.params:
        if param.name in given:
            raise ConfigError(f"`--{param.name}` is given on the command line and searched by {space.source!r}; "
                              "remove one of them.")
        for value in param.endpoints():
            try:
                check([*base_argv, *flag_values(param.name, value)])
            except ConfigError as err:
                raise ConfigError(f"search space {space.source!r}: `{param.name}: {value}` cannot be run: "
                                  f"{first_line(err)}") from None
    return space
