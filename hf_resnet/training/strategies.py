"""How a model is fine-tuned: which parts train when, each parameter's optimizer group, and the run's strategy
(freezing plan, head dropout, class weights, balanced sampler) in one object for the trainer.

Components of a Hugging Face ResNet, from input to output (torchvision's names in brackets):
    stem     resnet.embedder              (conv1 = its convolution, bn1 = its BatchNorm)
    stage1   resnet.encoder.stages.0      (layer1) ... stage4 = resnet.encoder.stages.3 (layer4)
    head     classifier                   (fc)
`backbone` is everything but the head. A selector (`trainable`, `param_groups`) is one of these names or a regular
expression searched in parameter names; a selector that matches no parameter is an error, not a silent no-op.

- Freezing: a frozen parameter has requires_grad=False. A BatchNorm layer whose parameters are all frozen is held
  in eval mode by a forward pre-hook, so its running statistics stay bit-identical while the rest trains
  (`frozen_batchnorm: eval`), or follows `model.train()` (`train`). `release_batchnorm` removes the hook.
- Unfreezing never changes the optimizer: every parameter is in it from the start, in its group with its rate. A
  frozen one gets no .grad and torch's optimizers skip it (no momentum, no weight decay, no state); unfreezing
  flips requires_grad and releases BatchNorm at the epoch boundary. A checkpoint's optimizer state therefore always
  matches its groups, and a resumed run recomputes the trainable set from its global step (`FreezePlan.apply`).
  Parts that unfreeze later stay trainable until training starts, so that DDP registers them for gradient sync.
- Parameter groups: the first `param_groups` entry whose selector matches sets the rate and/or weight decay; else
  the head learns at `head_learning_rate` and the backbone at `learning_rate` x layer_decay^depth (stage4 depth 1
  ... stem depth 5). No weight decay on biases and norm weights (`ndim <= 1`, as timm does).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from datasets import Dataset
from torch import nn

from ..errors import ConfigError
from ..strategy_config import SELECTOR_HELP, StrategyArguments
from .balance import BalancedSampler, inverse_frequency, label_counts, read_labels
from .losses import TrainingLoss
from .modeling import HEAD_PREFIXES, is_head

logger = logging.getLogger(__name__)

COMPONENTS = ("stem", "stage1", "stage2", "stage3", "stage4", "head")  # input to output
_PREFIXES = {"stem": "resnet.embedder.", **{f"stage{i + 1}": f"resnet.encoder.stages.{i}." for i in range(4)}}
_TORCHVISION = {
    "conv1": "resnet.embedder.embedder.convolution.",
    "bn1": "resnet.embedder.embedder.normalization.",
    "fc": "head",
    **{f"layer{i}": f"stage{i}" for i in range(1, 5)},
}
UNFREEZE_ORDER = ("head", "stage4", "stage3", "stage2", "stage1", "stem", "backbone")  # deepest first
DEPTH = {name: depth for depth, name in enumerate(UNFREEZE_ORDER)} | {"backbone": 5}  # layer decay exponent
_EVAL_HOOK = "_hf_resnet_eval_hook"  # attribute holding the hook handle of a BatchNorm held in eval mode
_DROPOUT_HOOK = "_hf_resnet_dropout_hook"


def component_of(name: str) -> str:
    """`stem`, `stage1`..`stage4`, `head`, or `backbone` for a parameter outside the ResNet layout."""
    if is_head(name):
        return "head"
    for component, prefix in _PREFIXES.items():
        if name.startswith(prefix):
            return component
    return "backbone"


def select(names: list[str], selector: str, field: str) -> set[str]:
    """The parameter names a selector (component, torchvision name or regular expression) picks."""
    key = _TORCHVISION.get(selector, selector)
    if key in COMPONENTS:
        chosen = {n for n in names if component_of(n) == key}
    elif key == "backbone":
        chosen = {n for n in names if not is_head(n)}
    elif key in _TORCHVISION.values():
        chosen = {n for n in names if n.startswith(key)}
    else:
        try:
            pattern = re.compile(key)
        except re.error as err:
            raise ConfigError(f"`{field}` selector {selector!r} is not a valid regular expression ({err}).") from err
        chosen = {n for n in names if pattern.search(n)}
    if not chosen:
        raise ConfigError(
            f"`{field}` selector {selector!r} matches no parameter of this model (first ones: "
            f"{', '.join(names[:3])}). Use {SELECTOR_HELP}."
        )
    return chosen


# BatchNorm held in eval mode, head dropout: hooks, so nothing on the modules is patched ---------------------------


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
    """Freeze the parameters whose name `frozen(name)` accepts; unfreeze the others. A BatchNorm layer whose own
    parameters are all frozen (or, without parameters, whose name is accepted) is held in eval mode when
    `keep_batchnorm_stats`, so its running statistics stay unmoved; every other one is released."""
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen(name))
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        own = [f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)]
        is_frozen = all(frozen(p) for p in own) if own else bool(name) and frozen(name)
        if is_frozen and keep_batchnorm_stats:
            hold_batchnorm(module)
        else:
            release_batchnorm(module)


def head_linear(model: nn.Module) -> nn.Linear:
    """The classifier head's linear layer (`classifier.1` in a HF ResNet)."""
    for name, module in model.named_modules():
        if name and is_head(name) and isinstance(module, nn.Linear):
            return module
    raise ConfigError(f"The model has no linear layer under {' / '.join(HEAD_PREFIXES)}; `head_dropout` needs one.")


