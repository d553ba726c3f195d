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
from transformers.utils import logging as transformers_logging

from ..bundled import bundled_names, resolve_asset
from ..configs import ModelArguments
from ..constants import label_names
from ..errors import ModelLoadError, first_line
from ..hub import is_offline

logger = logging.getLogger(__name__)

HEAD_PREFIXES = ("classifier", "head", "fc")
SMOKE_COMMAND = "hf-resnet train --config smoke/digits_smoke"
FOLDER_COMMAND = "hf-resnet train --config smoke/imagefolder_smoke --train_dir my/train [--validation_dir my/val]"


def is_head(name: str) -> bool:
    """Whether the parameter or module `name` (as in `named_parameters`) belongs to the classifier head."""
    return name.split(".", 1)[0] in HEAD_PREFIXES


def _hub_error(name: str, err: Exception) -> ModelLoadError:
    offline = "" if is_offline() else (
        " If this machine has no network, set HF_HUB_OFFLINE=1: the check then takes no time."
    )
    return ModelLoadError(
        f"Could not load {name!r}: it is not a local folder and the Hub could not be reached or has no cached copy "
        f"({first_line(err, with_type=True)}).{offline}\nWays on:\n"
        f"  1. point `model_name_or_path` at a local checkpoint folder (config.json + model.safetensors, e.g. one "
        f"saved with `save_pretrained` or downloaded with `hf download {name}` on a machine with network);\n"
        f"  2. train a small ResNet from a config shipped in the package on your own image folder, offline:\n"
        f"     {FOLDER_COMMAND}\n"
        f"  3. or the offline smoke run on the bundled digits: {SMOKE_COMMAND}\n"
        f"Shipped with the package: model configs {', '.join(bundled_names('config'))} (no weights: a model built "
        f"from one starts random); image processors {', '.join(bundled_names('processor'))}; datasets "
        f"{', '.join(bundled_names('dataset'))}."
    )


def _load_error(name: str, what: str, err: Exception) -> ModelLoadError:
    """A name that is a local folder gets its own message; anything else could not be had from the Hub."""
    if "custom code" in str(err):
        return ModelLoadError(
            f"{name!r} needs its own Python code to load (its config's auto_map), and hf-resnet never runs a "
            "checkpoint's code (trust_remote_code stays off). Use a checkpoint of a model type transformers "
            "ships, such as resnet."
        )
    if os.path.isdir(name):
        reason = first_line(err, with_type=True)
        return ModelLoadError(f"{name!r} is a folder but holds no readable {what} ({reason}).")
    return _hub_error(name, err)


def _hub_kwargs(args: ModelArguments) -> dict:
    # trust_remote_code is never set: a checkpoint that needs its own Python code is refused, not run.
    return {"revision": args.model_revision, "cache_dir": args.cache_dir, "token": args.token,
            "trust_remote_code": False}


def load_config(args: ModelArguments):
    """The checkpoint's (or `config_name`'s) config, with a clear error when it cannot be had offline."""
    name = args.model_name_or_path or resolve_asset(args.config_name)
    try:
        return AutoConfig.from_pretrained(name, **_hub_kwargs(args))
    except (OSError, ValueError, KeyError) as err:  # unreachable, no config.json, unknown model_type, remote code
        raise _load_error(name, "model config (config.json with a known model_type)", err) from err


def load_image_processor(args: ModelArguments):
    name = args.image_processor_name or args.model_name_or_path
    if name is None:
        config_dir = resolve_asset(args.config_name)
        has_own = os.path.isfile(os.path.join(config_dir, "preprocessor_config.json"))
        name = args.config_name if has_own else "bundled:resnet-50-processor"
    name = resolve_asset(name)
    try:
        return AutoImageProcessor.from_pretrained(name, **_hub_kwargs(args))
    except (OSError, ValueError, KeyError) as err:
        raise _load_error(name, "image processor (preprocessor_config.json)", err) from err


def _normalise(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def pretrained_label_map(config, labels: list[str]) -> list[int] | None:
    """Dataset label id -> checkpoint label id when both name the same classes; None when they do not."""
    names = label_names(config, missing_as_index=False)
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
    names = label_names(config, missing_as_index=False)
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
    name, linear = [(n, m) for n, m in model.named_modules() if n and is_head(n) and isinstance(m, nn.Linear)][-1]
    head = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None)
    with torch.no_grad():
        head.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            head.bias.copy_(linear.bias[rows])
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, head)
    _set_labels(model.config, labels)
    model.num_labels = len(labels)


