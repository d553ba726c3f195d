"""Class imbalance: how many training images each class has (never decoding an image), the inverse-frequency
class weights built from those counts, and a sampler that draws every class equally often.

Counts come from the label column of map-style data (read in chunks: memory holds the counts, not the column),
from a local folder's files when it is streamed, or else from the first `class_count_sample` examples of a stream.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import torch
from datasets import Dataset, IterableDataset

from ..data.folders import list_images
from ..data.loading import ImageData

logger = logging.getLogger(__name__)

CHUNK = 10_000  # labels read at a time


def _count(values, counts: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.int64)
    values = values[(values >= 0) & (values < len(counts))]  # -1: unlabeled
    counts += np.bincount(values, minlength=len(counts))


def label_counts(data: ImageData, train_dir: str | None = None, sample: int = 10_000) -> tuple[np.ndarray, str]:
    """Training images per class id, and where the numbers come from (for the log)."""
    counts = np.zeros(len(data.labels), dtype=np.int64)
    train = data.train
    if isinstance(train, Dataset):
        for batch in train.select_columns([data.label_column]).iter(batch_size=CHUNK):
            _count(batch[data.label_column], counts)
        return counts, f"the label column of {len(train)} training examples"
    if train_dir is not None:
        per_folder = Counter(path.parent.name for path in list_images(train_dir))
        for i, name in enumerate(data.labels):
            counts[i] = per_folder.get(name, 0)
        return counts, f"the files of {train_dir}"
    if isinstance(train, IterableDataset):
        seen = 0
        for batch in train.select_columns([data.label_column]).take(sample).iter(batch_size=CHUNK):
            _count(batch[data.label_column], counts)
            seen += len(batch[data.label_column])
        return counts, f"the first {seen} examples of the stream (a sample: `class_count_sample`)"
    raise ValueError("label_counts needs a train split")


def inverse_frequency(counts: np.ndarray) -> list[float]:
    """N / (K x n_k), scikit-learn's `balanced` weights: 1 for every class when they are equal. A class with no
    training image gets 0 (it never appears in the loss anyway)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.tolist()


def read_labels(dataset: Dataset, label_column: str) -> np.ndarray:
    """The label column of a map-style dataset as int64 (no image decoded)."""
    parts = [np.asarray(batch[label_column], dtype=np.int64)
             for batch in dataset.select_columns([label_column]).iter(batch_size=CHUNK)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Indices drawn with replacement, each with probability proportional to 1 / (its class's count), as many per
    epoch as the dataset has examples. The draw depends only on (seed, epoch), so every process draws the same
    indices (accelerate then gives each its own batches) and a resumed run redraws its epoch exactly."""

    def __init__(self, labels: np.ndarray, counts: np.ndarray, seed: int):
        counts = np.asarray(counts, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        valid = (labels >= 0) & (labels < len(counts))
        weights = np.zeros(len(labels), dtype=np.float64)
        weights[valid] = 1.0 / counts[labels[valid]]
        self.weights = torch.from_numpy(weights)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        yield from torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist()
