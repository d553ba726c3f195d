"""Names, numbers and one-line helpers shared across the package: one definition each, imported from here."""

from __future__ import annotations

# Image files that training, prediction and the audit read (compared lower-case: `.JPG` and `.JPEG` count).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Split names: a dataset's (or a folder's) validation split is the first of these it has.
TRAIN_SPLIT, TEST_SPLIT = "train", "test"
VALIDATION_SPLITS = ("validation", "valid", "val")

# The label of an example whose image could not be decoded: ignored by the loss (torch's CrossEntropyLoss
# default ignore_index) and by the metrics.
IGNORE_INDEX = -100

# Images with more pixels than this are refused before decoding: Pillow's own warning threshold (~0.36 GB as RGBA).
DEFAULT_MAX_PIXELS = 89_478_485

# `bundled:<name>` names a dataset, config or processor shipped inside the package (see bundled.py).
BUNDLED_PREFIX = "bundled:"

# Top-k class ids kept per evaluated example (metrics, predictions): O(examples x TOP_K) memory, not x classes.
TOP_K = 5
TTA_MODES = ("none", "flip", "five_crop", "augment")  # test-time augmentation (data/tta.py)

# The folder under output_dir that holds the evaluation reports (one sub-folder per split) and their pictures.
REPORT_DIR = "report"

# `lr_scheduler_type: one_cycle`: our schedule (trainer.create_scheduler, torch's OneCycleLR), not a transformers one.
ONE_CYCLE = "one_cycle"


# What a recipe or flag writes for "no value" (`--dataset_name null`, `--model_name_or_path none`).
NULLS = ("null", "none", "~", "")


def is_null(value) -> bool:
    return isinstance(value, str) and value.strip().lower() in NULLS


def label_names(config, missing_as_index: bool = True) -> list:
    """A model config's class names in head order (`id2label` keys are ints, or strings when read from JSON); a
    row without a name is its index as text, or None with `missing_as_index=False`."""
    names = [config.id2label.get(i, config.id2label.get(str(i))) for i in range(config.num_labels)]
    return [str(i) if name is None and missing_as_index else name for i, name in enumerate(names)]


def value_of(setting):
    """An enum's value (the Trainer's strategies and scheduler types are enums once parsed), or the setting."""
    return getattr(setting, "value", setting)
