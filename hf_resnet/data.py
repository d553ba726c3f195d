"""Load the data: a Hub dataset or local image folders, streamed or not; find columns, splits and labels.

Returns an `ImageData` whose splits still hold raw images; `transforms.py` attaches the preprocessing lazily.
Every check here runs before any weights are loaded or any step is trained, and each error names the fix.
"""

from __future__ import annotations

import logging
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, IterableDataset, load_dataset
from datasets import Image as ImageFeature

from .bundled import digits_image_folder, is_bundled
from .configs import DataArguments

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")
VALIDATION_SPLITS = ("validation", "valid", "val")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DataError(ValueError):
    """The data cannot be trained on as configured; the message names the field and the fix."""


@dataclass
class ImageData:
    train: Dataset | IterableDataset | None
    validation: Dataset | IterableDataset | None
    test: Dataset | IterableDataset | None
    image_column: str
    label_column: str
    labels: list[str]
    test_has_labels: bool = False
    num_train_examples: int | None = None  # known even when streaming, if the source says so
    source: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def streaming(self) -> bool:
        return isinstance(self.train if self.train is not None else self.validation, IterableDataset)


def _count_images(folder: str) -> int:
    return sum(1 for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _check_folder(path: str, name: str) -> None:
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"`{name}` {path!r} is not a folder; point it at a folder with one sub-folder per class.")
    if _count_images(path) == 0:
        raise DataError(
            f"`{name}` {path!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "put them in one sub-folder per class, e.g. train/cat/1.jpg."
        )


def _folder_files(path: str) -> str:
    return str(Path(path) / "**")


def _load_raw(args: DataArguments, token: str | None, cache_dir: str | None):
    """-> (dict split -> dataset, separate test dataset or None, split sizes known up front)."""
    train_dir, validation_dir = args.train_dir, args.validation_dir
    if is_bundled(args.dataset_name):
        if args.dataset_name != "bundled:digits":
            raise DataError(f"Unknown bundled dataset {args.dataset_name!r}; the package ships `bundled:digits`.")
        root = digits_image_folder()
        train_dir, validation_dir = str(root / "train"), str(root / "validation")
    if args.dataset_name and not is_bundled(args.dataset_name):
        try:
            raw = load_dataset(
                args.dataset_name, args.dataset_config_name, token=token, cache_dir=cache_dir, streaming=args.streaming
            )
        except datasets.exceptions.DatasetNotFoundError as err:
            raise DataError(
                f"Dataset {args.dataset_name!r} could not be found or is gated ({err}). Check the id; for gated "
                "datasets (ILSVRC/imagenet-1k) accept its terms on the Hub and pass `token` or run `hf auth login`."
            ) from err
        sizes = {}
        for name, split in raw.items():
            info = split.info.splits.get(name) if split.info.splits else None
            sizes[name] = info.num_examples if info is not None and info.num_examples else None
        return dict(raw), None, sizes
    files, sizes = {}, {}
    for split, folder, name in (("train", train_dir, "train_dir"), ("validation", validation_dir, "validation_dir")):
        if folder:
            _check_folder(folder, name)
            files[split] = _folder_files(folder)
            sizes[split] = _count_images(folder)
    test = None
    if args.test_dir:
        _check_folder(args.test_dir, "test_dir")
        test = load_dataset(
            "imagefolder", data_files={"test": _folder_files(args.test_dir)}, streaming=args.streaming, cache_dir=cache_dir
        )
        test = test["test"]
        sizes["test"] = _count_images(args.test_dir)
    # drop_labels=False: one class sub-folder is one class (then rejected below as too few), not "no labels"
    raw = (
        load_dataset("imagefolder", data_files=files, streaming=args.streaming, cache_dir=cache_dir, drop_labels=False)
        if files
        else {}
    )
    return dict(raw), test, sizes


def _pick_column(features, wanted: str | None, candidates: tuple[str, ...], kind: str, field_name: str) -> str:
    if wanted is not None:
        if wanted not in features:
            raise DataError(
                f"{kind} column {wanted!r} is not in the dataset (columns: {sorted(features)}); set `{field_name}`."
            )
        return wanted
    for name in candidates:
        if name in features:
            return name
    raise DataError(
        f"No {kind.lower()} column found (looked for {list(candidates)}; columns: {sorted(features)}); "
        f"set `{field_name}` to the right one."
    )


