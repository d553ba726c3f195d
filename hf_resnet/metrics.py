"""Classification metrics, computed locally (no `evaluate.load` download), in memory that does not grow with
the number of classes times examples.

`reduce_logits` runs on each eval batch (the Trainer's `preprocess_logits_for_metrics`) and keeps only the top-k
class ids and their probabilities: 50,000 x 1,000 ImageNet logits become 50,000 x 5. `compute_metrics` then
scores those. Ties between equal logits go to the lower class id, as `argmax` does.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from .constants import IGNORE_INDEX, TOP_K


def topk_stable(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k class ids and softmax probabilities; among equal logits the lower class id ranks first."""
    k = min(k, logits.shape[-1])
    order = torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices[..., :k]
    probs = torch.softmax(logits.float(), dim=-1).gather(-1, order)
    return order, probs


def reduce_logits(logits, labels=None):
    """`preprocess_logits_for_metrics`: (batch, classes) logits -> ((batch, k) ids, (batch, k) probabilities)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return topk_stable(logits, TOP_K)


def classification_metrics(topk_ids: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """accuracy (top-1), top5_accuracy (when there are more than 5 classes), macro precision/recall/F1."""
    topk_ids = np.asarray(topk_ids)
    labels = np.asarray(labels)
    scored = labels != IGNORE_INDEX  # images that could not be decoded are listed in skipped_images.json instead
    topk_ids, labels = topk_ids[scored], labels[scored]
    if len(labels) == 0:  # every image failed to decode: nothing to score (skipped_images.json says why)
        names = ["accuracy", "precision_macro", "recall_macro", "f1_macro"]
        names += ["top5_accuracy"] if num_classes > TOP_K else []
        return {"samples": 0, **{name: float("nan") for name in names}}
    if topk_ids.ndim == 1:
        topk_ids = topk_ids[:, None]
    predictions = topk_ids[:, 0]
    # Macro over the classes seen in labels or predictions (sklearn's default, as evaluate's f1 uses it); a class
    # never predicted counts with precision 0.
    precision, recall, f1, _ = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0)
    metrics = {
        "samples": int(len(labels)),  # examples actually scored: duplicates from padding would show here
        "accuracy": float(accuracy_score(labels, predictions)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }
    if num_classes > TOP_K:
        metrics["top5_accuracy"] = float((topk_ids[:, :TOP_K] == labels[:, None]).any(axis=1).mean())
    return metrics


class ComputeMetrics:
    """The Trainer's `compute_metrics`: takes the reduced predictions `reduce_logits` produced."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, eval_pred) -> dict[str, float]:
        predictions = eval_pred.predictions
        topk_ids = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
        return classification_metrics(topk_ids, eval_pred.label_ids, self.num_classes)