def build_model(args: ModelArguments, labels: list[str], config, label_map: list[int] | None):
    """The model to fine-tune on `labels`, from `config` (already loaded by `load_config`).

    `label_map` (from `pretrained_label_map`, None when the names differ) says whether the pretrained head is
    kept; else the new head starts from the checkpoint's rows of the same classes when there are such rows
    (`head_from_checkpoint_rows`); a model built from `config_name` always starts random with a head of
    len(labels).
    """
    if args.model_name_or_path is None:
        _set_labels(config, labels)
        logger.info("Building a randomly initialised %s from %s", config.model_type, args.config_name)
        return AutoModelForImageClassification.from_config(config)
    if label_map is not None:
        logger.info("Dataset classes are the checkpoint's %d classes: keeping the pretrained head.", len(labels))
        return _from_pretrained(args, config)
    rows = checkpoint_rows(config, labels) if args.head_from_checkpoint_rows else None
    if rows is not None:
        model = _from_pretrained(args, config)  # with its own head, cut down to the data's classes below
        _head_from_rows(model, rows, labels)
        logger.info("New %d-class head for %s from rows %s of the pretrained classifier.", len(labels),
                    _short(labels), _short(rows))
        return model
    pretrained = config.num_labels
    _set_labels(config, labels)
    model = _from_pretrained(args, config, new_head=True)
    logger.info("New %d-class head for %s; the pretrained head had %d classes. The backbone keeps its weights.",
                len(labels), _short(labels), pretrained)
    return model


def _short(labels: list[str], limit: int = 5) -> str:
    return ", ".join(map(str, labels[:limit])) + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _set_labels(config, labels: list[str]) -> None:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}


def _from_pretrained(args: ModelArguments, config, new_head: bool = False):
    """Load the weights, safetensors only unless `allow_pickle_weights`; transformers' own load report is kept
    quiet and anything it would have reported beyond the replaced head is logged in our words."""
    name = args.model_name_or_path
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the report's MISMATCH table for a head we replace on purpose
    try:
        model, info = AutoModelForImageClassification.from_pretrained(
            name, config=config, ignore_mismatched_sizes=new_head, output_loading_info=True,
            use_safetensors=None if args.allow_pickle_weights else True, **_hub_kwargs(args),
        )
    except (OSError, ValueError) as err:
        if not args.allow_pickle_weights and _has_pickle_weights(name):
            raise ModelLoadError(
                f"{name!r} has its weights only in pickle format (pytorch_model.bin), which can run code when "
                "loaded; hf-resnet loads safetensors only. If you trust this checkpoint, pass "
                "`--allow_pickle_weights true`, or convert it to safetensors."
            ) from err
        raise _load_error(name, "model weights (model.safetensors)", err) from err
    finally:
        transformers_logging.set_verbosity(verbosity)
    if args.allow_pickle_weights and _has_pickle_weights(name) and not _has_safetensors(name):
        logger.warning("Loaded pickle weights from %s (allow_pickle_weights): only do so for checkpoints you trust.",
                       name)
    findings = {
        "with another shape": [key for key, *_ in info.get("mismatched_keys", ())],
        "missing from the checkpoint (left random)": info.get("missing_keys", ()),
        "in the checkpoint but unused": info.get("unexpected_keys", ()),
    }
    for kind, keys in findings.items():
        keys = sorted(k for k in keys if not (new_head and is_head(k)))  # the head we replace is expected
        if keys:
            logger.warning("%d weight(s) of %s %s: %s", len(keys), name, kind, _short(keys))
    return model


def _local_files(name: str) -> list[str]:
    return os.listdir(name) if os.path.isdir(name) else []


def _has_pickle_weights(name: str) -> bool:
    return any(f.endswith(".bin") and f.startswith("pytorch_model") for f in _local_files(name))


def _has_safetensors(name: str) -> bool:
    return any(f.endswith(".safetensors") for f in _local_files(name))


def label_remap(kept_rows: list[int] | None, num_classes: int) -> list[int] | None:
    """Dataset label id -> the label id the head scores it as, for the inputs; None when they are the same ids (a
    new head for the data's classes, or the checkpoint's head in the data's own order)."""
    if kept_rows is None or kept_rows == list(range(num_classes)):
        return None
    return kept_rows


def head_label_map(args: ModelArguments, config, labels: list[str]) -> list[int] | None:
    """Dataset label id -> pretrained head id when the checkpoint's head is kept; None when a new one is built."""
    return None if args.model_name_or_path is None else pretrained_label_map(config, labels)
