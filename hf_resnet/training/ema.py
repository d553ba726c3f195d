"""An exponential moving average (EMA) of a model's weights, as timm's ModelEmaV3 keeps it.

After each optimizer step n (n = 1, 2, ...), every floating-point tensor of the model's state dict (parameters and
BatchNorm statistics) moves the average towards the model:
    ema_n = d_n * ema_{n-1} + (1 - d_n) * weights_n,   ema_0 = the weights training starts from
    d_n   = min(decay, (1 + n) / (10 + n)) with warm-up, else decay
Integer buffers (BatchNorm's `num_batches_tracked`) are copied. The average lives beside the model (one more copy
of the weights) and is saved with the update count, so a resumed run continues it exactly.

`EmaTrainerMixin` is everything the Trainer does with it (`ema_decay` set): it moves after each optimizer step
taken, is what `evaluate`/`predict` score and `save_model` writes, while a checkpoint holds the raw weights (to
resume from) and `ema.safetensors`; a resumed run loads it, and `load_best_model_at_end` loads the best one's.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.trainer_utils import get_last_checkpoint

from ..errors import ConfigError
from .checkpoints import CHECKPOINT_RE

EMA_FILE = "ema.safetensors"


class WeightEma:
    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = float(decay), bool(warmup)
        self.updates = 0
        self.shadow = {name: t.detach().clone() for name, t in model.state_dict().items()}

    def decay_at(self, update: int) -> float:
        return min(self.decay, (1 + update) / (10 + update)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One step of the average: a few multi-tensor kernels (`torch._foreach_lerp_`, as timm's ModelEmaV3), not
        one launch per tensor (about 320 for ResNet-50); the same values as `lerp_` tensor by tensor (tested)."""
        self.updates += 1
        weight = 1.0 - self.decay_at(self.updates)
        averages, targets, counters, counts = [], [], [], []
        for name, tensor in model.state_dict().items():
            average = self.shadow[name]
            if average.is_floating_point():
                averages.append(average)
                targets.append(tensor.detach().to(average.dtype))
            else:
                counters.append(average)
                counts.append(tensor)
        if averages:
            torch._foreach_lerp_(averages, targets, weight)
        if counters:
            torch._foreach_copy_(counters, counts)

    @contextmanager
    def applied(self, model: torch.nn.Module):
        """The model holds the average inside the block and its own weights again after it."""
        own = {name: t.detach().clone() for name, t in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / EMA_FILE
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.shadow.items()}
        save_file(tensors, str(path), metadata={"updates": str(self.updates), "decay": repr(self.decay)})
        return path

    def load(self, folder: str | Path) -> None:
        path = Path(folder) / EMA_FILE
        if not path.is_file():
            raise ConfigError(
                f"{folder} has no {EMA_FILE}: it was saved without `ema_decay`, so its average cannot be continued. "
                "Resume without `ema_decay`, or `--resume_from_checkpoint false` to start afresh."
            )
        with safe_open(str(path), framework="pt") as handle:
            self.updates = int(handle.metadata()["updates"])
            for name, average in self.shadow.items():
                average.copy_(handle.get_tensor(name))


class EmaTrainerMixin:
    """The EMA's part of `ImageClassificationTrainer` (before `Trainer` in its bases); `self.ema` is a `WeightEma`
    or None, set in `__init__`."""

    ema: WeightEma | None = None

    def ema_step(self) -> None:
        """After an optimizer step that was taken (the trainer's guarded step calls it)."""
        if self.ema is not None:
            self.ema.update(self.model)

    def evaluated_weights(self):
        """A context in which `self.model` holds the weights `evaluate()` scores and `save_model()` writes (the
        EMA when `ema_decay` is set): what the reports' pictures must be drawn with."""
        return self.ema.applied(self.model) if self.ema is not None else nullcontext()

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if self.ema is not None and resume_from_checkpoint:
            folder = resume_from_checkpoint
            if folder is True:
                folder = get_last_checkpoint(self.args.output_dir)
            if folder:
                self.ema.load(folder)
        result = super().train(resume_from_checkpoint, *args, **kwargs)
        if self.ema is not None and self.args.load_best_model_at_end and self.state.best_model_checkpoint:
            self.ema.load(self.state.best_model_checkpoint)  # the average that was evaluated best
        return result

    def evaluate(self, *args, **kwargs):
        with self.evaluated_weights():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with self.evaluated_weights():
            return super().predict(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        folder = output_dir or self.args.output_dir
        if self.ema is not None and CHECKPOINT_RE.match(Path(folder).name):
            super().save_model(output_dir, _internal_call)  # the raw weights, which training resumes from
            if self.args.should_save:
                self.ema.save(folder)  # before trainer_state.json: a checkpoint with a state has its EMA
            return
        with self.evaluated_weights():
            super().save_model(output_dir, _internal_call)
