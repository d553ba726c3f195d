"""The `TrainerCallback`s of a run, each reacting to the Trainer's events and nothing else (`ExampleLog` is in
`distributed.py`, beside what it checks). `ImageClassificationTrainer._add_run_callbacks` registers them all."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from ..data.skips import build_report, publish
from ..errors import ConfigError
from .checkpoints import fix_file_modes

logger = logging.getLogger(__name__)


class EpochCallback(TrainerCallback):
    """Tell the training set (and a balanced sampler) which epoch begins, also when a resumed run starts
    mid-epoch (accelerate's resumed DataLoader does not call `set_epoch`): per-example augmentation seeds and the
    sampler's draw depend on it."""

    def __init__(self, *targets):
        self.targets = list(targets)

    def on_epoch_begin(self, args, state, control, **kwargs):
        for target in self.targets:
            target.set_epoch(int(state.epoch or 0))


class UnfreezeCallback(TrainerCallback):
    """Gradual unfreezing (`strategies.FreezePlan`), decided from the global step: when training starts (a
    resumed run too) the trainable set is the one due at that step, and before each optimizer step the parts due
    by then start to train. The optimizer's groups never change (every parameter is in them from the start)."""

    def __init__(self, plan, steps_per_epoch: Callable[[], int | None]):
        self.plan = plan
        self.epoch_steps = steps_per_epoch  # optimizer steps per epoch, known once training starts
        self.steps_per_epoch = 0
        self.done: int | None = None

    def _update(self, model, step: int) -> None:
        done = self.plan.due(step, self.steps_per_epoch)
        if done == self.done:
            return
        self.plan.apply(model, done)
        if self.done is not None or step > 0:
            names = [name for name, _ in model.named_parameters()]
            logger.info("Step %d (epoch %.2f): %s", step, step / self.steps_per_epoch, self.plan.describe(names, done))
        self.done = done

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.steps_per_epoch = self.epoch_steps()
        if self.steps_per_epoch is None:
            raise ConfigError("`unfreeze_epochs` needs epochs, and this stream's size is unknown.")
        self.done = None
        self._update(model, state.global_step)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._update(model, state.global_step)


class SkippedImagesCallback(TrainerCallback):
    """Refresh `skipped_images.json` after each evaluation and epoch; stop the run when a split skips too much."""

    def __init__(self, output_dir: str, split_sizes: dict[str, int | None], max_share: float):
        self.output_dir, self.split_sizes, self.max_share = output_dir, split_sizes, max_share

    def _check(self, state) -> None:
        report = build_report(self.output_dir, self.split_sizes)
        publish(report, self.output_dir, self.max_share, main_process=state.is_world_process_zero)

    def on_evaluate(self, args, state, control, **kwargs):
        self._check(state)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._check(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._check(state)


class FileModesCallback(TrainerCallback):
    """Each checkpoint's files readable as the umask says (safetensors writes its weights 0600)."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            fix_file_modes(Path(args.output_dir) / f"checkpoint-{state.global_step}")
