"""The run's effective settings, decided in one place and logged once.

The argument dataclasses hold what the user asked for (`configs.py`, `strategy_config.py`, their defaults and
single-field checks). Two steps here turn that into what the run does, and nothing changes the Trainer's arguments
after them:

- `check_arguments(...)`: every check across fields of different dataclasses, run by `parse_args` and again at
  the start of `run.main` (for callers that build the dataclasses in code), before any data or weights load;
- `resolve_settings(...)`: every setting derived from the arguments, the machine and the data's known sizes (the
  DataLoader workers, a stream's steps and step-wise eval/save, DDP's unused-parameter search for gradual
  unfreezing, channels-last, cuDNN's benchmark mode), applied to `training_args` once and logged as
  "Effective settings". It runs after the data is opened (a stream's size is known then, no image has been read)
  and before any weights are built.

The one scoped exception is the Trainer's `logging_nan_inf_filter`, which `ImageClassificationTrainer.train`
turns off while it trains and restores (see its docstring, 13).
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass

import torch
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from .configs import DataArguments, FinetuneTrainingArguments, ModelArguments, available_cores, cores_per_process
from .constants import value_of
from .errors import ConfigError
from .strategy_config import StrategyArguments

logger = logging.getLogger(__name__)

EPOCH_WISE = ("eval", "save", "logging")


@dataclass(frozen=True)
class RunSettings:
    """What `resolve_settings` decided beyond the arguments (the rest is in `training_args`, final by then)."""

    channels_last: bool  # the model's weights and each batch in NHWC
    cudnn_benchmark: bool | None  # torch.backends.cudnn.benchmark as set; None: left as it was (no GPU)
    steps_per_epoch: int | None  # a streamed train split's optimizer steps per epoch, when its size is known
    changes: tuple[str, ...] = ()  # each field changed from what the arguments said, and why


def check_arguments(model_args: ModelArguments, data_args: DataArguments, strategy_args: StrategyArguments,
                    training_args: FinetuneTrainingArguments) -> None:
    """Checks across the dataclasses (each one's own fields are checked in its `__post_init__`)."""
    if model_args.cudnn_benchmark and training_args.full_determinism:
        raise ConfigError("`cudnn_benchmark: true` picks the fastest convolution algorithms, which `full_determinism` "
                          "rules out for the same results every run; keep one.")
    strategy_args.check_with(training_args)
    if training_args.do_train and training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise ConfigError(f"`num_train_epochs` is {training_args.num_train_epochs:g} and `max_steps` unset: training "
                          "would take no step and save a random model. Set `num_train_epochs` (e.g. 3) or "
                          "`max_steps`, or `do_train: false` to only evaluate.")
    check_trackers(training_args.report_to)


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow",
                    "comet_ml": "comet_ml", "clearml": "clearml", "neptune": "neptune", "dvclive": "dvclive"}


def check_trackers(report_to) -> None:
    """A tracker named in `report_to` whose package is missing: one line naming the install, not the Trainer's
    traceback once the data and model have loaded."""
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    wanted = [name for name in (report_to or []) if name not in ("none", "all")]
    missing = [name for name in wanted if name not in get_available_reporting_integrations()]
    if missing:
        packages = " ".join(TRACKER_PACKAGES.get(name, name) for name in missing)
        extra = ' pip install "hf-resnet[track]" (tensorboard and trackio), or' if set(missing) <= {
            "tensorboard", "trackio"} else ""
        raise ConfigError(f"`report_to` {', '.join(missing)}: not installed here. Install it:{extra} pip install "
                          f"{packages}; or `--report_to none`.")


# Derived settings --------------------------------------------------------------------------------------------------


def cap_workers(training_args) -> str | None:
    """At most the CPU cores this process may use (shared among the processes on this machine): more workers only
    slow a run down (torch warns once per loader). Returns what was changed."""
    most = cores_per_process()
    asked = training_args.dataloader_num_workers
    if asked <= most:
        return None
    training_args.dataloader_num_workers = most
    return (f"dataloader_num_workers {asked} -> {most}: this machine gives {available_cores()} CPU core(s) to "
            f"{os.environ.get('LOCAL_WORLD_SIZE', '1')} process(es)")


def streaming_steps_per_epoch(num_examples: int | None, args) -> int | None:
    """Optimizer steps in one pass over a stream of known size (None when unknown and `max_steps` is set)."""
    if num_examples is None:
        if args.max_steps > 0:
            return None
        raise ConfigError(
            "The streamed training split does not say how many examples it holds, so `num_train_epochs` cannot be "
            "turned into steps. Pass `max_steps` (optimizer steps), e.g. --max_steps 10000."
        )
    batches = math.ceil(num_examples / (args.per_device_train_batch_size * args.world_size))
    return max(1, math.ceil(batches / args.gradient_accumulation_steps))


