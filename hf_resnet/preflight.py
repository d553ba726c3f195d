"""Checks that need the loaded data and the checkpoint's config, run before any weights are built or trained.

Each failure is a `DataError` that names the field to change; cheaper checks live in `configs.py`
(`__post_init__`), `data.py` (columns, labels, folders) and `modeling.py` (reaching the checkpoint).
"""

from __future__ import annotations

from datasets import Dataset

from .data import DataError, ImageData
from .modeling import pretrained_label_map


def check_run(data: ImageData, training_args, model_args, checkpoint_config) -> None:
    if training_args.do_train and data.train is None:
        raise DataError("`do_train` is set but there is no train split; set `train_dir` (or a dataset with one) or `do_train: false`.")
    if training_args.do_eval and data.validation is None:
        raise DataError("`do_eval` is set but there is no validation split; set `validation_dir` or `do_eval: false`.")
    if training_args.do_train and isinstance(data.train, Dataset):
        global_batch = training_args.per_device_train_batch_size * training_args.world_size
        if len(data.train) < global_batch:
            raise DataError(
                f"The training set has {len(data.train)} images, fewer than one batch ({global_batch} = "
                f"per_device_train_batch_size x {training_args.world_size} processes); lower `per_device_train_batch_size`."
            )
    evaluating_only = not training_args.do_train and model_args.model_name_or_path is not None
    if evaluating_only and pretrained_label_map(checkpoint_config, data.labels) is None:
        raise DataError(
            f"Evaluation only (`do_train: false`), but the dataset's classes are not {model_args.model_name_or_path}'s, "
            "so its head would be replaced by a random one. Set `do_train: true` to fine-tune, or evaluate on data "
            "whose class names match the checkpoint's `id2label`."
        )
