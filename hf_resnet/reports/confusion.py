"""The confusion matrix as files and lists a person reads: the complete CSV, the most-confused class pairs, the
per-class table, and which classes a picture can show when there are too many for one grid."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..training.metrics import per_class_metrics


def write_confusion_csv(path: Path, counts: np.ndarray, labels: list[str]) -> None:
    """Every class, always: one row per true class, one column per predicted class, counts of images."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *labels])
        for name, row in zip(labels, np.asarray(counts)):
            writer.writerow([name, *row.tolist()])


def _largest_off_diagonal(counts: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the k largest non-zero off-diagonal cells, largest first (ties in class order); memory: one
    index per cell, no copy of the table."""
    n = counts.shape[0]
    flat = counts.ravel()
    wanted = min(flat.size, k + n)  # the diagonal's n cells may be among the largest
    cells = np.argpartition(flat, flat.size - wanted)[flat.size - wanted :]
    cells = cells[(cells // n != cells % n) & (flat[cells] > 0)]
    return cells[np.lexsort((cells, -flat[cells]))][:k]


def most_confused(counts: np.ndarray, labels: list[str], limit: int = 20) -> list[dict]:
    """The `limit` largest off-diagonal cells: which true class is most often taken for which other class."""
    counts = np.asarray(counts)
    support = counts.sum(axis=1)
    pairs = []
    for cell in _largest_off_diagonal(counts, limit):
        true, predicted = divmod(int(cell), counts.shape[1])
        pairs.append({"true": labels[true], "predicted": labels[predicted], "count": int(counts[true, predicted]),
                      "share_of_true": float(counts[true, predicted] / support[true])})
    return pairs


def per_class_rows(counts: np.ndarray, labels: list[str]) -> list[dict]:
    """One row per class: precision, recall, F1, support (true images) and predicted (images given the class)."""
    table = per_class_metrics(counts)
    return [
        {"class": name, "precision": float(table["precision"][i]), "recall": float(table["recall"][i]),
         "f1": float(table["f1"][i]), "support": int(table["support"][i]), "predicted": int(table["predicted"][i])}
        for i, name in enumerate(labels)
    ]


def classes_to_show(counts: np.ndarray, limit: int = 30) -> list[int]:
    """All classes when they fit in one readable grid; otherwise the classes of the most-confused pairs (up to
    `limit`), in class order, so the picture shows where the model fails rather than 1,000 empty rows."""
    counts = np.asarray(counts)
    n = counts.shape[0]
    if n <= limit:
        return list(range(n))
    chosen: list[int] = []
    for cell in _largest_off_diagonal(counts, limit * limit):  # limit x limit pairs name at least `limit` classes
        for index in divmod(int(cell), n):
            if index not in chosen and len(chosen) < limit:
                chosen.append(index)
        if len(chosen) >= limit:
            break
    if len(chosen) < limit:  # few mistakes: fill with the largest classes
        for index in np.argsort(-counts.sum(axis=1), kind="stable"):
            if int(index) not in chosen:
                chosen.append(int(index))
            if len(chosen) >= limit:
                break
    return sorted(chosen)
