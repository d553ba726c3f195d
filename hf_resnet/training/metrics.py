"""Classification metrics, computed locally (no `evaluate.load` download), in memory that does not grow with
the number of classes times examples.

`reduce_logits` runs on each eval batch (the Trainer's `preprocess_logits_for_metrics`) and keeps only the top-k
class ids and their probabilities, and each example's probability of its true class (its loss is -log of it: the
report's top losses): 50,000 x 1,000 ImageNet logits become 50,000 x 6. `compute_metrics` then scores those. Ties
between equal logits go to the lower class id, as `argmax` does.

The expected calibration error (`eval_ece`, Guo et al. 2017) comes from the top-1 probability and whether it was
right, put in 15 equal-width bins of confidence: three counters per bin (`calibration_bins`), one pass, O(examples)
at most, whatever the number of classes.

Every top-1 metric comes from one table, the confusion counts (classes x classes, at most 1,000 x 1,000): the
accuracy is its diagonal over its total, and the per-class precision, recall and F1 the reports show average to
the macro figures reported here, by construction.
"""

from __future__ import annotations

import numpy as np
import torch

from ..constants import IGNORE_INDEX, TOP_K


def topk_stable(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k class ids and softmax probabilities; among equal logits the lower class id ranks first."""
    k = min(k, logits.shape[-1])
    order = torch.sort(logits.float(), dim=-1, descending=True, stable=True).indices[..., :k]
    probs = torch.softmax(logits.float(), dim=-1).gather(-1, order)
    return order, probs


def true_class_probability(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """(batch,) softmax probability of each example's label; NaN without labels or for -100 (unreadable)."""
    out = torch.full(logits.shape[:1], float("nan"), device=logits.device)
    if labels is None:
        return out
    labels = labels.to(logits.device).long()
    scored = (labels >= 0) & (labels < logits.shape[-1])
    probs = torch.softmax(logits.float(), dim=-1).gather(-1, labels.clamp(0, logits.shape[-1] - 1)[:, None])[:, 0]
    return torch.where(scored, probs, out)


def reduce_logits(logits, labels=None):
    """`preprocess_logits_for_metrics`: (batch, classes) logits -> ((batch, k) ids, (batch, k) probabilities,
    (batch,) probability of the true class); plus (batch,) ranks among all the checkpoint's classes when the
    trainer appended them (a `SubsetHead`)."""
    ranks = None
    if isinstance(logits, (tuple, list)):
        ranks = next((t for t in logits[1:] if isinstance(t, torch.Tensor) and t.ndim == 1
                      and not t.is_floating_point()), None)
        logits = logits[0]
    ids, probs = topk_stable(logits, TOP_K)
    truth = true_class_probability(logits, labels)
    return (ids, probs, truth) if ranks is None else (ids, probs, truth, ranks)


ECE_BINS = 15


def calibration_bins(confidence, correct, bins: int = ECE_BINS) -> np.ndarray:
    """(bins, 3) float64: per equal-width confidence bin ((m-1)/M, m/M], the number of examples, the sum of their
    confidences and the number right. Bins of several batches or processes add up."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    return np.stack([np.bincount(index, minlength=bins).astype(np.float64),
                     np.bincount(index, weights=confidence, minlength=bins),
                     np.bincount(index, weights=correct, minlength=bins)], axis=1)


def expected_calibration_error(table: np.ndarray) -> float:
    """sum over bins of (bin count / total) x |accuracy in the bin - mean confidence in the bin|."""
    table = np.asarray(table, dtype=np.float64)
    total = table[:, 0].sum()
    return float(np.abs(table[:, 2] - table[:, 1]).sum() / total) if total else float("nan")


def all_class_metrics(ranks, labels) -> dict[str, float]:
    """From each example's rank among all the checkpoint's classes (0: top-1): the top-1 and top-5 accuracy
    among all of them, next to the figures among the data's classes only."""
    ranks, labels = np.asarray(ranks).ravel(), np.asarray(labels).ravel()
    ranks = ranks[labels != IGNORE_INDEX]
    if len(ranks) == 0:
        return {"all_classes_accuracy": float("nan"), "all_classes_top5_accuracy": float("nan")}
    return {"all_classes_accuracy": float((ranks == 0).mean()),
            "all_classes_top5_accuracy": float((ranks < TOP_K).mean())}


def confusion_counts(labels, predictions, num_classes: int) -> np.ndarray:
    """(true class, predicted class) -> number of images, as a (num_classes, num_classes) int64 table.

    Examples labelled `IGNORE_INDEX` (images that could not be decoded) are left out. Memory: the table plus one
    int64 per example, never examples x classes.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    scored = labels != IGNORE_INDEX
    cells = labels[scored] * num_classes + predictions[scored]
    return np.bincount(cells, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 (0 where undefined, as scikit-learn's `zero_division=0`), support (true
    images of the class), predicted (images predicted as it) and `present` (in the labels or the predictions:
    the classes a macro average counts, as scikit-learn's default does)."""
    counts = np.asarray(counts, dtype=np.int64)
    hits = np.diag(counts).astype(np.float64)
    support, predicted = counts.sum(axis=1), counts.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), 0.0)  # 2PR/(P+R)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support, "predicted": predicted,
            "present": (support + predicted) > 0}


