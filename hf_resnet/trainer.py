"""The Trainer for image classification: parameter groups, memory-safe metrics, streamed data, our model card.

`ImageClassificationTrainer` differs from `transformers.Trainer` in these places only:
- `create_optimizer`: groups from `modeling.param_groups` (no decay on norms/biases, optional head learning rate);
- `_get_dataloader`: a streamed train split is already split per process, so its batches are not dispatched;
  a streamed eval split is read by the main process and dispatched, so every example is scored exactly once;
- `create_model_card`: renders `model_card.md` (called by `push_to_hub` and by `recipes/finetune.py`);
- metrics come from `metrics.reduce_logits` + `metrics.ComputeMetrics` (top-5 ids per example, never all logits);
- `compute_loss`: a batch whose images all failed to decode adds nothing; a NaN/inf loss stops the run with the
  step and the batch's files (`on_nonfinite_loss: stop`) or adds nothing (`skip`), before any weight sees it.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import Trainer
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from .metrics import ComputeMetrics, reduce_logits
from .model_card import render_model_card
from .modeling import param_groups
from .configs import ConfigError
from .examples import IGNORE_INDEX, EpochCallback, ImageClassificationDataset, collate

logger = logging.getLogger(__name__)


@dataclass
class CardInfo:
    """What the model card says that the Trainer does not know."""

    base_model: str | None
    dataset_name: str
    dataset_id: str | None
    labels: list[str]
    tuning: str
    train_examples: int | str = "unknown"
    eval_examples: int | str = "unknown"
    eval_split: str = "validation"
    eval_metrics: dict = field(default_factory=dict)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the batch's images."""


