"""Every `TrainerCallback` the run uses, in one place: each reacts to the Trainer's events and nothing else."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from .checkpoints import fix_file_modes
from .skips import build_report, publish


class EpochCallback(TrainerCallback):
    """Tell the training set which epoch begins, also when a resumed run starts mid-epoch (accelerate's
    resumed DataLoader does not call `set_epoch`): per-example augmentation seeds depend on it."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


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
