"""ImageNet as people hold it: the 1000 ILSVRC-2012 synset ids, and Kaggle's flat folders labelled by a CSV.

- `imagenet_classes()`: the 1000 synset ids in sorted order with their names, shipped in
  `assets/imagenet/LOC_synset_mapping.txt`. Position i is the class index of microsoft/resnet-50's head and of every
  torchvision/timm ImageNet head. Synset ids are the key that aligns ImageNet: two classes are called "crane" and
  two "maillot", so names alone cannot.
- `is_imagenet_head(names)`: whether a checkpoint's label list is that order (by full name, first synonym, or the
  synset ids themselves), so a class folder named `n01440764` maps to row 0 whatever `id2label` calls it.
- `kaggle_labels(folder, files)`: Kaggle's ILSVRC download (`ILSVRC/Data/CLS-LOC/val/*.JPEG`, flat) labels its val
  images in `LOC_val_solution.csv` (`ImageId,PredictionString`, the first synset of the string is the class) a few
  folders up, beside `LOC_synset_mapping.txt`. Every image must have a row and every synset must be known:
  nothing is silently unlabeled.
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

from ..errors import DataError

ASSET = Path(__file__).resolve().parents[1] / "assets" / "imagenet" / "LOC_synset_mapping.txt"
MAPPING_FILE = "LOC_synset_mapping.txt"
SYNSET = re.compile(r"^n\d{8}$")
LEVELS_UP = 4  # ILSVRC/Data/CLS-LOC/val -> the download's root, where Kaggle's CSVs lie
MIN_POSITIONS = 0.99  # share of the 1000 positions whose name must agree for a head to be ImageNet's order


def is_synset(name) -> bool:
    return isinstance(name, str) and SYNSET.match(name) is not None


def read_synset_mapping(path: str | Path) -> list[tuple[str, str]]:
    """`<synset> <names>` lines -> [(synset, names)] in file order; a line that is not one is a DataError."""
    entries = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        synset, _, names = line.strip().partition(" ")
        if not is_synset(synset):
            raise DataError(f"{path}:{number} is not `<synset id> <names>` (e.g. `n01440764 tench, Tinca tinca`): "
                            f"{line[:60]!r}")
        entries.append((synset, names.strip()))
    return entries


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ILSVRC-2012 classes, (synset, names), in the order of an ImageNet head."""
    return tuple(read_synset_mapping(ASSET))


def imagenet_synsets() -> list[str]:
    return [synset for synset, _ in imagenet_classes()]


def _normalise(name) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def _first(name) -> str:
    return _normalise(str(name).split(",")[0])


def is_imagenet_head(names: list) -> bool:
    """Whether `names` (a checkpoint's labels by id) are the 1000 ImageNet classes in their order: at least 99% of
    positions agree by synset id, full name or first synonym ("tench" for "tench, Tinca tinca")."""
    classes = imagenet_classes()
    if len(names) != len(classes) or any(n is None for n in names):
        return False
    agree = sum(
        _normalise(name) in (synset, _normalise(full)) or _first(name) == _first(full)
        for name, (synset, full) in zip(names, classes)
    )
    return agree >= MIN_POSITIONS * len(classes)


def find_upwards(folder: Path, name: str, levels: int = LEVELS_UP) -> Path | None:
    """`name` in `folder` or in one of the `levels` folders above it, nearest first."""
    for place in [folder, *folder.resolve().parents][: levels + 1]:
        if (place / name).is_file():
            return place / name
    return None


def _known_synsets(folder: Path) -> tuple[set[str], str]:
    """The synsets a CSV may name: those of a `LOC_synset_mapping.txt` beside the data, else the shipped 1000."""
    mapping = find_upwards(folder, MAPPING_FILE)
    if mapping is not None:
        return {synset for synset, _ in read_synset_mapping(mapping)}, str(mapping)
    return set(imagenet_synsets()), "the 1000 ILSVRC-2012 classes"


def kaggle_labels(folder: Path, files: list[Path]) -> tuple[list[str], str] | None:
    """Each flat image's synset from Kaggle's `LOC_<folder name>_solution.csv` (in `folder` or up to 4 folders
    above it), and a note saying where they came from; None when there is no such CSV. Kept to Kaggle's columns:
    `ImageId` (the file name without extension) and `PredictionString` (its first word is the synset)."""
    solution = find_upwards(folder, f"LOC_{folder.name}_solution.csv")
    if solution is None:
        return None
    with open(solution, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise DataError(f"{solution} has columns {reader.fieldnames}, not Kaggle's `ImageId,PredictionString`; "
                            "fix the file or put the images in one sub-folder per class.")
        table = {row["ImageId"]: (row["PredictionString"] or "").split()[:1] for row in reader}
    known, source = _known_synsets(folder)
    unknown = sorted({words[0] for words in table.values() if words and words[0] not in known})
    if unknown:
        raise DataError(f"{solution} names {len(unknown)} synset(s) not in {source}: {unknown[:5]}; fix the CSV "
                        f"or the mapping file.")
    labels = [(table.get(path.stem) or [None])[0] for path in files]
    missing = [path for path, label in zip(files, labels) if label is None]
    if missing:
        raise DataError(f"{len(missing):,} of {len(files):,} images in {str(folder)!r} have no label in {solution} "
                        f"(e.g. {missing[0].name}); add their rows, or move the unlabeled images out of the folder.")
    note = f"{str(folder)!r}: {len(files):,} flat images labelled by {solution} (Kaggle's ILSVRC layout)"
    return labels, note
