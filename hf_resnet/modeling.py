"""Load or build the model and its image processor; set up its head, freezing and parameter groups.

- Head: when the dataset's class names are the checkpoint's (ImageNet-1k with microsoft/resnet-50) the
  pretrained head is kept and labels are mapped by name; otherwise a new head of the right size replaces it.
- Freezing: `linear_probe` freezes everything but the head and keeps the backbone's BatchNorm in eval mode, so
  its running statistics stay bit-identical too.
- Parameter groups: no weight decay on biases and norm weights (`ndim <= 1`, as timm does); the head may have
  its own learning rate.
"""

from __future__ import annotations

import logging
import os
import types

from torch import nn
from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

from .bundled import resolve_asset
from .configs import ModelArguments

logger = logging.getLogger(__name__)

HEAD_PREFIXES = ("classifier", "head", "fc")
SMOKE_COMMAND = "python recipes/finetune.py --config recipes/smoke/digits_smoke.yaml"


class ModelLoadError(OSError):
    """The checkpoint cannot be read; the message names the ways on."""


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


def build_model(args: ModelArguments, labels: list[str]):
    """-> (model, label_map). label_map is None unless the pretrained head is kept with another class order."""
    config = load_config(args)
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    if args.model_name_or_path is None:
        config.num_labels = len(labels)
        config.id2label, config.label2id = id2label, label2id
        logger.info("Building a randomly initialised %s from %s", config.model_type, args.config_name)
        return AutoModelForImageClassification.from_config(config), None
    label_map = pretrained_label_map(config, labels)
    if label_map is not None:
        logger.info("Dataset classes are the checkpoint's %d classes: keeping the pretrained head.", len(labels))
        model = AutoModelForImageClassification.from_pretrained(args.model_name_or_path, config=config, **_hub_kwargs(args))
        return model, (None if label_map == list(range(len(labels))) else label_map)
    model = AutoModelForImageClassification.from_pretrained(
        args.model_name_or_path,
        num_labels=len(labels),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,  # a new head of len(labels) outputs
        **_hub_kwargs(args),
    )
    return model, None


def is_head(name: str) -> bool:
    return name.split(".", 1)[0] in HEAD_PREFIXES


def _keep_eval(module: nn.Module) -> None:
    """Make `module.train()` a no-op that leaves it in eval mode (frozen BatchNorm keeps its running stats)."""
    module.eval()
    module.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), module)


def apply_tuning(model: nn.Module, tuning: str) -> dict[str, int]:
    """Freeze per the strategy; return counts of trainable and frozen parameters."""
    if tuning == "linear_probe":
        for name, param in model.named_parameters():
            param.requires_grad_(is_head(name))
        for name, module in model.named_modules():
            if name and not is_head(name) and isinstance(module, nn.modules.batchnorm._BatchNorm):
                _keep_eval(module)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if trainable == 0:
        raise ValueError("No trainable parameters left; check `tuning` and the model's head name.")
    return {"trainable_parameters": trainable, "frozen_parameters": frozen}


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr: float | None = None) -> list[dict]:
    """Optimizer groups: (backbone, head) x (decay, no decay), trainable parameters only, empty groups dropped."""
    buckets: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((is_head(name), param.ndim > 1), []).append(param)
    groups = []
    for (head, decay), params in sorted(buckets.items()):
        groups.append({
            "params": params,
            "lr": head_lr if head and head_lr is not None else lr,
            "weight_decay": weight_decay if decay else 0.0,
        })
    return groups
