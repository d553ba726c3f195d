"""The trainer's test-time augmentation pass (`TtaTrainerMixin`): a second evaluation loop over a split whose
examples are (K, 3, H, W) views (`data/tta.py`, `inputs.build_tta_split`), each batch run as B x K images and the
views' probabilities averaged per example.

It is a loop of its own, after the plain evaluation and never inside training: the plain figures, the report and
the predictions stay exactly what they were without TTA, and the TTA figures come beside them as `<split>_tta_*`
(`eval_tta_accuracy`, `eval_tta_loss`, `eval_tta_ece`, ...), through the same `reduce_logits` and
`ComputeMetrics` (the averaged probabilities go in as their log, a valid logit vector). It runs
`evaluation_loop` directly, not `evaluate`: callbacks (early stopping, a sweep's pruning) see one final evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from ..data.tta import combine_views


class TtaTrainerMixin:
    """The TTA part of `ImageClassificationTrainer`; `tta_weights` is set only while `evaluate_tta` runs."""

    tta_weights: list[float] | None = None

    def tta_prediction_step(self, model, inputs, prediction_loss_only):
        """One batch of views: (loss of the averaged probabilities, their log (B, C), labels)."""
        inputs = self._prepare_inputs(inputs)  # normalised on the model's device, (B, K, 3, H, W)
        pixels, labels = inputs["pixel_values"], inputs.get("labels")
        batch, views = pixels.shape[:2]
        with torch.no_grad(), self.compute_loss_context_manager():
            logits = model(pixel_values=self.normalizer.layout(pixels.flatten(0, 1)) if self.normalizer is not None
                           else pixels.flatten(0, 1)).logits
        log_probs = combine_views(logits.view(batch, views, -1), self.tta_weights)
        loss = None
        if labels is not None and (labels != IGNORE_INDEX).any():
            loss = F.nll_loss(log_probs, labels.to(log_probs.device), ignore_index=IGNORE_INDEX).detach()
        return loss, None if prediction_loss_only else log_probs, labels

    def evaluate_tta(self, dataset, weights: list[float], metric_key_prefix: str = "eval") -> dict:
        """Score `dataset` (a TTA split) with its views averaged by `weights`; metrics keyed
        `<metric_key_prefix>_tta_*`. The evaluated weights (the EMA with `ema_decay`) are scored."""
        self.tta_weights = list(weights)
        try:
            with self.evaluated_weights():
                loader = self.get_eval_dataloader(dataset)
                output = self.evaluation_loop(loader, description="Test-time augmentation",
                                              metric_key_prefix=f"{metric_key_prefix}_tta")
        finally:
            self.tta_weights = None
        return output.metrics
