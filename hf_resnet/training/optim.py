"""The optimizer's settings beyond what `TrainingArguments` gives, and the step schedule transformers lacks.

- SGD: `optim: sgd` alone gives torch's momentum 0; here it gets `sgd_momentum` (0.9 by default, as torchvision's
  reference recipe and the report use) and `sgd_nesterov`.
- Step / multi-step decay: the rate is multiplied by `gamma` at each milestone (in epochs, turned into optimizer
  steps), after an optional linear warm-up. It is a `LambdaLR` of the global step, like every transformers
  schedule: its position is saved in `scheduler.pt` and a resumed run continues it.
- One-cycle (`lr_scheduler_type: one_cycle`): torch's `OneCycleLR` with each group's own rate as its peak, so the
  groups' ratios hold all along; from peak / `div` up (cosine, over `pct_start` of the steps) and down to
  peak / `final_div` (fastai's definition; torch's `final_div_factor` is relative to the first rate, so it gets
  final_div / div), SGD's momentum or Adam's beta1 cycling the other way. Its position is in `scheduler.pt`, the
  groups' rates and momenta in `optimizer.pt`: a resumed run continues it exactly.
- The optimizer's groups are logged at the start: tensors, parameters, rate and weight decay of each.
"""

from __future__ import annotations

import functools
import math

import torch
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR


def optimizer_kwargs(optimizer_cls, kwargs: dict, momentum: float, nesterov: bool) -> dict:
    """The Trainer's kwargs for `optimizer_cls`, with SGD's momentum and nesterov set."""
    if optimizer_cls is torch.optim.SGD:
        return {**kwargs, "momentum": momentum, "nesterov": nesterov}
    return kwargs


def milestone_steps(milestones: list[float], step_size: float | None, steps_per_epoch: int,
                    total_steps: int) -> list[int]:
    """Milestones in epochs -> optimizer steps (rounded); `step_size` epochs -> every multiple of it before the end."""
    if step_size is not None:
        count = math.ceil(total_steps / (step_size * steps_per_epoch)) - 1  # the multiples before the last step
        milestones = [step_size * k for k in range(1, count + 1)]
    return [round(epoch * steps_per_epoch) for epoch in milestones]


def step_decay_factor(step: int, warmup_steps: int, milestones: tuple[int, ...], gamma: float) -> float:
    """The rate's factor for the optimizer step that follows `step` steps done: warm-up, then gamma per milestone
    passed (so at milestone m = 5 epochs, the first step of epoch 6 is the first at the lower rate)."""
    warmup = step / warmup_steps if step < warmup_steps else 1.0
    return warmup * gamma ** sum(step >= m for m in milestones)


def step_schedule(optimizer, warmup_steps: int, milestones: list[int], gamma: float) -> LambdaLR:
    factor = functools.partial(step_decay_factor, warmup_steps=warmup_steps, milestones=tuple(milestones),
                               gamma=gamma)
    return LambdaLR(optimizer, factor)


def one_cycle(optimizer, total_steps: int, pct_start: float, div: float, final_div: float,
              momentum: list[float] | None) -> OneCycleLR:
    """torch's one-cycle over `total_steps` optimizer steps, each group peaking at its current rate. `momentum`:
    [high, low] for SGD's momentum or Adam's beta1 (None: left as they are; SGD without momentum keeps none, and
    an optimizer with neither, such as Adafactor, has nothing to cycle)."""
    defaults = optimizer.defaults
    cycle = momentum is not None and ("betas" in defaults or bool(defaults.get("momentum")))
    high, low = momentum if cycle else (0.95, 0.85)
    return OneCycleLR(optimizer, max_lr=[group["lr"] for group in optimizer.param_groups], total_steps=total_steps,
                      pct_start=pct_start, div_factor=div, final_div_factor=final_div / div, cycle_momentum=cycle,
                      max_momentum=high, base_momentum=low)


def momentum_of(group: dict) -> float | None:
    """SGD's momentum or Adam's beta1 of an optimizer group (None for an optimizer with neither)."""
    return group["betas"][0] if "betas" in group else group.get("momentum")


def describe_groups(groups: list[dict], frozen=None) -> str:
    """A table of the optimizer's groups, one line each; `frozen(name)` says which parameters do not train now
    (default: those with requires_grad=False)."""
    lines = [f"{'group':<28} {'tensors':>7} {'parameters':>12} {'trainable':>12} {'lr':>10} {'weight_decay':>12}"]
    for group in groups:
        params, names = group["params"], group.get("param_names") or [""] * len(group["params"])
        trainable = sum(p.numel() for p, n in zip(params, names) if (not frozen(n) if frozen else p.requires_grad))
        lines.append(
            f"{group.get('name', '?'):<28} {len(params):>7} {sum(p.numel() for p in params):>12,} {trainable:>12,} "
            f"{group['lr']:>10.3g} {group['weight_decay']:>12.3g}"
        )
    return "\n".join(lines)
