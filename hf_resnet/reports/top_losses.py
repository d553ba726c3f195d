"""The split's top losses, as fastai's `plot_top_losses` shows them: the images the model got most confidently
wrong, sorted by loss, with their files, the first place to look for mislabelled images.

The loss of an example is -log p(true class), from the one probability per example `metrics.reduce_logits` keeps
beside the top-5: O(examples), whatever the number of classes. `top_losses.csv` lists the 100 worst (files and
probabilities); `reports.evaluation` draws the 16 worst into `top_losses.png` and puts the worst mistakes in the
predictions grid.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..constants import IGNORE_INDEX

CSV_ROWS = 100
PICTURE_IMAGES = 16
COLUMNS = ["rank", "file", "true_label", "predicted_label", "loss", "true_probability", "predicted_probability"]


def example_losses(true_probability, true_ids) -> np.ndarray:
    """-log p(true) per example; NaN where there is no truth (unlabeled, or an image that could not be read)."""
    p = np.asarray(true_probability, dtype=np.float64).ravel()
    scored = (np.asarray(true_ids).ravel() != IGNORE_INDEX) & np.isfinite(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scored, -np.log(np.maximum(p, np.finfo(np.float64).tiny)), np.nan)


def worst(losses: np.ndarray, count: int) -> list[int]:
    """The `count` highest losses' indices, highest first (ties: the earlier example first)."""
    scored = np.flatnonzero(np.isfinite(losses))
    order = scored[np.argsort(-losses[scored], kind="stable")]
    return order[:count].tolist()


def write_top_losses(path: Path, indices: list[int], losses: np.ndarray, true_probability, ids, probs,
                     true_ids, labels: list[str], files: list[str]) -> int:
    """`top_losses.csv`: one row per index, in order; returns the rows written."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for rank, (index, file) in enumerate(zip(indices, files), start=1):
            writer.writerow([rank, file, labels[int(true_ids[index])], labels[int(ids[index, 0])],
                             f"{max(losses[index], 0.0):.6f}", f"{float(true_probability[index]):.6f}",
                             f"{float(probs[index, 0]):.6f}"])
    return len(indices)