def _resolve_columns(features, args: DataArguments) -> tuple[str, str, list[str]]:
    image_column = _pick_column(features, args.image_column_name, IMAGE_COLUMNS, "Image", "image_column_name")
    label_column = _pick_column(features, args.label_column_name, LABEL_COLUMNS, "Label", "label_column_name")
    if not isinstance(features[image_column], ImageFeature):
        raise DataError(
            f"Column {image_column!r} holds {features[image_column]!r}, not images; set `image_column_name` to the "
            "column of type Image."
        )
    label_feature = features[label_column]
    if not isinstance(label_feature, ClassLabel):
        raise DataError(
            f"Label column {label_column!r} is {label_feature!r}, not a ClassLabel, so class names are unknown. "
            f"Set `label_column_name` to a ClassLabel column, or encode it first "
            f"(`dataset.class_encode_column({label_column!r})`) or use image folders (one sub-folder per class)."
        )
    if label_feature.num_classes < 2:
        raise DataError(
            f"Label column {label_column!r} has {label_feature.num_classes} class ({label_feature.names}); "
            "a classifier needs at least 2. Add a sub-folder per class, or check `label_column_name`."
        )
    return image_column, label_column, list(label_feature.names)


def _every_kth(_example, index: int, every: int, held_out: bool) -> bool:
    return (index % every == 0) == held_out


def _split_validation(train, args: DataArguments, label_column: str, seed: int):
    """Hold out `train_val_split` of train: stratified for map-style data, every k-th example when streaming."""
    if isinstance(train, IterableDataset):
        every = max(2, round(1 / args.train_val_split))
        keep = train.filter(partial(_every_kth, every=every, held_out=False), with_indices=True)
        held = train.filter(partial(_every_kth, every=every, held_out=True), with_indices=True)
        return keep, held
    try:
        parts = train.train_test_split(test_size=args.train_val_split, stratify_by_column=label_column, seed=seed)
    except ValueError as err:  # too few examples in a class to stratify
        raise DataError(
            f"Cannot split {args.train_val_split:.0%} of train off as validation, stratified by label ({err}); "
            "provide a validation split (`validation_dir`) or raise `train_val_split`."
        ) from err
    return parts["train"], parts["test"]


def _limit(dataset, n: int | None):
    if n is None or dataset is None:
        return dataset
    if isinstance(dataset, IterableDataset):
        return dataset.take(n)
    return dataset.select(range(min(n, len(dataset))))


def _test_has_labels(test, label_column: str) -> bool:
    if test is None or label_column not in (test.features or {}):
        return False
    if isinstance(test, IterableDataset):
        first = next(iter(test.take(1)), None)
        return first is not None and first[label_column] >= 0
    return any(v >= 0 for v in test[label_column])


def load_image_data(
    args: DataArguments, seed: int = 42, token: str | None = None, cache_dir: str | None = None
) -> ImageData:
    """Load, check and split the data named by `args`; a streamed train split is shuffled through a buffer.

    Splitting a stream per process is left to accelerate when the Trainer builds its DataLoader (by shard when
    there are enough shards, else by batch), and per DataLoader worker to `datasets` (by shard).
    """
    raw, test, sizes = _load_raw(args, token, cache_dir)
    train = raw.get("train")
    validation = next((raw[s] for s in VALIDATION_SPLITS if s in raw), None)
    if test is None and "test" in raw:
        test = raw["test"]
    reference = train if train is not None else validation
    if reference is None:
        raise DataError(f"The dataset has no train or validation split (splits: {sorted(raw)}); set `train_dir`/`validation_dir`.")
    features = reference.features
    if features is None:
        raise DataError("The streamed dataset does not declare its features; use `streaming: false` for it.")
    image_column, label_column, labels = _resolve_columns(features, args)
    notes = []
    if train is not None and validation is None:
        train, validation = _split_validation(train, args, label_column, seed)
        notes.append(f"no validation split: held out {args.train_val_split:.0%} of train (seed {seed})")
        if sizes.get("train"):
            sizes["train"] = sizes["train"] - round(sizes["train"] * args.train_val_split)
    train = _limit(train, args.max_train_samples)
    validation = _limit(validation, args.max_eval_samples)
    test = _limit(test, args.max_predict_samples)
    if test is not None and image_column not in test.features:
        raise DataError(f"The test split has no {image_column!r} column (columns: {sorted(test.features)}).")
    num_train = len(train) if isinstance(train, Dataset) else sizes.get("train")
    if num_train is not None and args.max_train_samples is not None:
        num_train = min(num_train, args.max_train_samples)
    if isinstance(train, IterableDataset):
        train = train.shuffle(seed=seed, buffer_size=args.shuffle_buffer_size)

    return ImageData(
        train=train, validation=validation, test=test, image_column=image_column, label_column=label_column,
        labels=labels, test_has_labels=_test_has_labels(test, label_column), num_train_examples=num_train,
        source=args.dataset_name or args.train_dir or args.validation_dir or "", notes=notes,
    )
