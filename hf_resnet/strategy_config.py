"""The strategy's argument dataclass: what is frozen and when it unfreezes, each part's learning rate, the
optimizer and schedule beyond the Trainer's, the loss, class balance, head dropout, EMA and early stopping (applied
by `training/`: `strategies.py`, `optim.py`, `losses.py`, `balance.py`, `ema.py`).

Every field carries help text; recipes set them, command-line flags override them. `__post_init__` checks each on
its own, `check_with(training_args)` against the Trainer's arguments, before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .constants import ONE_CYCLE, TTA_MODES, value_of
from .errors import ConfigError

TUNINGS = ("full", "linear_probe")
FROZEN_BATCHNORM = ("eval", "train")
CONSTANT_SCHEDULES = ("constant", "constant_with_warmup")
GROUP_OPTIONS = ("lr", "weight_decay")
SELECTOR_HELP = (
    "components (`stem`, `stage1`..`stage4`, `head`, `backbone`), torchvision's names (`conv1`, `bn1`, "
    "`layer1`..`layer4`, `fc`), or a regular expression searched in parameter names"
)


def _floats(values, name: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"`{name}` must be a list of numbers, got {values!r}.") from err


def parse_group(entry, index: int) -> dict:
    """One `param_groups` entry -> {"params": selector, "lr": float | None, "weight_decay": float | None}.

    YAML: `{params: head, lr: 0.01}`; command line: `"head: lr=0.01, weight_decay=0"`."""
    where = f"`param_groups` entry {index + 1} ({entry!r})"
    if isinstance(entry, str):
        selector, sep, options = entry.rpartition(":")
        if not sep or not selector.strip():
            raise ConfigError(f"{where} must read `SELECTOR: lr=0.01, weight_decay=0` (SELECTOR: {SELECTOR_HELP}).")
        values = {"params": selector.strip()}
        for item in filter(None, (part.strip() for part in options.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise ConfigError(f"{where}: {item!r} is not `key=value` (keys: {', '.join(GROUP_OPTIONS)}).")
            values[key.strip()] = value.strip()
    elif isinstance(entry, dict):
        values = dict(entry)
    else:
        raise ConfigError(f"{where} must be a mapping (`{{params: head, lr: 0.01}}`) or a string.")
    unknown = sorted(set(values) - {"params", *GROUP_OPTIONS})
    if unknown or not isinstance(values.get("params"), str):
        raise ConfigError(f"{where} needs `params` (a selector) and only {', '.join(GROUP_OPTIONS)}; got {unknown}.")
    group = {"params": values["params"]}
    for key in GROUP_OPTIONS:
        try:
            group[key] = None if values.get(key) is None else float(values[key])
        except ValueError as err:
            raise ConfigError(f"{where}: `{key}` must be a number, got {values[key]!r}.") from err
    if group["lr"] is None and group["weight_decay"] is None:
        raise ConfigError(f"{where} sets neither `lr` nor `weight_decay`; give it one, or remove it.")
    return group


@dataclass
class StrategyArguments:
    """Parameters that control how the model is fine-tuned: what trains when, each part's learning rate, the
    optimizer's momentum and schedule, the loss, and what is kept of the weights (applied by `strategies.py` and
    the trainer). A parameter selector is a component (`stem`, `stage1`..`stage4`, `head`, `backbone`), a
    torchvision name (`conv1`, `bn1`, `layer1`..`layer4`, `fc`) or a regular expression searched in parameter names.
    """

    # What trains ------------------------------------------------------------------------------------------------
    tuning: str = field(
        default="full",
        metadata={
            "help": "`full`: train every weight. `linear_probe`: freeze the backbone (BatchNorm kept in eval mode) "
            "and train only the classifier head."
        },
    )
    frozen_stages: int = field(
        default=-1,
        metadata={"help": "Freeze the stem and stages 1..K (mmdetection's): -1 nothing, 0 the stem, 4 all."},
    )
    trainable: list[str] = field(
        default_factory=list,
        metadata={"help": "Train only what these selectors name (e.g. `[conv1, fc]`); freeze the rest."},
    )
    unfreeze_epochs: list[float] = field(
        default_factory=list,
        metadata={"help": "Gradual unfreezing: the epoch at which each frozen component starts to train, deepest "
                          "first (stage4, stage3, ..., stem); `[2, 4]`: stage 4 at epoch 2, stage 3 at 4."},
    )
    frozen_batchnorm: str = field(
        default="eval",
        metadata={"help": "Frozen BatchNorm: `eval` keeps its statistics; `train` lets them adapt (model.train())."},
    )
    # Learning rates ---------------------------------------------------------------------------------------------
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the classifier head; defaults to `learning_rate` (the backbone's)."},
    )
    layer_decay: float | None = field(
        default=None,
        metadata={"help": "Layer-wise rate decay d: stage 4 at learning_rate x d, stage 3 x d^2, ... stem x d^5."},
    )
    param_groups: list[str] = field(
        default_factory=list,
        metadata={"help": "Optimizer groups by selector, first match wins, with their own `lr` and/or "
                          "`weight_decay`: `[{params: conv1, lr: 0.001}]`, or `'conv1: lr=0.001'`."},
    )
    # Optimizer and schedule -------------------------------------------------------------------------------------
    sgd_momentum: float = field(
        default=0.9,
        metadata={"help": "Momentum of `optim: sgd` (torchvision's reference recipe and the report use 0.9)."},
    )
    sgd_nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum for `optim: sgd`."})
    lr_milestones: list[float] = field(
        default_factory=list,
        metadata={"help": "Multiply the rate by `lr_gamma` at each of these epochs, e.g. [5] (needs "
                          "`lr_scheduler_type: constant` or `constant_with_warmup`)."},
    )
    lr_step_size: float | None = field(
        default=None,
        metadata={"help": "Multiply the rate by `lr_gamma` every this many epochs (torch's StepLR, in epochs)."},
    )
    lr_gamma: float = field(default=0.1, metadata={"help": "Factor applied at each step of the decay."})
    one_cycle_pct_start: float = field(
        default=0.25,
        metadata={"help": "`lr_scheduler_type: one_cycle`: share of the steps spent rising to each group's rate "
                          "(fastai's fit_one_cycle 0.25; its fine_tune 0.3)."},
    )
    one_cycle_div: float = field(default=25.0, metadata={"help": "one_cycle: the first rate is each group's / this."})
    one_cycle_final_div: float = field(
        default=1e5, metadata={"help": "one_cycle: the last rate is each group's / this (fastai's div_final)."}
    )
    one_cycle_momentum: list[float] | None = field(
        default_factory=lambda: [0.95, 0.85],
        metadata={"help": "one_cycle: SGD's momentum or Adam's beta1 goes from the first to the second at the peak "
                          "rate and back; null keeps them fixed."},
    )
    # Loss and sampling ------------------------------------------------------------------------------------------
    class_weights: list[str] | None = field(
        default=None,
        metadata={"help": "Loss weight per class: `auto` (N / (classes x count), from the train labels) or one "
                          "number per class."},
    )
    class_count_sample: int = field(
        default=10_000,
        metadata={"help": "A stream of unknown per-class counts is counted on this many first examples."},
    )
    balanced_sampler: bool = field(
        default=False,
        metadata={"help": "Draw each class equally often (with replacement; map-style data)."},
    )
    mixup_alpha: float = field(
        default=0.0, metadata={"help": "Mixup: blend pairs of images and their labels, Beta(alpha, alpha). 0: off."}
    )
    cutmix_alpha: float = field(
        default=0.0,
        metadata={"help": "CutMix: paste a box of one image into another, labels by area. 0: off. With mixup: "
                          "one of them per batch."},
    )
    # Head and weights -------------------------------------------------------------------------------------------
    head_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the pooled features before the classifier (training only)."}
    )
    ema_decay: float | None = field(
        default=None,
        metadata={"help": "EMA of the weights (e.g. 0.999), evaluated and saved as the model. Unset: off."},
    )
    ema_warmup: bool = field(
        default=True,
        metadata={"help": "Decay min(ema_decay, (1 + n) / (10 + n)) at step n: less pull to the start."},
    )
    # Evaluation -------------------------------------------------------------------------------------------------
    temperature_scaling: bool = field(
        default=False,
        metadata={"help": "After training, fit one temperature T on the validation split (lowest NLL) and divide "
                          "the classifier's last layer by it: calibrated probabilities, the same top-1."},
    )
    tta: str = field(
        default="none",
        metadata={"help": "Test-time augmentation in the final evaluation, reported beside the plain figures "
                          "(eval_tta_*): `flip`, `five_crop`, `augment` (`tta_passes` training augmentations, "
                          "fastai's beta 0.25 blend) or `none`."},
    )
    tta_passes: int = field(default=4, metadata={"help": "Augmented passes of `tta: augment` (fastai's n: 4)."})
    # Stopping ---------------------------------------------------------------------------------------------------
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without a better `metric_for_best_model`."},
    )
    early_stopping_threshold: float = field(
        default=0.0, metadata={"help": "Smallest change of the metric that counts as an improvement."}
    )

    def __post_init__(self):
        if self.tuning not in TUNINGS:
            raise ConfigError(f"`tuning` must be one of {', '.join(map(repr, TUNINGS))}, got {self.tuning!r}.")
        if not -1 <= self.frozen_stages <= 4:
            raise ConfigError(f"`frozen_stages` must be -1 (none) to 4 (whole backbone), got {self.frozen_stages}.")
        if self.tuning == "linear_probe" and (self.frozen_stages != -1 or self.trainable):
            raise ConfigError("`tuning: linear_probe` already freezes the whole backbone; remove `frozen_stages` / "
                              "`trainable`, or use `tuning: full` with them.")
        if self.frozen_stages != -1 and self.trainable:
            raise ConfigError("Set `frozen_stages` or `trainable`, not both: `trainable` lists all that trains.")
        self.unfreeze_epochs = _floats(self.unfreeze_epochs, "unfreeze_epochs")
        if any(e <= 0 for e in self.unfreeze_epochs) or self.unfreeze_epochs != sorted(self.unfreeze_epochs):
            raise ConfigError(f"`unfreeze_epochs` must be positive and in order (deepest component first), got "
                              f"{self.unfreeze_epochs}.")
        if self.frozen_batchnorm not in FROZEN_BATCHNORM:
            raise ConfigError(f"`frozen_batchnorm` must be 'eval' or 'train', got {self.frozen_batchnorm!r}.")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"`layer_decay` must be in (0, 1], e.g. 0.7, got {self.layer_decay}.")
        self.param_groups = [parse_group(entry, i) for i, entry in enumerate(self.param_groups)]
        if not 0 <= self.sgd_momentum < 1:
            raise ConfigError(f"`sgd_momentum` must be in [0, 1), got {self.sgd_momentum}.")
        if self.sgd_nesterov and self.sgd_momentum == 0:
            raise ConfigError("`sgd_nesterov: true` needs `sgd_momentum` > 0 (e.g. 0.9).")
        self.lr_milestones = _floats(self.lr_milestones, "lr_milestones")
        if any(e <= 0 for e in self.lr_milestones) or self.lr_milestones != sorted(self.lr_milestones):
            raise ConfigError(f"`lr_milestones` must be positive epochs in order, got {self.lr_milestones}.")
        if self.lr_milestones and self.lr_step_size is not None:
            raise ConfigError("Set `lr_milestones` or `lr_step_size`, not both.")
        if self.lr_step_size is not None and self.lr_step_size <= 0:
            raise ConfigError(f"`lr_step_size` is in epochs and must be positive, got {self.lr_step_size}.")
        if not 0 < self.lr_gamma <= 1:
            raise ConfigError(f"`lr_gamma` must be in (0, 1], e.g. 0.1, got {self.lr_gamma}.")
        self._check_one_cycle()
        self.class_weights = self._parse_class_weights(self.class_weights)
        if self.class_weights is not None and self.balanced_sampler:
            raise ConfigError("`class_weights` and `balanced_sampler` both correct the class imbalance and would "
                              "correct it twice; keep one.")
        if self.class_count_sample < 1:
            raise ConfigError(f"`class_count_sample` must be at least 1, got {self.class_count_sample}.")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0 (0 turns it off), got {getattr(self, name)}.")
        if not 0 <= self.head_dropout < 1:
            raise ConfigError(f"`head_dropout` is a probability below 1, got {self.head_dropout}.")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError(f"`ema_decay` must be in (0, 1), e.g. 0.999, got {self.ema_decay}.")
        if self.tta not in TTA_MODES or self.tta_passes < 1:
            raise ConfigError(f"`tta` must be one of {', '.join(TTA_MODES)} and `tta_passes` at least 1, got "
                              f"{self.tta!r} and {self.tta_passes}.")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"`early_stopping_patience` counts evaluations, at least 1; got "
                              f"{self.early_stopping_patience}.")

    @staticmethod
    def _parse_class_weights(value) -> str | list[float] | None:
        if value is None or value == []:
            return None
        values = [value] if isinstance(value, (str, int, float)) else list(value)
        if len(values) == 1 and str(values[0]).strip().lower() == "auto":
            return "auto"
        weights = _floats(values, "class_weights")
        if len(weights) < 2 or any(w < 0 for w in weights) or not any(weights):
            raise ConfigError(f"`class_weights` must be `auto` or one non-negative number per class, got {values}.")
        return weights

    def _check_one_cycle(self) -> None:
        if not 0 < self.one_cycle_pct_start < 1:
            raise ConfigError(f"`one_cycle_pct_start` is a share of the steps, in (0, 1); got "
                              f"{self.one_cycle_pct_start}.")
        if self.one_cycle_div < 1 or self.one_cycle_final_div < 1:
            raise ConfigError("`one_cycle_div` and `one_cycle_final_div` divide the peak rate: each must be >= 1.")
        if self.one_cycle_momentum is not None:
            self.one_cycle_momentum = _floats(self.one_cycle_momentum, "one_cycle_momentum")
            if len(self.one_cycle_momentum) != 2 or not all(0 <= m < 1 for m in self.one_cycle_momentum):
                raise ConfigError(f"`one_cycle_momentum` is [high, low] in [0, 1), e.g. [0.95, 0.85] (null: fixed), "
                                  f"got {self.one_cycle_momentum}.")

    @property
    def step_decay(self) -> bool:
        return bool(self.lr_milestones) or self.lr_step_size is not None

    def check_with(self, training_args) -> None:
        """Checks that need the Trainer's arguments too; `run.main` calls it before reading any data."""
        optim = str(value_of(training_args.optim))
        optim_args = str(training_args.optim_args or "")
        if optim == "sgd" and any(key in optim_args for key in ("momentum", "nesterov")):
            raise ConfigError("`optim_args` sets SGD's momentum/nesterov; use `sgd_momentum` / `sgd_nesterov` "
                              "instead (one place for each setting).")
        if self.sgd_nesterov and optim != "sgd":
            raise ConfigError(f"`sgd_nesterov: true` applies to `optim: sgd`, not {optim!r}.")
        schedule = str(value_of(training_args.lr_scheduler_type))
        if self.step_decay and schedule not in CONSTANT_SCHEDULES:
            raise ConfigError(f"`lr_milestones` / `lr_step_size` set a step schedule, but `lr_scheduler_type` is "
                              f"{schedule!r}; set `lr_scheduler_type: constant` (or `constant_with_warmup` for a "
                              "warm-up before it).")
        if schedule == ONE_CYCLE and (training_args.warmup_steps or getattr(training_args, "warmup_ratio", 0)):
            raise ConfigError("`lr_scheduler_type: one_cycle` warms up by itself over `one_cycle_pct_start` of the "
                              "steps; set `warmup_steps: 0` (or change `one_cycle_pct_start`).")
        if not 0 <= training_args.label_smoothing_factor < 1:
            raise ConfigError(f"`label_smoothing_factor` must be in [0, 1), got "
                              f"{training_args.label_smoothing_factor}.")
        if self.temperature_scaling and not (training_args.do_train and training_args.do_eval):
            raise ConfigError("`temperature_scaling: true` fits T on the validation split after training: it needs "
                              "`do_train` and `do_eval` true (and a validation split).")
        if self.early_stopping_patience is not None:
            if not training_args.metric_for_best_model or not training_args.load_best_model_at_end:
                raise ConfigError("`early_stopping_patience` needs `metric_for_best_model` (e.g. accuracy) and "
                                  "`load_best_model_at_end: true`, so the run ends with its best weights.")