def add_head_dropout(model: nn.Module, p: float) -> None:
    """Dropout on the head's input in training mode: a forward pre-hook, so the saved model (and `pipeline()`) is
    the plain architecture."""
    linear = head_linear(model)
    if getattr(linear, _DROPOUT_HOOK, None) is not None:
        getattr(linear, _DROPOUT_HOOK).remove()

    def dropout(module, args):
        return (F.dropout(args[0], p, module.training), *args[1:])

    setattr(linear, _DROPOUT_HOOK, linear.register_forward_pre_hook(dropout))


# What trains when -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FreezePlan:
    """Parameters frozen at the start, and the components that unfreeze later: (epoch, component), in order."""

    frozen: frozenset[str]
    unfreeze: tuple[tuple[float, str], ...] = ()
    keep_batchnorm_stats: bool = True

    def frozen_after(self, done: int):
        """The freeze rule once the first `done` unfreezes have happened."""
        thawed = {component for _, component in self.unfreeze[:done]}
        return lambda name: name in self.frozen and component_of(name) not in thawed

    def due(self, global_step: int, steps_per_epoch: int) -> int:
        """How many unfreezes have happened by `global_step` (an epoch e starts at step round(e x steps))."""
        return sum(global_step >= round(epoch * steps_per_epoch) for epoch, _ in self.unfreeze)

    def start(self, model: nn.Module) -> None:
        """Before training: freeze what never unfreezes; what unfreezes later stays trainable (for DDP) until
        `apply` at the first step."""
        set_frozen(model, self.frozen_after(len(self.unfreeze)), self.keep_batchnorm_stats)

    def apply(self, model: nn.Module, done: int) -> None:
        set_frozen(model, self.frozen_after(done), self.keep_batchnorm_stats)

    def describe(self, names: list[str], done: int = 0) -> str:
        frozen = self.frozen_after(done)
        parts = {component_of(n) for n in names}
        training = [c for c in (*COMPONENTS, "backbone") if c in parts and not all(
            frozen(n) for n in names if component_of(n) == c)]
        later = ", ".join(f"{component} at epoch {epoch:g}" for epoch, component in self.unfreeze[done:])
        text = f"training {', '.join(training) or 'nothing'}"
        text += f" ({sum(not frozen(n) for n in names)} of {len(names)} tensors)"
        text += f"; then {later}" if later else ""
        if any(frozen(n) for n in names):
            text += "; frozen BatchNorm in eval mode" if self.keep_batchnorm_stats else "; frozen BatchNorm adapts"
        return text


def plan_freezing(model: nn.Module, args: StrategyArguments) -> FreezePlan:
    names = [name for name, _ in model.named_parameters()]
    if args.tuning == "linear_probe":
        frozen = {n for n in names if not is_head(n)}
    elif args.frozen_stages >= 0:
        parts = COMPONENTS[: args.frozen_stages + 1]  # the stem, then stages 1..K
        for part in parts:
            select(names, part, "frozen_stages")
        frozen = {n for n in names if component_of(n) in parts}
    elif args.trainable:
        frozen = set(names) - set().union(*(select(names, s, "trainable") for s in args.trainable))
    else:
        frozen = set()
    if len(frozen) == len(names):
        raise ConfigError(f"`tuning: {args.tuning}` leaves no trainable parameters: the model's head is not named "
                          f"{' / '.join(HEAD_PREFIXES)}; use `tuning: full`, or name what trains in `trainable`.")
    thawable = [c for c in UNFREEZE_ORDER if any(component_of(n) == c for n in frozen)]
    if len(args.unfreeze_epochs) > len(thawable):
        raise ConfigError(f"`unfreeze_epochs` has {len(args.unfreeze_epochs)} epochs but only {len(thawable)} "
                          f"components start frozen ({', '.join(thawable) or 'none'}); give one epoch each.")
    unfreeze = tuple(zip(args.unfreeze_epochs, thawable))
    return FreezePlan(frozenset(frozen), unfreeze, keep_batchnorm_stats=args.frozen_batchnorm == "eval")


# Optimizer groups --------------------------------------------------------------------------------------------------


