"""The Trainer for image classification: parameter groups, memory-safe metrics, streamed data, our model card.

`ImageClassificationTrainer` differs from `transformers.Trainer` in these places only:
- `create_optimizer`: groups from `strategies.param_groups` (no decay on norms/biases, optional head rate);
- `compute_loss`: a batch whose images all failed to decode adds nothing; a NaN/inf loss stops the run with the
  step and the batch's files (`on_nonfinite_loss: stop`) or adds nothing (`skip`), before any weight sees it;
- `_get_dataloader`: a streamed train split is already split per process, so its batches are not dispatched;
  a streamed eval split is read by the main process and dispatched, so every example is scored exactly once;
- `create_model_card`: renders `model_card.md` via `reports.model_card` (also when `push_to_hub` calls it);
- metrics come from `metrics.reduce_logits` + `metrics.ComputeMetrics` (top-5 ids per example, never all logits).

What this relies on inside transformers / accelerate (each has a test in `tests/test_trainer.py` that fails when
an upgrade changes it):
1. patch: `optimizer.step` is replaced on the optimizer instance (`_guard_optimizer_step`); accelerate's
   `AcceleratedOptimizer.step` calls it, so a skipped update takes no step (no momentum, no weight decay);
2. patch: `accelerator.dataloader_config.dispatch_batches` is switched for the duration of one
   `_get_dataloader` call (`_dispatch`), and restored;
3. private override: `_prepare_inputs` (the Trainer calls it on every train and eval batch) pops `example_ids`,
   which the model never sees;
4. private override: `_get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)`
   (the common path of the train, eval and test loaders);
5. frozen BatchNorm layers are held in eval mode by a forward pre-hook (`strategies.hold_batchnorm`), a public
   torch API: nothing on the module is patched, and unfreezing removes the hook.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
from transformers import Trainer

from .callbacks import EpochCallback
from .constants import IGNORE_INDEX
from .errors import NonFiniteLossError
from .inputs import ImageClassificationDataset, collate
from .metrics import ComputeMetrics, reduce_logits
from .reports.model_card import CardInfo, write_model_card
from .strategies import param_groups

logger = logging.getLogger(__name__)


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

    # Loss guard: all-skipped batches and non-finite losses -----------------------------------------------------

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
        kwargs = dict(return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not model.training:
            return super().compute_loss(model, inputs, **kwargs)
        labels = inputs.get("labels")
        skipping = self.args.on_nonfinite_loss == "skip"
        # BatchNorm updates its running statistics during the forward pass: keep a copy to undo a dropped batch.
        buffers = [(b, b.detach().clone()) for b in model.buffers()] if skipping else []
        # Every process runs the forward pass and the reduce below, whatever its batch holds: a process that
        # returned early would leave the others waiting in a collective.
        result = super().compute_loss(model, inputs, **kwargs)
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
                f"The training loss is {loss.item()} at step {step} (global step {self.state.global_step} done). "
                f"Batch images: {', '.join(self._batch_files()) or 'unknown'}. Lower `learning_rate`, check those "
                "images, or set `on_nonfinite_loss: skip` to drop such updates. The last checkpoint in output_dir "
                "is intact."
            )
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        self._skip_update = True  # the optimizer step of this update is not taken (see create_optimizer)
        logger.warning("Non-finite loss at step %d: update skipped. Images: %s", step, ", ".join(self._batch_files()))
        zero = self._zero_loss(model)
        return (zero, result[1]) if return_outputs else zero

    # Optimizer: our parameter groups, a step that can be skipped ------------------------------------------------

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

    # Streamed data under several processes ----------------------------------------------------------------------

    @contextmanager
    def _dispatch(self, value: bool):
        config = self.accelerator.dataloader_config
        previous = config.dispatch_batches
        config.dispatch_batches = value
        try:
            yield
        finally:
            config.dispatch_batches = previous

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False,
                        dataloader_key=None):
        args = (dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        if isinstance(dataset, torch.utils.data.IterableDataset) and self.args.world_size > 1:
            with self._dispatch(not is_training):
                return super()._get_dataloader(*args)
        return super()._get_dataloader(*args)

    # Model card ---------------------------------------------------------------------------------------------------

    def create_model_card(self, model_name: str | None = None, **kwargs) -> None:
        if self.is_world_process_zero():
            repo_id = self.args.hub_model_id or getattr(self, "hub_model_id", None)
            write_model_card(self.card_info, self.args, repo_id=repo_id, model_name=model_name)
