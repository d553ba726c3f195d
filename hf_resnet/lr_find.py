"""The learning-rate range test (`hf-resnet lr-find`; Smith 2015, fastai's `lr_find`): train from the run's start
with the rate growing exponentially from `start_lr` to `end_lr` over `num_steps` optimizer steps, record the
loss, stop once the smoothed loss (beta 0.98, bias-corrected) passes `diverge` x its best, and suggest a rate.

- The run is the one `hf-resnet train` would start (`run.build_trainer`), driven through the Trainer's own
  `train()`: its optimizer groups, freezing, loss, mixed precision, gradient accumulation and clipping, and, under
  several processes, DDP with every process's loss averaged (so all take the same stop decision). Only the rate is
  ours: every group's rate is scaled by one factor, so the groups' ratios hold, and the rate reported is the
  one that `learning_rate` would be (`head_learning_rate` and `param_groups` rates scale with it).
- The freezing is the one due at `at_epoch` (0: the first step's) and stays so: nothing unfreezes mid-test.
- Suggestions, as fastai defines them on the smoothed curve without its first 10% and last 5 steps: `valley`
  (the default: a third of the way, plus a sixth, down the longest descending run), `slide` (the largest rate
  whose local slope still matches one 15 steps before it, within 0.005), `minimum` (the rate of the lowest loss,
  / 10) and `steep` (the steepest descent in log-rate).
- Afterwards everything is as it was: weights, buffers (BatchNorm's running statistics), requires_grad and
  train/eval flags, BatchNorm held in eval mode, the optimizer (its state, or none yet), the scheduler, the EMA,
  the gradient scaler, the Trainer's state and arguments, and the python, numpy and torch random states. Nothing
  is saved as a model or checkpoint.

It relies on (`tests/test_lr_find.py` fails when an upgrade changes one): `Trainer.train` asking
`self.create_scheduler(num_training_steps, optimizer)` for its schedule (set on the instance for the test only);
the Trainer logging each step's loss, averaged over processes, with `logging_steps: 1`; and `accelerator.prepare`
appending to the accelerator's private `_models` / `_optimizers` / `_schedulers` / `_dataloaders` lists, which are
put back as they were.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import random

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR
from transformers import DefaultFlowCallback, TrainerCallback
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from .errors import ConfigError, NonFiniteLossError
from .training.callbacks import EpochCallback
from .training.strategies import batchnorm_held, hold_batchnorm, release_batchnorm

logger = logging.getLogger(__name__)

SUGGESTIONS = ("valley", "slide", "minimum", "steep")


@dataclasses.dataclass
class RangeTest:
    """The test's record: each step's rate (as `learning_rate`) and loss, the smoothed loss, the suggestions."""

    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestions: dict[str, float]
    suggestion: str
    stopped: str  # "diverged", "non-finite loss" or "end of the range"

    @property
    def suggested(self) -> float:
        return self.suggestions[self.suggestion]

    def marker(self, name: str) -> tuple[float, float]:
        """Where a suggestion sits on the smoothed curve: (rate, loss there)."""
        rate = self.suggestions[name]
        return rate, float(np.interp(math.log10(rate), np.log10(self.rates), self.smoothed))

    def to_json(self) -> dict:
        return {"suggested_learning_rate": self.suggested, "suggestion": self.suggestion,
                "suggestions": self.suggestions, "stopped": self.stopped, "steps": len(self.rates),
                "curve": [{"learning_rate": r, "loss": loss, "smoothed_loss": s}
                          for r, loss, s in zip(self.rates, self.losses, self.smoothed)]}


# fastai's suggestions (fastai/callback/schedule.py), on the trimmed smoothed curve ------------------------------


def valley(rates: np.ndarray, losses: np.ndarray) -> float:
    """The longest run of decreasing losses (longest decreasing subsequence); a point 1/3 + 1/6 into it."""
    n, start, end = len(losses), 0, 0
    lengths = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
            if lengths[end] < lengths[i]:
                end, start = i, i - lengths[i]
    sections = (end - start) / 3
    return float(rates[start + int(sections) + int(sections / 2)])


def slide(rates: np.ndarray, losses: np.ndarray, lr_diff: int = 15, thresh: float = 0.005) -> float:
    """From the right, slide a window of `lr_diff` steps left until the slopes at its ends agree within `thresh`."""
    gradient = np.gradient(losses)
    right, left = -1, -1 - lr_diff
    rate = rates[max(left, -len(rates))]
    while left >= -len(losses) and abs(gradient[right] - gradient[left]) > thresh:
        rate = rates[left]
        right, left = right - 1, left - 1
    return float(rate)


def minimum(rates: np.ndarray, losses: np.ndarray) -> float:
    return float(rates[int(np.argmin(losses))] / 10)


def steep(rates: np.ndarray, losses: np.ndarray) -> float:
    slopes = (losses[1:] - losses[:-1]) / (np.log(rates[1:]) - np.log(rates[:-1]))
    return float(rates[int(np.argmin(slopes))])


def suggest(rates: list[float], smoothed: list[float]) -> dict[str, float]:
    """Each suggestion on the curve without its first 10% and last 5 steps (fastai's trim; the whole curve when
    that leaves under 10 points), cut at the first non-finite loss."""
    rates_np, losses_np = np.asarray(rates, dtype=float), np.asarray(smoothed, dtype=float)
    finite = np.isfinite(losses_np)
    cut = len(losses_np) if finite.all() else int(np.argmin(finite))
    trimmed = slice(len(rates) // 10, cut - 5)
    if len(rates_np[trimmed]) >= 10:
        rates_np, losses_np = rates_np[trimmed], losses_np[trimmed]
    else:
        rates_np, losses_np = rates_np[:cut], losses_np[:cut]
    if len(rates_np) < 3:
        raise ConfigError(f"The range test stopped after {len(rates)} steps, too few to suggest a rate; lower "
                          "--start_lr, or give more --num_steps.")
    functions = {"valley": valley, "slide": slide, "minimum": minimum, "steep": steep}
    return {name: functions[name](rates_np, losses_np) for name in SUGGESTIONS}


# The test: the Trainer's train() with our rate and a recorder -----------------------------------------------------


class _Recorder(TrainerCallback):
    """Each optimizer step's loss (averaged over processes and accumulated batches, as the Trainer logs it) and its
    rate; stops the loop when the smoothed loss passes `diverge` x its best."""

    def __init__(self, rate_at, beta: float, diverge: float):
        self.rate_at, self.beta, self.diverge = rate_at, beta, diverge
        self.rates, self.losses, self.smoothed = [], [], []
        self._average, self._best, self.diverged = 0.0, math.inf, False

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        self._average = self.beta * self._average + (1 - self.beta) * loss
        smooth = self._average / (1 - self.beta ** (len(self.losses) + 1))
        self.rates.append(self.rate_at(state.global_step - 1))  # the rate of the step just taken
        self.losses.append(loss)
        self.smoothed.append(smooth)
        self._best = min(self._best, smooth)
        if not math.isfinite(smooth) or smooth > self.diverge * self._best:
            self.diverged = True
            control.should_training_stop = True


def _held_fields(args) -> dict:
    return {"max_steps": args.max_steps, "logging_strategy": args.logging_strategy,
            "logging_steps": args.logging_steps, "logging_first_step": args.logging_first_step,
            "eval_strategy": args.eval_strategy, "save_strategy": args.save_strategy,
            "load_best_model_at_end": args.load_best_model_at_end, "eval_on_start": args.eval_on_start,
            "on_nonfinite_loss": args.on_nonfinite_loss}


def _snapshot(trainer) -> dict:
    """Everything the test changes, copied (tensors cloned)."""
    model = trainer.model
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    optimizer = trainer.optimizer
    scaler = getattr(trainer.accelerator, "scaler", None)
    accelerator = trainer.accelerator
    return {
        "weights": {name: tensor.detach().clone() for name, tensor in model.state_dict().items()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "grads": {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()},
        "training": {name: m.training for name, m in model.named_modules()},
        "held": {name: batchnorm_held(m) for name, m in model.named_modules()},
        "optimizer": optimizer, "optimizer_state": copy.deepcopy(optimizer.state_dict()) if optimizer else None,
        "scheduler": trainer.lr_scheduler,
        "scheduler_state": copy.deepcopy(trainer.lr_scheduler.state_dict()) if trainer.lr_scheduler else None,
        "ema": copy.deepcopy(vars(trainer.ema)) if trainer.ema is not None else None,
        "scaler": copy.deepcopy(scaler.state_dict()) if scaler is not None else None,
        "attributes": {key: getattr(trainer, key, None) for key in (
            "state", "control", "model_wrapped", "example_log", "_created_lr_scheduler", "is_in_train",
            "steps_per_epoch", "_train_batch_size")},
        "callbacks": list(trainer.callback_handler.callbacks),
        "epoch_targets": {id(c): list(c.targets) for c in trainer.callback_handler.callbacks
                          if isinstance(c, EpochCallback)},
        "prepared": {key: list(getattr(accelerator, key)) for key in ("_models", "_optimizers", "_schedulers",
                                                                        "_dataloaders")},
        "args": _held_fields(trainer.args),
        "rng": (random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda),
    }


def _restore(trainer, saved: dict) -> None:
    model = trainer.model
    with torch.no_grad():
        model.load_state_dict(saved["weights"])
    for name, param in model.named_parameters():
        param.requires_grad_(saved["requires_grad"][name])
        param.grad = saved["grads"][name]
    for name, module in model.named_modules():
        module.training = saved["training"][name]
        if saved["held"][name] and not batchnorm_held(module):
            hold_batchnorm(module)
            module.training = saved["training"][name]
        elif not saved["held"][name] and batchnorm_held(module):
            release_batchnorm(module)
    if saved["optimizer"] is not None:
        saved["optimizer"].load_state_dict(saved["optimizer_state"])
    if saved["scheduler"] is not None:
        saved["scheduler"].load_state_dict(saved["scheduler_state"])
    trainer.optimizer, trainer.lr_scheduler = saved["optimizer"], saved["scheduler"]
    if saved["ema"] is not None:
        vars(trainer.ema).update(saved["ema"])
    if saved["scaler"] is not None:
        trainer.accelerator.scaler.load_state_dict(saved["scaler"])
    for key, value in saved["attributes"].items():
        setattr(trainer, key, value)
    trainer.callback_handler.callbacks = saved["callbacks"]
    for callback in saved["callbacks"]:
        if id(callback) in saved["epoch_targets"]:
            callback.targets = saved["epoch_targets"][id(callback)]
    for key, value in saved["prepared"].items():
        setattr(trainer.accelerator, key, value)
    for key, value in saved["args"].items():
        setattr(trainer.args, key, value)
    python, numpy_state, torch_state, cuda = saved["rng"]
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def find_lr(trainer, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100, beta: float = 0.98,
            diverge: float = 4.0, at_epoch: float = 0.0, suggestion: str = "valley") -> RangeTest:
    """Run the range test on `trainer` (an `ImageClassificationTrainer` with a train split) and put everything
    back as it was (see the module docstring). Returns the curve and the suggestions."""
    if not 0 < start_lr < end_lr or num_steps < 2:
        raise ConfigError(f"The range test needs 0 < start_lr < end_lr and num_steps >= 2; got {start_lr}, "
                          f"{end_lr}, {num_steps}.")
    if suggestion not in SUGGESTIONS:
        raise ConfigError(f"--suggestion must be one of {', '.join(SUGGESTIONS)}, got {suggestion!r}.")
    saved = _snapshot(trainer)
    reference = trainer.args.learning_rate

    def rate_at(step: int) -> float:
        return start_lr * (end_lr / start_lr) ** (min(step, num_steps - 1) / (num_steps - 1))

    recorder = _Recorder(rate_at, beta, diverge)
    stopped = "end of the range"
    try:
        def exponential(num_training_steps: int, optimizer=None):  # the Trainer asks for its schedule here
            optimizer = optimizer or trainer.optimizer
            for group in optimizer.param_groups:  # the groups' rates now are the ones scaled together
                group["initial_lr"] = group["lr"]
            trainer.lr_scheduler = LambdaLR(optimizer, lambda step: rate_at(step) / reference)
            return trainer.lr_scheduler

        trainer.create_scheduler = exponential  # on the instance, for this train() only (removed below)
        plan = trainer.strategy.plan
        plan.apply(trainer.model, sum(at_epoch >= epoch for epoch, _ in plan.unfreeze))
        trainer.callback_handler.callbacks = [c for c in saved["callbacks"] if isinstance(
            c, (DefaultFlowCallback, EpochCallback))] + [recorder]
        trainer.example_log = None
        args = trainer.args
        args.max_steps, args.logging_strategy, args.logging_steps = num_steps, IntervalStrategy.STEPS, 1
        args.logging_first_step = args.load_best_model_at_end = args.eval_on_start = False
        args.eval_strategy, args.save_strategy, args.on_nonfinite_loss = IntervalStrategy.NO, SaveStrategy.NO, "stop"
        try:
            trainer.train()
        except NonFiniteLossError:  # the rate is past any use; every process raises it at the same step
            recorder.diverged, stopped = True, "non-finite loss"
        stopped = "diverged" if recorder.diverged and stopped == "end of the range" else stopped
    finally:
        vars(trainer).pop("create_scheduler", None)
        _restore(trainer, saved)
    result = RangeTest(recorder.rates, recorder.losses, recorder.smoothed, suggest(recorder.rates, recorder.smoothed),
                       suggestion, stopped)
    logger.info("Range test: %d steps (%s); suggested learning_rate %.3g (%s)", len(result.rates), stopped,
                result.suggested, suggestion)
    return result
