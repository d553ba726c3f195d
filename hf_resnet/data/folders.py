"""Image folders on disk: which files count as images, how a folder's classes are read, and the dataset made of
them.

One rule decides which files exist, for training, prediction and the audit alike: a file counts when its
extension is an image extension (any case) and no part of its path below the folder is hidden (`.DS_Store`,
`._x.jpg`, `.git/`) or a special `__name__` directory (`__MACOSX/`): the files `datasets`' imagefolder skips.
Symbolic links are followed (a linked folder once, however many links point at it).

Classes are read as torchvision's `ImageFolder` reads them: each top-level sub-folder is a class, and images in
folders nested inside it (`bees/nested/x.jpg`) belong to it. A class folder without images is left out, and said
so. The split becomes a `datasets.Dataset` of paths and labels (images are decoded later, per example, in the
DataLoader workers), or an `IterableDataset` of it when streaming.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature

from ..constants import IMAGE_EXTENSIONS
from ..errors import DataError
from .imagenet import kaggle_labels

SPLIT_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}
MAX_STREAM_SHARDS = 1024  # a streamed folder is read in this many shards at most (split over workers, processes)


def is_ignored_folder(name: str) -> bool:
    """A hidden (`.git`) or special (`__MACOSX`) folder name: nothing inside it counts."""
    return name.startswith((".", "__"))


def is_ignored(relative: Path) -> bool:
    """Hidden, or inside an ignored folder: what `datasets` leaves out of an image folder."""
    return relative.name.startswith(".") or any(is_ignored_folder(part) for part in relative.parts[:-1])


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def walk(folder: str | Path) -> list[tuple[Path, bool]]:
    """Every file under `folder` that is not ignored, sorted, each with whether it is an image file."""
    root, files, seen = Path(folder), [], set()
    for directory, subdirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(directory)
        if real in seen:  # a link back up the tree, or two links to one folder: read it once
            subdirs[:] = []
            continue
        seen.add(real)
        subdirs[:] = [d for d in subdirs if not is_ignored_folder(d)]
        for name in names:
            path = Path(directory, name)
            if not name.startswith(".") and path.is_file():
                files.append((path, is_image_file(path)))
    return sorted(files)


def list_images(folder: str | Path) -> list[Path]:
    """The image files under `folder` (recursively), sorted, by the rule above."""
    return [path for path, image in walk(folder) if image]


def class_folders(folder: str | Path) -> list[str]:
    """The names of `folder`'s top-level sub-folders that are not ignored (its classes, when labeled)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and not is_ignored_folder(p.name))


@dataclass
class FolderSplit:
    """One split read from a folder: its images, the class of each (None when unlabeled), and what to tell."""

    files: list[Path]
    labels: list[str | None]
    classes: list[str]  # classes with at least one image
    notes: list[str] = field(default_factory=list)

    @property
    def labeled(self) -> bool:
        return bool(self.files) and all(label is not None for label in self.labels)


def read_folder(path: str, name: str, labeled: bool = True) -> FolderSplit:
    """Read `name` (`train_dir`, `validation_dir`, `test_dir`) as ImageFolder does. A labeled split must have
    every image inside a class folder; a training split needs at least 2 classes. A test folder is labeled when
    every image is inside a class folder, else all of it is unlabeled. A flat folder of Kaggle's ILSVRC layout
    (`.../CLS-LOC/val/*.JPEG` with `LOC_val_solution.csv` above it) is labeled by that CSV, each image by its
    synset."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"`{name}` {path!r} is not a folder; point it at a folder with one sub-folder per class.")
    files = list_images(folder)
    if not files:
        raise DataError(
            f"`{name}` {path!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "put them in one sub-folder per class, e.g. train/cat/1.jpg."
        )
    parts = [f.relative_to(folder).parts for f in files]
    loose = [f for f, p in zip(files, parts) if len(p) == 1]
    if len(loose) == len(files) and (by_csv := kaggle_labels(folder, files)) is not None:
        labels, note = by_csv
        return FolderSplit(files, labels, sorted(set(labels)), [note])
    if labeled and loose:
        raise DataError(
            f"`{name}` {path!r} has {len(loose)} image(s) outside any class sub-folder (e.g. "
            f"{loose[0].relative_to(folder)}); put each image in <{name}>/<class>/."
        )
    in_classes = not loose
    labels = [p[0] if in_classes else None for p in parts]
    classes = sorted({label for label in labels if label is not None})
    notes = [f"`{name}`: reading {len(files):,} local image files"]
    nested = sum(1 for p in parts if len(p) > 2)
    if nested and in_classes:
        notes.append(f"`{name}`: {nested:,} image(s) are in folders nested inside a class folder; each counts "
                     "for its top-level class folder (as torchvision's ImageFolder does)")
    empty = [c for c in class_folders(folder) if c not in classes] if in_classes else []
    notes += [f"`{name}`: class folder {c!r} holds no images: the class is left out" for c in empty]
    split_named = [c for c in classes if c.lower() in SPLIT_NAMES]
    if name == "train_dir" and len(split_named) >= 2:
        train = next((c for c in split_named if c.lower().startswith("train")), split_named[0])
        others = [c for c in split_named if c != train]
        held = next((c for c in others if c.lower().startswith("val")), others[0])
        root = path.rstrip("/")
        raise DataError(f"`train_dir` {path!r} holds {split_named}: split folders, not classes (a classifier of "
                        f"{' against '.join(split_named)} would train). Pass --train_dir {root}/{train} "
                        f"--validation_dir {root}/{held}.")
    if name == "train_dir" and len(classes) < 2:
        raise DataError(
            f"`train_dir` {path!r} has {len(classes)} class sub-folder with images ({classes}); a classifier needs "
            "at least 2 classes: add a sub-folder per class."
        )
    return FolderSplit(files, labels, classes, notes)


def folder_dataset(split: FolderSplit, classes: list[str] | None, streaming: bool):
    """The split as a dataset with an `image` column (paths, decoded later) and, when `classes` is given, a
    ClassLabel `label` column; an `IterableDataset` in shards when streaming."""
    columns = {"image": [str(f) for f in split.files]}
    features = {"image": ImageFeature()}
    if classes is not None:
        columns["label"] = [classes.index(label) for label in split.labels]
        features["label"] = ClassLabel(names=classes)
    dataset = Dataset.from_dict(columns, features=Features(features))
    if streaming:
        return dataset.to_iterable_dataset(num_shards=min(len(dataset), MAX_STREAM_SHARDS))
    return dataset
