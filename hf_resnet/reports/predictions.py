"""Predictions for unlabeled test images: one CSV row per image, in dataset order."""

from __future__ import annotations

import csv
from pathlib import Path

from ..inputs import file_names


def write_predictions(path: Path, output, dataset, labels: list[str], skipped: dict[int, str] | None = None) -> int:
    """Columns: index, file (when known), label, score, top5_labels, top5_scores, skipped (the reason, if any).

    `output` is `Trainer.predict`'s result with `metrics.reduce_logits` predictions ((n, k) ids, (n, k) probs).
    Returns the number of rows written.
    """
    ids, probs = output.predictions
    skipped = skipped or {}
    files = file_names(dataset, list(range(len(ids))))
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "file", "label", "score", "top5_labels", "top5_scores", "skipped"])
        for i, (row_ids, row_probs) in enumerate(zip(ids, probs)):
            if i in skipped:
                writer.writerow([i, files[i], "", "", "", "", skipped[i]])
                continue
            writer.writerow([
                i, files[i], labels[row_ids[0]], f"{row_probs[0]:.6f}",
                "|".join(labels[j] for j in row_ids), "|".join(f"{p:.6f}" for p in row_probs), "",
            ])
    return len(ids)
