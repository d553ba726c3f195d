"""Load the checkpoint's config, image processor and model; keep or replace its head.

Head: `alignment.py` finds the checkpoint's row for each dataset class (by position, class_map, synset id or
name). When they are all of its classes (ImageNet-1k with microsoft/resnet-50) the pretrained head is kept and
labels are mapped to its rows; when they are some of them (10 ImageNet classes), the new head starts from those
rows of the pretrained classifier, or, evaluating only, the head is cut to those rows (`SubsetHead`); otherwise
a new, random head of the right size replaces it. What is frozen and how each part learns is
`strategies.py`'s business.
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification
from transformers.utils import logging as transformers_logging

from ..bundled import bundled_names, resolve_asset
from ..configs import ModelArguments
from ..errors import ConfigError, ModelLoadError, first_line
from ..hub import is_offline
from .alignment import Alignment, align_classes, row_names

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
    if (missing := _missing_folder(name)) is not None:
        return missing
    return _hub_error(name, err)


def _missing_folder(name: str) -> ModelLoadError | None:
    """A name that reads as a local path (./x, /x, ~/x, or x/y whose x/ is here) but is no folder: a typo in a
    path, not a Hub id; names the folders beside it that come close."""
    path = Path(name).expanduser()
    parent = path.parent
    local = name.startswith((".", "/", "~")) or (str(parent) not in ("", ".") and parent.is_dir())
    if not local or not parent.is_dir():
        return None
    close = difflib.get_close_matches(path.name, sorted(p.name for p in parent.iterdir() if p.is_dir()), n=3)
    hint = f" Did you mean {', '.join(repr(str(parent / c)) for c in close)}?" if close else ""
    return ModelLoadError(f"No model folder {name!r}: {str(parent)!r} has no {path.name!r}.{hint}")


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


def head_linear(model) -> tuple[str, nn.Linear]:
    """The classifier's last linear layer, by name."""
    return [(n, m) for n, m in model.named_modules() if n and is_head(n) and isinstance(m, nn.Linear)][-1]


class SubsetHead(nn.Module):
    """A classifier cut to some of its rows for evaluation only: its logits are those rows' (top-k among them),
    and in eval mode it keeps, per batch, each example's rank among ALL the checkpoint's rows for the trainer's
    all-class figures (`take_ranks`). The full layer is kept as it is."""

    def __init__(self, linear: nn.Linear, rows: list[int]):
        super().__init__()
        self.full = linear
        self.register_buffer("rows", torch.tensor(rows, dtype=torch.long), persistent=False)
        self._logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.full(x)
        self._logits = None if self.training else logits.detach()
        return logits[:, self.rows]

    def take_ranks(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Per example of the last batch: how many of all rows score above its true class's row (0: top-1 among
        all); -1 where the label is ignored. None when no eval batch ran since."""
        logits, self._logits = self._logits, None
        if logits is None or labels is None:
            return None
        labels = labels.to(logits.device)
        scored = labels >= 0
        true_rows = self.rows[labels.clamp(min=0)]
        true_logit = logits.gather(1, true_rows[:, None])
        ranks = (logits > true_logit).sum(dim=1)
        return torch.where(scored, ranks, torch.full_like(ranks, -1))


def subset_head(model) -> SubsetHead | None:
    return next((m for m in model.modules() if isinstance(m, SubsetHead)), None)


def _head_from_rows(model, rows: list[int], labels: list[str], evaluate_only: bool = False) -> None:
    """Replace the classifier's last linear layer by one with only `rows` (weights and biases copied), or, to
    evaluate only, by a `SubsetHead` over the layer as it is."""
    name, linear = head_linear(model)
    if evaluate_only:
        head = SubsetHead(linear, rows)
    else:
        head = nn.Linear(linear.in_features, len(rows), bias=linear.bias is not None)
        with torch.no_grad():
            head.weight.copy_(linear.weight[rows])
            if linear.bias is not None:
                head.bias.copy_(linear.bias[rows])
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, head)
    _set_labels(model.config, labels)
    model.num_labels = len(labels)


def build_model(args: ModelArguments, labels: list[str], config, alignment: Alignment | None,
                evaluate_only: bool = False):
    """The model to fine-tune (or, with `evaluate_only`, to score) on `labels`, from `config` (already loaded by
    `load_config`).

    `alignment` (`alignment.align_classes`; None when the classes are not the checkpoint's) decides the head: all
    of its rows, the pretrained head kept; some of them, a head cut to those rows (to train: a new layer started
    from them, with `head_from_checkpoint_rows` or a `class_map`; to evaluate only: a `SubsetHead`, named as the
    checkpoint names those classes); none, a new random head. A model built from `config_name` always starts
    random with a head of len(labels).
    """
    if args.model_name_or_path is None:
        _set_labels(config, labels)
        logger.info("Building a randomly initialised %s from %s", config.model_type, args.config_name)
        return AutoModelForImageClassification.from_config(config)
    if alignment is not None and alignment.full:
        logger.info("Keeping the pretrained head: %s.", alignment.describe())
        return _from_pretrained(args, config)
    if alignment is not None and (evaluate_only or args.head_from_checkpoint_rows or args.class_map):
        names = row_names(config, alignment.rows)
        model = _from_pretrained(args, config)  # with its own head, cut down to the data's classes below
        _head_from_rows(model, alignment.rows, names if evaluate_only else labels, evaluate_only)
        if evaluate_only:
            logger.info("Evaluating the pretrained head on %s: top-k among those %d rows (%s); all_classes_* "
                        "metrics rank among all %d.", alignment.describe(), len(labels), _short(alignment.rows),
                        alignment.head_size)
        else:
            logger.info("New %d-class head for %s from rows %s of the pretrained classifier (%s).", len(labels),
                        _short(labels), _short(alignment.rows), alignment.describe())
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


def label_remap(alignment: Alignment | None, num_classes: int) -> list[int] | None:
    """Dataset label id -> the label id the head scores it as, for the inputs; None when they are the same ids (a
    new or cut head for the data's classes, or the checkpoint's whole head in the data's own order)."""
    if alignment is None or not alignment.full or alignment.rows == list(range(num_classes)):
        return None
    return alignment.rows


def head_alignment(args: ModelArguments, config, labels: list[str]) -> Alignment | None:
    """The checkpoint's row for each dataset class (`alignment.align_classes`); None for a model built from a
    config, or classes the checkpoint does not have."""
    if args.model_name_or_path is None:
        if args.class_map:
            raise ConfigError("class_map maps the data's classes onto a checkpoint's head, but the model is built "
                              "from `config_name` (random); set `model_name_or_path` or drop class_map.")
        return None
    return align_classes(config, labels, args.class_map)
