"""Predictions as CSV, one row per image in the split's order (or the order given to `hf-resnet predict`).

Columns: index, file (empty when streamed data does not carry it), true_label (empty when unlabeled),
predicted_label, score, top{k}_labels and top{k}_scores (`|`-separated, best first), skipped (why an image could
not be read; its other columns are then empty).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..constants import IGNORE_INDEX

CHUNK = 4096


class PredictionsCsv:
    """Writes rows as they come: memory does not grow with the number of images."""

    def __init__(self, path: Path, k: int):
        self.path = Path(path)
        self._handle = self.path.open("w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._handle)
        self._writer.writerow(["index", "file", "true_label", "predicted_label", "score", f"top{k}_labels",
                               f"top{k}_scores", "skipped"])
        self.rows = 0

    def write(self, index: int, file: str, true_label: str, labels: Sequence[str], scores: Sequence[float],
              skipped: str = "") -> None:
        if skipped or not labels:
            self._writer.writerow([index, file, true_label, "", "", "", "", skipped or "could not be read"])
        else:
            self._writer.writerow([index, file, true_label, labels[0], f"{scores[0]:.6f}", "|".join(labels),
                                   "|".join(f"{s:.6f}" for s in scores), ""])
        self.rows += 1

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> PredictionsCsv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_predictions(path: Path, ids: np.ndarray, probs: np.ndarray, labels: list[str],
                      true_ids: np.ndarray | None = None, files: Iterable[str] | None = None,
                      skipped: dict[int, str] | None = None) -> int:
    """A split's rows from the gathered top-k class ids and probabilities ((n, k) each; `metrics.reduce_logits`).

    `true_ids`: the head's label ids (None: unlabeled; -100: an image that could not be decoded). `files`: the
    file names in row order (`inputs.iter_file_names`), None when unknown. `skipped`: index -> reason from the
    skip report. Returns the number of rows written.
    """
    skipped = skipped or {}
    files = iter(files) if files is not None else None
    with PredictionsCsv(path, ids.shape[1]) as out:
        for start in range(0, len(ids), CHUNK):  # Python lists for a chunk at a time: fast, and bounded
            chunk_ids, chunk_probs = ids[start : start + CHUNK].tolist(), probs[start : start + CHUNK].tolist()
            chunk_true = None if true_ids is None else true_ids[start : start + CHUNK].tolist()
            for offset, (row_ids, row_probs) in enumerate(zip(chunk_ids, chunk_probs)):
                i = start + offset
                file = next(files, "") if files is not None else ""
                true = None if chunk_true is None else chunk_true[offset]
                if i in skipped or true == IGNORE_INDEX:
                    out.write(i, file, "", [], [], skipped.get(i, "could not be decoded (see skipped_images.json)"))
                    continue
                out.write(i, file, "" if true is None else labels[true], [labels[j] for j in row_ids], row_probs)
        return out.rows
