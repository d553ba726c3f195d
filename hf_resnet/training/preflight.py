"""Checks that need the loaded data and the checkpoint's config, run before any weights are built or trained.

Each failure is a `DataError` that names the field to change; cheaper checks live in `configs.py`
(`__post_init__`), `data/loading.py` (columns, labels, folders) and `modeling.py` (reaching the checkpoint).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from datasets import Dataset

from ..data.loading import ImageData
from ..errors import ConfigError, DataError
from .alignment import align_classes

MIN_FREE_BYTES = 2 * 2**30  # room for a few ResNet-50 checkpoints (~300 MB each with optimizer state)


def check_output_dir(output_dir: str, min_free: int = MIN_FREE_BYTES) -> None:
    """Writable and with room for checkpoints: found out now, not at the first save hours later."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ConfigError(f"`output_dir` {output_dir!r} is not writable ({err.strerror or err}); choose another "
                          "folder or fix its permissions.") from err
    free = shutil.disk_usage(path).free
    if free < min_free:
        raise ConfigError(
            f"Only {free / 2**30:.1f} GiB free under `output_dir` {output_dir!r}; checkpoints need about "
            f"{min_free / 2**30:.0f} GiB. Free some space or choose another folder (HF_RESNET_MIN_FREE_GB sets "
            "this threshold, for small models)."
        )


def check_label_values(dataset, label_column: str, num_labels: int, split: str) -> None:
    """Every label a class id (or -1 for unlabeled); a map-style column is read without decoding images."""
    if not isinstance(dataset, Dataset) or label_column not in dataset.column_names:
        return
    values = np.asarray(dataset.select_columns([label_column])[:][label_column])  # labels only: no image decoded
    if len(values) and (values.max() >= num_labels or values.min() < -1):
        raise DataError(
            f"The {split} split has labels outside 0..{num_labels - 1} (min {values.min()}, max {values.max()}) in "
            f"`{label_column}`; fix the data or set `label_column_name` to the right column."
        )


def check_run(data: ImageData, training_args, model_args, config, alignment) -> None:
    """Everything that can be known wrong before weights are built; `alignment`: the checkpoint's row of each
    dataset class (`alignment.align_classes`), None when some class has none."""
    if training_args.should_save:
        min_free = float(os.environ.get("HF_RESNET_MIN_FREE_GB", MIN_FREE_BYTES / 2**30)) * 2**30
        check_output_dir(training_args.output_dir, int(min_free))
    for split in ("train", "validation"):
        check_label_values(getattr(data, split), data.label_column, len(data.labels), split)
    if training_args.do_train and data.train is None:
        raise DataError(
            "`do_train` is set but there is no train split; set `train_dir` (or a dataset with one) or "
            "`do_train: false`."
        )
    if training_args.do_eval and data.validation is None:
        raise DataError("`do_eval` is set but there is no validation split; set `validation_dir` or `do_eval: false`.")
    if training_args.do_train and isinstance(data.train, Dataset):
        global_batch = training_args.per_device_train_batch_size * training_args.world_size
        if len(data.train) < global_batch:
            raise DataError(
                f"The training set has {len(data.train)} images, fewer than one batch ({global_batch} = "
                f"per_device_train_batch_size x {training_args.world_size} processes); lower "
                "`per_device_train_batch_size`."
            )
    evaluating_only = not training_args.do_train and model_args.model_name_or_path is not None
    if evaluating_only and alignment is None:
        raise DataError(_not_the_checkpoints_classes(data.labels, config, model_args.model_name_or_path))


def _not_the_checkpoints_classes(labels: list[str], config, model: str) -> str:
    """Which of the data's classes the checkpoint does not have, and the ways on."""
    unmatched = [label for label in labels if align_classes(config, [label]) is None]
    which = f"{len(unmatched)} of the data's {len(labels)} classes match no single class of {model} " \
        f"({', '.join(map(repr, unmatched[:5]))}{' ...' if len(unmatched) > 5 else ''})" if unmatched else \
        f"two of the data's classes match one class of {model}"
    return (f"Evaluation only (`do_train: false`), but {which}, so its head cannot score them. Map them with "
            "`class_map` ({folder: row index, synset id or name}), name the folders by synset id (n01440764) or "
            "as the checkpoint's `id2label` does, or set `do_train: true` to fine-tune a new head.")