def use_steps_for_epochs(args, steps_per_epoch: int | None) -> list[str]:
    """A stream has no length for the Trainer: set `max_steps`, and turn epoch-wise eval/save/logging into every
    `steps_per_epoch` steps, which also keeps processes in step when their shards differ in size. Returns the
    changes."""
    if steps_per_epoch is None:
        epoch_wise = [k for k in ("eval", "save") if value_of(getattr(args, f"{k}_strategy")) == "epoch"]
        if epoch_wise and args.world_size > 1:  # processes would reach "end of epoch" at different steps and hang
            raise ConfigError(
                f"A stream of unknown size has no common epoch end across {args.world_size} processes; set "
                + " and ".join(f"`{k}_strategy: steps` with `{k}_steps`" for k in epoch_wise) + "."
            )
        return []
    changes = []
    if args.max_steps <= 0:
        args.max_steps = steps_per_epoch * math.ceil(args.num_train_epochs)
        changes.append(f"max_steps {args.max_steps}: {math.ceil(args.num_train_epochs)} epoch(s) of the stream, "
                       f"{steps_per_epoch} optimizer steps each")
    for kind in EPOCH_WISE:
        if value_of(getattr(args, f"{kind}_strategy")) == "epoch":
            setattr(args, f"{kind}_strategy", IntervalStrategy.STEPS if kind != "save" else SaveStrategy.STEPS)
            setattr(args, f"{kind}_steps", steps_per_epoch)
            changes.append(f"{kind}_strategy steps, every {steps_per_epoch} (one epoch of the stream)")
    return changes


def streamed(dataset) -> bool:
    from datasets import IterableDataset  # here: `hf-resnet train --help` imports this module, not `datasets`

    return isinstance(dataset, IterableDataset)


def stream_steps(data, training_args) -> tuple[int | None, list[str]]:
    """A streamed train split: its steps per epoch (None for map-style data, or a stream of unknown size with
    `max_steps` given) and the schedule fields that follow from them."""
    if not training_args.do_train or not streamed(data.train):
        return None, []
    steps_per_epoch = streaming_steps_per_epoch(data.sizes.get("train"), training_args)
    return steps_per_epoch, use_steps_for_epochs(training_args, steps_per_epoch)


def gpu_choices(model_args: ModelArguments, training_args) -> tuple[bool, bool | None]:
    """channels-last (default: with a GPU) and cuDNN's benchmark mode (default: with a GPU, unless
    `full_determinism`, which wants the same algorithms every run; on a CPU it is left as it is)."""
    gpu = training_args.device.type == "cuda"
    channels_last = gpu if model_args.channels_last is None else model_args.channels_last
    benchmark = model_args.cudnn_benchmark
    if not gpu:
        return channels_last, None
    return channels_last, not training_args.full_determinism if benchmark is None else benchmark


def resolve_settings(model_args: ModelArguments, data_args: DataArguments, strategy_args: StrategyArguments,
                     training_args: FinetuneTrainingArguments, data) -> RunSettings:
    """Decide every derived setting once (see the module docstring), apply it, and log the result
    (`check_arguments` has run: `run.main` calls it first)."""
    changes = [note] if (note := cap_workers(training_args)) else []
    steps_per_epoch, stream_changes = stream_steps(data, training_args)
    changes += stream_changes
    if not training_args.disable_tqdm and not sys.stderr.isatty():
        training_args.disable_tqdm = True  # the Trainer prints each log line instead
        changes.append("disable_tqdm true: the output is not a terminal, so the log reads as lines, not redrawn bars")
    if strategy_args.unfreeze_epochs and training_args.world_size > 1 and not training_args.ddp_find_unused_parameters:
        # DDP must not wait for gradients of the parts still frozen (registered, but without gradients yet)
        training_args.ddp_find_unused_parameters = True
        changes.append(f"ddp_find_unused_parameters true: gradual unfreezing under {training_args.world_size} "
                       "processes")
    if streamed(data.train) and training_args.do_train and steps_per_epoch is None and (
            strategy_args.unfreeze_epochs or strategy_args.step_decay):
        raise ConfigError("`unfreeze_epochs` / `lr_milestones` / `lr_step_size` are in epochs, and this stream's "
                          "size is unknown, so it has none; use a stream of known size or map-style data.")
    channels_last, benchmark = gpu_choices(model_args, training_args)
    if benchmark is not None:
        torch.backends.cudnn.benchmark = benchmark
    settings = RunSettings(channels_last, benchmark, steps_per_epoch, tuple(changes))
    log_settings(settings, training_args)
    return settings


def describe(settings: RunSettings, args) -> list[str]:
    """The effective settings as lines, the batch arithmetic spelt out."""
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
    length = f"{args.max_steps} optimizer steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epoch(s)"
    lines = [
        f"device {args.device} x {args.world_size} process(es), {precision}, "
        f"{args.dataloader_num_workers} DataLoader worker(s) each",
        f"batch {args.per_device_train_batch_size} per device x {args.gradient_accumulation_steps} accumulation x "
        f"{args.world_size} process(es) = {per_step} images per optimizer step; {length}",
        f"eval {value_of(args.eval_strategy)}, save {value_of(args.save_strategy)}, "
        f"logging {value_of(args.logging_strategy)}",
        f"channels_last {settings.channels_last}, cudnn.benchmark "
        f"{'unchanged (no GPU)' if settings.cudnn_benchmark is None else settings.cudnn_benchmark}",
    ]
    if settings.steps_per_epoch is not None:
        lines.append(f"a streamed epoch is {settings.steps_per_epoch} optimizer steps")
    return lines + [f"changed: {change}" for change in settings.changes]


def log_settings(settings: RunSettings, training_args) -> None:
    logger.info("Effective settings:\n  %s", "\n  ".join(describe(settings, training_args)))
