"""Load the checkpoint's config, image processor and model; keep or replace its head.

Head: when the dataset's class names are the checkpoint's (ImageNet-1k with microsoft/resnet-50) the pretrained
head is kept and labels are mapped by name (`pretrained_label_map`); when they are some of the checkpoint's (10
ImageNet classes), the new head starts from those rows of the pretrained classifier (`checkpoint_rows`);
otherwise a new, random head of the right size replaces it. What is frozen and how each part learns is
`strategies.py`'s business.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from .bundled import resolve_asset
from .configs import ModelArguments
from .errors import ModelLoadError

logger = logging.getLogger(__name__)

SMOKE_COMMAND = "hf-resnet train --config smoke/digits_smoke"


def _hub_error(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"Could not load {name!r}: it is not a local folder and the Hub could not be reached or has no cached copy "
        f"({type(err).__name__}: {str(err).splitlines()[0]}).\nTwo ways on:\n"
        f"  1. point `model_name_or_path` at a local checkpoint folder (config.json + model.safetensors, e.g. one "
        f"saved with `save_pretrained` or downloaded with `hf download {name}` on a machine with network);\n"
        f"  2. run the offline smoke recipe, which builds a small ResNet from a config in the package:\n"
        f"     {SMOKE_COMMAND}"
    )


def _hub_kwargs(args: ModelArguments) -> dict:
    return {"revision": args.model_revision, "cache_dir": args.cache_dir, "token": args.token}


def load_config(args: ModelArguments):
    """The checkpoint's (or `config_name`'s) config, with a clear error when it cannot be had offline."""
    name = args.model_name_or_path or resolve_asset(args.config_name)
    try:
        return AutoConfig.from_pretrained(name, **_hub_kwargs(args))
    except OSError as err:
        if os.path.isdir(name):
            raise ModelLoadError(f"{name!r} is a folder but holds no readable config.json ({err}).") from err
        raise _hub_error(name, err) from err


def load_image_processor(args: ModelArguments):
    name = args.image_processor_name or args.model_name_or_path
    if name is None:
        config_dir = resolve_asset(args.config_name)
        has_own = os.path.isfile(os.path.join(config_dir, "preprocessor_config.json"))
        name = args.config_name if has_own else "bundled:resnet-50-processor"
    name = resolve_asset(name)
    try:
        return AutoImageProcessor.from_pretrained(name, **_hub_kwargs(args))
    except OSError as err:
        raise _hub_error(name, err) from err


def _normalise(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def pretrained_label_map(config, labels: list[str]) -> list[int] | None:
    """Dataset label id -> checkpoint label id when both name the same classes; None when they do not."""
    names = [config.id2label.get(i, config.id2label.get(str(i))) for i in range(config.num_labels)]
    if len(names) != len(labels) or any(n is None for n in names):
        return None
    if [_normalise(n) for n in names] == [_normalise(label) for label in labels]:
        return list(range(len(labels)))  # same order; ImageNet-1k names "crane" twice, so order is checked first
    index = {_normalise(n): i for i, n in enumerate(names)}
    if len(index) != len(names) or any(_normalise(label) not in index for label in labels):
        return None
    return [index[_normalise(label)] for label in labels]


def checkpoint_rows(config, labels: list[str]) -> list[int] | None:
    """The checkpoint's head row for each dataset class, when the classes are fewer than the checkpoint's and
    each names exactly one of them: by its whole name or one of its comma-separated synonyms (ImageNet's
    "tabby, tabby cat"), case, spaces and underscores aside. None otherwise (ImageNet names "crane" twice)."""
    names = [config.id2label.get(i, config.id2label.get(str(i))) for i in range(config.num_labels)]
    if len(labels) >= len(names) or any(n is None for n in names):
        return None
    index: dict[str, set[int]] = {}
    for i, name in enumerate(names):
        for key in {_normalise(name), *(_normalise(part) for part in str(name).split(","))}:
            index.setdefault(key, set()).add(i)
    rows = []
    for label in labels:
        found = index.get(_normalise(label), set())
        if len(found) != 1:
            return None
        rows.append(next(iter(found)))
    return rows if len(set(rows)) == len(rows) else None


def _head_from_rows(model, rows: list[int], labels: list[str]) -> None:
    """Replace the classifier's last linear layer by one with only `rows` (weights and biases copied)."""
    name, linear = [(n, m) for n, m in model.named_modules() if n.startswith("classifier") and
                    isinstance(m, nn.Linear)][-1]
    head = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None)
    with torch.no_grad():
        head.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            head.bias.copy_(linear.bias[rows])
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, head)
    model.config.num_labels = model.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}


def build_model(args: ModelArguments, labels: list[str], config, label_map: list[int] | None):
    """The model to fine-tune on `labels`, from `config` (already loaded by `load_config`).

    `label_map` (from `pretrained_label_map`, None when the names differ) says whether the pretrained head is
    kept; else the new head starts from the checkpoint's rows of the same classes when there are such rows
    (`head_from_checkpoint_rows`); a model built from `config_name` always starts random with a head of
    len(labels).
    """
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    if args.model_name_or_path is None:
        config.num_labels = len(labels)
        config.id2label, config.label2id = id2label, label2id
        logger.info("Building a randomly initialised %s from %s", config.model_type, args.config_name)
        return AutoModelForImageClassification.from_config(config)
    if label_map is not None:
        logger.info("Dataset classes are the checkpoint's %d classes: keeping the pretrained head.", len(labels))
        return AutoModelForImageClassification.from_pretrained(
            args.model_name_or_path, config=config, **_hub_kwargs(args)
        )
    rows = checkpoint_rows(config, labels) if args.head_from_checkpoint_rows else None
    if rows is not None:
        model = AutoModelForImageClassification.from_pretrained(args.model_name_or_path, config=config,
                                                                **_hub_kwargs(args))
        _head_from_rows(model, rows, labels)
        logger.info("New %d-class head from rows %s of the pretrained classifier", len(labels), rows[:10])
        return model
    return AutoModelForImageClassification.from_pretrained(
        args.model_name_or_path,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,  # a new head of len(labels) outputs
        **_hub_kwargs(args),
    )


def head_label_map(args: ModelArguments, config, labels: list[str]) -> list[int] | None:
    """Dataset label id -> pretrained head id when the checkpoint's head is kept; None when a new one is built."""
    return None if args.model_name_or_path is None else pretrained_label_map(config, labels)