def macro_metrics(counts: np.ndarray) -> dict[str, float]:
    """accuracy and macro precision/recall/F1 from the confusion counts (macro over the classes present)."""
    per_class = per_class_metrics(counts)
    present = per_class["present"]
    total = int(np.asarray(counts).sum())
    return {
        "accuracy": float(np.trace(counts) / total) if total else float("nan"),
        "precision_macro": float(per_class["precision"][present].mean()) if present.any() else float("nan"),
        "recall_macro": float(per_class["recall"][present].mean()) if present.any() else float("nan"),
        "f1_macro": float(per_class["f1"][present].mean()) if present.any() else float("nan"),
    }


def classification_metrics(topk_ids: np.ndarray, labels: np.ndarray, num_classes: int,
                           top1_probs: np.ndarray | None = None) -> dict[str, float]:
    """accuracy (top-1), top5_accuracy (when there are more than 5 classes), macro precision/recall/F1; and ece
    (15 bins) when the top-1 probabilities are given."""
    topk_ids = np.asarray(topk_ids)
    labels = np.asarray(labels)
    scored = labels != IGNORE_INDEX  # images that could not be decoded are listed in skipped_images.json instead
    topk_ids, labels = topk_ids[scored], labels[scored]
    top1_probs = None if top1_probs is None else np.asarray(top1_probs).ravel()[scored]
    if len(labels) == 0:  # every image failed to decode: nothing to score (skipped_images.json says why)
        names = ["accuracy", "precision_macro", "recall_macro", "f1_macro"]
        names += ["top5_accuracy"] if num_classes > TOP_K else []
        names += ["ece"] if top1_probs is not None else []
        return {"samples": 0, **{name: float("nan") for name in names}}
    if topk_ids.ndim == 1:
        topk_ids = topk_ids[:, None]
    # Macro over the classes seen in labels or predictions (scikit-learn's default, as evaluate's f1 uses it); a
    # class never predicted counts with precision 0.
    metrics = {
        "samples": int(len(labels)),  # examples actually scored: duplicates from padding would show here
        **macro_metrics(confusion_counts(labels, topk_ids[:, 0], num_classes)),
    }
    if num_classes > TOP_K:
        metrics["top5_accuracy"] = float((topk_ids[:, :TOP_K] == labels[:, None]).any(axis=1).mean())
    if top1_probs is not None:
        metrics["ece"] = expected_calibration_error(calibration_bins(top1_probs, topk_ids[:, 0] == labels))
    return metrics


class ComputeMetrics:
    """The Trainer's `compute_metrics`: takes the reduced predictions `reduce_logits` produced."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, eval_pred) -> dict[str, float]:
        predictions = eval_pred.predictions
        if not isinstance(predictions, (tuple, list)):  # top-k ids alone
            return classification_metrics(predictions, eval_pred.label_ids, self.num_classes)
        top1_probs = np.asarray(predictions[1])[:, 0] if len(predictions) > 1 else None
        metrics = classification_metrics(predictions[0], eval_pred.label_ids, self.num_classes, top1_probs)
        if len(predictions) == 4:  # (ids, probabilities, probability of the truth, ranks among all classes)
            metrics.update(all_class_metrics(predictions[3], eval_pred.label_ids))
        return metrics