class ImageClassificationTrainer(Trainer):
    def __init__(self, *args, card_info: CardInfo, head_learning_rate: float | None = None,
                 describe_examples=None, **kwargs):
        kwargs.setdefault("data_collator", collate)
        kwargs.setdefault("compute_metrics", ComputeMetrics(len(card_info.labels)))
        kwargs.setdefault("preprocess_logits_for_metrics", reduce_logits)
        super().__init__(*args, **kwargs)
        if isinstance(self.train_dataset, ImageClassificationDataset):
            self.add_callback(EpochCallback(self.train_dataset))
        self.card_info = card_info
        self.head_learning_rate = head_learning_rate
        self.describe_examples = describe_examples  # example ids -> file names, for messages
        self._example_ids = None
        self._skip_update = False

    def _prepare_inputs(self, inputs):
        inputs = dict(inputs)
        self._example_ids = inputs.pop("example_ids", None)  # for messages only; the model never sees them
        return super()._prepare_inputs(inputs)

    @staticmethod
    def _zero_loss(model) -> torch.Tensor:
        """A loss of 0 that still touches every trainable weight (DDP expects gradients for all of them)."""
        return sum(p.sum() for p in model.parameters() if p.requires_grad) * 0.0

    def _batch_files(self) -> list[str]:
        ids = [] if self._example_ids is None else self._example_ids.tolist()
        if self.describe_examples is None:
            return [f"index {i}" for i in ids]
        return self.describe_examples(ids)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        labels = inputs.get("labels")
        skipping = self.args.on_nonfinite_loss == "skip"
        # BatchNorm updates its running statistics during the forward pass: keep a copy to undo a dropped batch.
        buffers = [(b, b.detach().clone()) for b in model.buffers()] if skipping else []
        # Every process runs the forward pass and the reduce below, whatever its batch holds: a process that
        # returned early would leave the others waiting in a collective.
        result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        all_skipped = labels is not None and bool((labels == IGNORE_INDEX).all())  # every image failed to decode
        flags = torch.tensor([0.0 if all_skipped or bool(torch.isfinite(loss).all()) else 1.0], device=loss.device)
        if self.args.world_size > 1:  # every process takes the same decision, so none waits on another
            flags = self.accelerator.reduce(flags, reduction="sum")
        if flags.item() == 0:
            if all_skipped:  # the loss of an all-ignored batch is 0/0; it adds nothing instead
                zero = self._zero_loss(model)
                return (zero, result[1]) if return_outputs else zero
            return result
        step = self.state.global_step + 1
        if not skipping:
            raise NonFiniteLossError(
                f"The training loss is {loss.item()} at step {step} (global step {self.state.global_step} done). Batch "
                f"images: {', '.join(self._batch_files()) or 'unknown'}. Lower `learning_rate`, check those images, "
                "or set `on_nonfinite_loss: skip` to drop such updates. The last checkpoint in output_dir is intact."
            )
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        self._skip_update = True  # the optimizer step of this update is not taken (see create_optimizer)
        logger.warning("Non-finite loss at step %d: update skipped. Images: %s", step, ", ".join(self._batch_files()))
        zero = self._zero_loss(model)
        return (zero, result[1]) if return_outputs else zero

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = param_groups(opt_model, self.args.learning_rate, self.args.weight_decay, self.head_learning_rate)
            if self.optimizer_cls_and_kwargs is not None:
                optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
            else:
                optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            self._guard_optimizer_step(self.optimizer)
        return self.optimizer

    def _guard_optimizer_step(self, optimizer) -> None:
        """Skip the whole optimizer step (momentum, weight decay) of an update whose loss was not finite."""
        step = optimizer.step

        def guarded_step(*args, **kwargs):
            if self._skip_update:
                self._skip_update = False
                return None
            return step(*args, **kwargs)

        optimizer.step = guarded_step

    @contextmanager
    def _dispatch(self, value: bool):
        config = self.accelerator.dataloader_config
        previous = config.dispatch_batches
        config.dispatch_batches = value
        try:
            yield
        finally:
            config.dispatch_batches = previous

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False, dataloader_key=None):
        if isinstance(dataset, torch.utils.data.IterableDataset) and self.args.world_size > 1:
            with self._dispatch(not is_training):
                return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        if not self.is_world_process_zero():
            return
        info = self.card_info
        output_dir = Path(self.args.output_dir)
        repo_id = self.args.hub_model_id or getattr(self, "hub_model_id", None) or output_dir.name
        card = render_model_card(
            model_name=model_name or repo_id.split("/")[-1],
            repo_id=repo_id,
            base_model=info.base_model,
            dataset_name=info.dataset_name,
            dataset_id=info.dataset_id,
            labels=info.labels,
            eval_metrics=info.eval_metrics,
            eval_split=info.eval_split,
            eval_examples=info.eval_examples,
            train_examples=info.train_examples,
            tuning=info.tuning,
            training_args=self.args,
        )
        card.save(output_dir / "README.md")


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


def use_steps_for_epochs(args, steps_per_epoch: int | None) -> None:
    """A stream has no length for the Trainer: set `max_steps`, and turn epoch-wise eval/save/logging into
    every `steps_per_epoch` steps, which also keeps processes in step when their shards differ in size."""
    if steps_per_epoch is None:
        epoch_wise = [k for k in ("eval", "save") if getattr(getattr(args, f"{k}_strategy"), "value", None) == "epoch"]
        if epoch_wise and args.world_size > 1:  # processes would reach "end of epoch" at different steps and hang
            raise ConfigError(
                f"A stream of unknown size has no common epoch end across {args.world_size} processes; set "
                + " and ".join(f"`{k}_strategy: steps` with `{k}_steps`" for k in epoch_wise) + "."
            )
        return
    if args.max_steps <= 0:
        args.max_steps = steps_per_epoch * math.ceil(args.num_train_epochs)
    for kind in ("eval", "save", "logging"):
        strategy = getattr(args, f"{kind}_strategy")
        if getattr(strategy, "value", strategy) == "epoch":
            setattr(args, f"{kind}_strategy", IntervalStrategy.STEPS if kind != "save" else SaveStrategy.STEPS)
            setattr(args, f"{kind}_steps", steps_per_epoch)