def param_groups(model: nn.Module, lr: float, weight_decay: float, head_lr: float | None = None,
                 layer_decay: float | None = None, groups: list[dict] = ()) -> list[dict]:
    """Every parameter in one group (frozen ones too: they get no gradient, so no update and no state), each
    group with `name`, `param_names`, `lr` and `weight_decay`; explicit groups first, then head, then backbone
    from stage 4 down; biases and norm weights in `<name>/no_decay` groups."""
    names = [name for name, _ in model.named_parameters()]
    members = [select(names, group["params"], "param_groups") for group in groups]
    buckets: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        explicit = next((i for i, chosen in enumerate(members) if name in chosen), None)
        component = component_of(name)
        if is_head(name):
            label, rate, rank = "head", head_lr if head_lr is not None else lr, 0
        elif layer_decay is None:
            label, rate, rank = "backbone", lr, 1
        else:
            label, rate, rank = component, lr * layer_decay ** DEPTH[component], DEPTH[component]
        decay = weight_decay
        if explicit is not None:
            group = groups[explicit]
            label, rank = group["params"], explicit - len(groups)
            rate = group["lr"] if group["lr"] is not None else rate
            decay = group["weight_decay"] if group["weight_decay"] is not None else decay
        no_decay = param.ndim <= 1
        key = (rank, label, no_decay)
        bucket = buckets.setdefault(key, {"name": label + ("/no_decay" if no_decay else ""), "params": [],
                                          "param_names": [], "lr": rate, "weight_decay": 0.0 if no_decay else decay})
        bucket["params"].append(param)
        bucket["param_names"].append(name)
    return [buckets[key] for key in sorted(buckets)]


# The run's strategy ------------------------------------------------------------------------------------------------


@dataclass
class Strategy:
    """Everything the trainer needs to fine-tune as the recipe says."""

    args: StrategyArguments
    plan: FreezePlan
    class_weights: list[float] | None = None
    sampler: BalancedSampler | None = None
    steps_per_epoch: int | None = None  # a stream's; for map-style data the Trainer counts them

    @classmethod
    def default(cls) -> Strategy:
        return cls(StrategyArguments(), FreezePlan(frozenset()))

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        return param_groups(model, lr, weight_decay, self.args.head_learning_rate, self.args.layer_decay,
                            self.args.param_groups)

    def training_loss(self, num_classes: int, label_smoothing: float) -> TrainingLoss:
        return TrainingLoss(num_classes, label_smoothing, self.class_weights, self.args.mixup_alpha,
                            self.args.cutmix_alpha)


def _class_balance(strategy: Strategy, data, seed: int) -> None:
    args = strategy.args
    if args.class_weights is None and not args.balanced_sampler:
        return
    if isinstance(args.class_weights, list):
        if len(args.class_weights) != len(data.labels):
            raise ConfigError(f"`class_weights` has {len(args.class_weights)} numbers for {len(data.labels)} classes "
                              f"({', '.join(data.labels[:10])}); give one per class, in that order, or `auto`.")
        strategy.class_weights = args.class_weights
        return
    if args.balanced_sampler and not isinstance(data.train, Dataset):
        raise ConfigError("`balanced_sampler` needs map-style data (a stream cannot be sampled by index); use "
                          "`class_weights: auto` with `streaming: true`.")
    source = Path(data.source) if data.source else None
    folder = source if source and all((source / name).is_dir() for name in data.labels) else None
    counts, where = label_counts(data, None if folder is None else str(folder), args.class_count_sample)
    logger.info("Class counts from %s: %s", where, dict(zip(data.labels, counts.tolist())))
    if args.balanced_sampler:
        strategy.sampler = BalancedSampler(read_labels(data.train, data.label_column), counts, seed)
        return
    strategy.class_weights = inverse_frequency(counts)
    logger.info("Class weights (inverse frequency): %s",
                {name: round(w, 4) for name, w in zip(data.labels, strategy.class_weights)})


def plan_strategy(model: nn.Module, args: StrategyArguments, training_args, data=None,
                  steps_per_epoch: int | None = None) -> Strategy:
    """Freeze what the recipe freezes, add head dropout, count classes for the loss or sampler; log the plan.
    (`settings.resolve_settings` has run first: the Trainer's arguments are final.)"""
    strategy = Strategy(args, plan_freezing(model, args), steps_per_epoch=steps_per_epoch)
    strategy.plan.start(model)
    if args.head_dropout:
        add_head_dropout(model, args.head_dropout)
    names = [name for name, _ in model.named_parameters()]
    if training_args.do_train:  # an evaluation-only run trains nothing: no plan to tell
        logger.info("Strategy: %s", strategy.plan.describe(names))
    if training_args.do_train and data is not None and data.train is not None:
        _class_balance(strategy, data, training_args.seed)
    return strategy
