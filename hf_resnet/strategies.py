"""How a model is fine-tuned: which parts are frozen, and the optimizer's parameter groups.

- Components: a parameter belongs to the head (`classifier`, `head`, `fc`) or to the backbone.
- Freezing: a frozen part gets `requires_grad=False`, and its BatchNorm layers are held in eval mode by a forward
  pre-hook, so their running statistics stay bit-identical while the rest of the model trains. The hook is a
  handle that `release_batchnorm` removes: a part unfrozen later trains its BatchNorm again.
- Parameter groups: no weight decay on biases and norm weights (`ndim <= 1`, as timm does); the head may have
  its own learning rate.
"""

from __future__ import annotations

from torch import nn

from .errors import ConfigError
from .modeling import HEAD_PREFIXES, is_head

_EVAL_HOOK = "_hf_resnet_eval_hook"  # attribute holding the hook handle of a BatchNorm held in eval mode


def _stay_in_eval(module: nn.Module, args) -> None:
    module.training = False  # `model.train()` set it; this forward (and its running statistics) is eval's


def hold_batchnorm(module: nn.Module) -> None:
    """Keep a BatchNorm layer in eval mode whatever `model.train()` says, until `release_batchnorm`."""
    if getattr(module, _EVAL_HOOK, None) is None:
        module.eval()
        setattr(module, _EVAL_HOOK, module.register_forward_pre_hook(_stay_in_eval))


def release_batchnorm(module: nn.Module) -> None:
    """Undo `hold_batchnorm`: the layer follows `model.train()` / `model.eval()` again."""
    handle = getattr(module, _EVAL_HOOK, None)
    if handle is not None:
        handle.remove()
        setattr(module, _EVAL_HOOK, None)


def batchnorm_held(module: nn.Module) -> bool:
    return getattr(module, _EVAL_HOOK, None) is not None


def set_frozen(model: nn.Module, frozen, keep_batchnorm_stats: bool = True) -> None:
    """Freeze the parameters and modules whose name `frozen(name)` accepts; unfreeze the others. Frozen BatchNorm
    layers are held in eval mode when `keep_batchnorm_stats` (their running statistics stay unmoved)."""
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen(name))
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        if name and frozen(name) and keep_batchnorm_stats:
            hold_batchnorm(module)
        else:
            release_batchnorm(module)


def apply_tuning(model: nn.Module, tuning: str) -> dict[str, int]:
    """Freeze per the strategy (`full`: nothing; `linear_probe`: everything but the head); return counts of
    trainable and frozen parameters."""
    if tuning == "linear_probe":
        set_frozen(model, lambda name: not is_head(name))
    else:
        set_frozen(model, lambda name: False)
    counts = parameter_counts(model)
    if counts["trainable_parameters"] == 0:
        raise ConfigError(
            f"`tuning: {tuning}` leaves no trainable parameters: the model's head is not named "
            f"{' / '.join(HEAD_PREFIXES)}; use `tuning: full`."
        )
    return counts


def parameter_counts(model: nn.Module) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable_parameters": trainable, "frozen_parameters": frozen}


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr: float | None = None) -> list[dict]:
    """Optimizer groups: (backbone, head) x (decay, no decay), trainable parameters only, empty groups dropped."""
    buckets: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((is_head(name), param.ndim > 1), []).append(param)
    return [
        {
            "params": params,
            "lr": head_lr if head and head_lr is not None else lr,
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (head, decay), params in sorted(buckets.items())
    ]
