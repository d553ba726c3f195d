"""Load the data: a Hub dataset or local image folders, streamed or not; find columns, splits and labels.

Returns an `ImageData` whose splits still hold raw images; `inputs.py` attaches the preprocessing lazily.
Every check here runs before any weights are loaded or any step is trained, and each error names the fix.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from functools import partial

import datasets
from datasets import ClassLabel, Dataset, IterableDataset, load_dataset
from datasets import Image as ImageFeature

from ..bundled import digits_image_folder
from ..configs import DataArguments
from ..constants import TEST_SPLIT, VALIDATION_SPLITS
from ..errors import DataError, first_line
from .folders import folder_dataset, read_folder

logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMNS = ("label", "labels")


@dataclass
class ImageData:
    train: Dataset | IterableDataset | None
    validation: Dataset | IterableDataset | None
    test: Dataset | IterableDataset | None
    image_column: str
    label_column: str
    labels: list[str]
    test_has_labels: bool = False
    test_label_map: list[int] | None = None  # a test folder's own label ids -> training label ids
    sizes: dict = field(default_factory=dict)  # split -> examples, where known (also when streaming)
    held_out: dict = field(default_factory=dict)  # split -> the share of train it was carved from
    source: str = ""
    notes: list[str] = field(default_factory=list)




def _load_raw(args: DataArguments, token: str | None, cache_dir: str | None):
    """-> (dict split -> dataset, split sizes known up front, notes to log)."""
    train_dir, validation_dir = args.train_dir, args.validation_dir
    if args.dataset_name == "bundled:digits":
        root = digits_image_folder()
        train_dir, validation_dir = str(root / "train"), str(root / "validation")
    elif args.dataset_name:
        return (*_load_hub(args, token, cache_dir), [])
    named = (("train", train_dir, "train_dir"), ("validation", validation_dir, "validation_dir"))
    splits = {split: read_folder(folder, name) for split, folder, name in named if folder}
    if "train" in splits and "validation" in splits:
        unknown = sorted(set(splits["validation"].classes) - set(splits["train"].classes))
        if unknown:
            raise DataError(
                f"`validation_dir` has class folder(s) that `train_dir` does not: {unknown} (train's classes: "
                f"{splits['train'].classes[:10]}). The model could never predict them; add them to train, rename "
                "them as train's classes, or move them out of the validation folder."
            )
    classes = sorted(set().union(*(s.classes for s in splits.values())))
    raw = {split: folder_dataset(s, classes, args.streaming) for split, s in splits.items()}
    return raw, {split: len(s.files) for split, s in splits.items()}, [n for s in splits.values() for n in s.notes]


def _load_hub(args: DataArguments, token: str | None, cache_dir: str | None):
    """A Hub (or local `datasets`-loadable) dataset -> (dict split -> dataset, split sizes from its info)."""
    try:
        raw = load_dataset(
            args.dataset_name, args.dataset_config_name, token=token, cache_dir=cache_dir, streaming=args.streaming
        )
    except (datasets.exceptions.DatasetNotFoundError, ConnectionError, FileNotFoundError, OSError, ValueError) as err:
        first = first_line(err)
        raise DataError(
            f"Dataset {args.dataset_name!r} could not be loaded ({type(err).__name__}: {first}). Check the id and "
            "the network (or HF_HUB_OFFLINE=1 with a cached copy); for gated datasets (ILSVRC/imagenet-1k) "
            "accept the terms on its Hub page, then pass `token` or run `hf auth login`."
        ) from err
    sizes = {}
    for name, split in raw.items():
        info = split.info.splits.get(name) if split.info.splits else None
        sizes[name] = info.num_examples if info is not None and info.num_examples else None
    return dict(raw), sizes


def _load_test_dir(args: DataArguments):
    """-> (test dataset, its size, notes); labeled when every image is in a class folder."""
    split = read_folder(args.test_dir, "test_dir", labeled=False)
    test = folder_dataset(split, split.classes if split.labeled else None, args.streaming)
    return test, len(split.files), split.notes


def _test_dir_labels(test, label_column: str, labels: list[str]) -> tuple[list[int] | None, str | None]:
    """A test folder's own class list -> (its label id -> the training label id) or None when unlabeled.

    Its sub-folders must be training classes (then they are scored); one unknown sub-folder (e.g. `unknown/`)
    or none at all means unlabeled images to predict.
    """
    feature = (test.features or {}).get(label_column)
    if not isinstance(feature, ClassLabel):
        return None, None
    unknown = [name for name in feature.names if name not in labels]
    if not unknown:
        return [labels.index(name) for name in feature.names], None
    if len(feature.names) == 1:
        return None, f"test_dir has one sub-folder ({feature.names[0]!r}) that is not a class: predicting, not scoring"
    raise DataError(
        f"`test_dir` has sub-folders that are not training classes: {unknown} (classes: {labels}). Rename them, "
        "or put unlabeled images directly in `test_dir` to predict them."
    )


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


def _in_band(example: dict, column: str, low: float, high: float, seed: int) -> bool:
    """Whether a (undecoded) image's hash position, in [0, 1), falls in [low, high): a hash of its path or bytes,
    so the answer is the same in every epoch, shard order, worker and process."""
    value = example[column]
    key = (value.get("path") or "").encode() or (value.get("bytes") or b"")
    # blake2b, not crc32: crc32 is linear, so paths that differ in a few digits land in clusters (31 of 60
    # "img_NN.png" were held out for a 25% share).
    digest = hashlib.blake2b(key, digest_size=8, key=str(seed).encode()).digest()
    return low * 10_000 <= int.from_bytes(digest, "big") % 10_000 < high * 10_000


def _out_of_band(example: dict, column: str, low: float, high: float, seed: int) -> bool:
    return not _in_band(example, column, low, high, seed)


def _held_out(example: dict, column: str, share: float, seed: int) -> bool:
    """Whether an image belongs to the validation part hash-split off a stream (the band [0, share))."""
    return _in_band(example, column, 0.0, share, seed)


def _split_off(train, share: float, band: tuple[float, float], part: str, field_name: str, image_column: str,
               label_column: str, seed: int):
    """Hold `share` of train out as `part`: stratified by label for map-style data; for a stream, the images
    whose hash position lies in `band` (shares of the whole stream, so a validation band [0, v) and a test band
    [1 - t, 1) never overlap whatever the shard order). Returns (rest of train, held-out part)."""
    if isinstance(train, IterableDataset):
        raw = train.cast_column(image_column, ImageFeature(decode=False))  # hashing needs no decoding
        rule = dict(column=image_column, low=band[0], high=band[1], seed=seed)
        keep = raw.filter(partial(_out_of_band, **rule)).cast_column(image_column, ImageFeature())
        held = raw.filter(partial(_in_band, **rule)).cast_column(image_column, ImageFeature())
        return keep, held
    try:
        parts = train.train_test_split(test_size=share, stratify_by_column=label_column, seed=seed)
    except ValueError as err:  # too few examples in a class to stratify
        raise DataError(
            f"Cannot split {share:.0%} of train off as {part}, stratified by label ({err}); provide a {part} split "
            f"(`{part}_dir`) or raise `{field_name}`."
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
    args: DataArguments, seed: int = 42, token: str | None = None, cache_dir: str | None = None,
    with_test: bool | None = None,
) -> ImageData:
    """Load, check and split the data named by `args`; a streamed train split is shuffled through a buffer.

    Kept whole: the splits and their known sizes change together at each step (test carved, validation carved,
    limits), and one reading order keeps the size arithmetic checkable.

    Splitting a stream per process is left to accelerate when the Trainer builds its DataLoader (by shard when
    there are enough shards, else by batch), and per DataLoader worker to `datasets` (by shard).
    """
    raw, sizes, notes = _load_raw(args, token, cache_dir)
    train = raw.get("train")
    validation = next((raw[s] for s in VALIDATION_SPLITS if s in raw), None)
    with_test = bool(args.test_dir) if with_test is None else with_test
    test = None
    if args.test_dir:
        test, sizes["test"], test_notes = _load_test_dir(args)
        notes += test_notes
    elif with_test and not args.test_split:
        test = raw.get("test")  # a Hub dataset's own test split (ImageNet's has labels -1: predicted)
    reference = train if train is not None else validation
    if reference is None:
        raise DataError(
            f"The dataset has no train or validation split (splits: {sorted(raw)}); set `train_dir`/`validation_dir`."
        )
    features = reference.features
    if features is None:
        raise DataError("The streamed dataset does not declare its features; use `streaming: false` for it.")
    image_column, label_column, labels = _resolve_columns(features, args)
    held_out = {}
    if args.test_split:  # the report's 80/10/10: a labeled test split carved from train, before validation is
        if train is None:
            raise DataError("`test_split` carves a test split from train, but the data has no train split.")
        whole = sizes.get("train")
        train, test = _split_off(train, args.test_split, (1.0 - args.test_split, 1.0), "test", "test_split",
                                 image_column, label_column, seed)
        held_out[TEST_SPLIT] = args.test_split
        notes.append(f"test_split: held out {args.test_split:.0%} of train as a labeled test split (seed {seed})")
        sizes["test"] = len(test) if isinstance(test, Dataset) else None
        if whole:
            sizes["train"] = whole - (sizes["test"] or round(whole * args.test_split))
    if train is not None and validation is None:
        # A share of the whole train split, also when a test split was carved from it first (0.1 + 0.1: 80/10/10).
        share = args.train_val_split
        of_rest = share / (1.0 - args.test_split) if args.test_split else share  # map-style: of what test left
        before = sizes.get("train")
        train, validation = _split_off(train, of_rest, (0.0, share), "validation", "train_val_split",
                                       image_column, label_column, seed)
        held_out["validation"] = share
        notes.append(f"no validation split: held out {share:.0%} of train (seed {seed})")
        if before:
            sizes["train"] = before - (len(validation) if isinstance(validation, Dataset) else round(before * of_rest))
    train = _limit(train, args.max_train_samples)
    validation = _limit(validation, args.max_eval_samples)
    test = _limit(test, args.max_predict_samples)
    test_label_map, test_has_labels = None, False
    if test is not None:
        if image_column not in test.features:
            raise DataError(f"The test split has no {image_column!r} column (columns: {sorted(test.features)}).")
        if args.test_dir:
            test_label_map, note = _test_dir_labels(test, label_column, labels)
            notes += [note] if note else []
            test_has_labels = test_label_map is not None
        elif args.test_split:
            test_has_labels = True
        else:
            test_has_labels = _test_has_labels(test, label_column)
    if isinstance(train, IterableDataset):
        train = train.shuffle(seed=seed, buffer_size=args.shuffle_buffer_size)

    def size(split_name: str, dataset, limit: int | None) -> int | None:
        known = len(dataset) if isinstance(dataset, Dataset) else sizes.get(split_name)
        return min(known, limit) if known is not None and limit is not None else known

    split_sizes = {
        "train": size("train", train, args.max_train_samples),
        "validation": size("validation", validation, args.max_eval_samples),
        "test": size("test", test, args.max_predict_samples),
    }
    if "validation" not in sizes and not isinstance(validation, Dataset):
        split_sizes["validation"] = None  # a hash-split stream: about train_val_split of train, not counted
    return ImageData(
        train=train, validation=validation, test=test, image_column=image_column, label_column=label_column,
        labels=labels, test_has_labels=test_has_labels, test_label_map=test_label_map,
        source=args.dataset_name or args.train_dir or args.validation_dir or "", notes=notes, sizes=split_sizes,
        held_out=held_out,
    )
