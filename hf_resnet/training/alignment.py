"""Which row of the checkpoint's head each dataset class is: the one decision behind keeping, cutting or replacing
the head, for training and for evaluation-only runs alike.

`align_classes(config, labels, class_map)` tries, for each dataset class:
1. the whole list by position, when the data's class names are the checkpoint's in its order, or both lists are
   ImageNet-1k's (the Hub's ILSVRC/imagenet-1k with microsoft/resnet-50: its two "crane"s stay two classes, however
   each spells them);
2. `class_map`, the user's word: a row index, a synset id, or a name (`{cat: 281, dog: Chihuahua}`);
3. a synset id (`n01440764`, the folders of every ImageNet copy): the checkpoint's label of that name, or, for a
   head in ImageNet's order, the synset's position in the sorted 1000;
4. a name or one comma-separated synonym of exactly one checkpoint class ("tabby" for "tabby, tabby cat"), case,
   spaces and underscores aside.

The result covers every class (else None: a new head), never puts two classes on one row, and says whether it
covers the whole head (`full`: the head is kept as it is) or some of its rows (a head cut to those rows). With a
`class_map`, every failure is a `ConfigError` naming the class and the candidates, before any weights load.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..constants import is_null, label_names
from ..data.imagenet import imagenet_classes, imagenet_synsets, is_imagenet_head, is_synset
from ..errors import ConfigError, first_line


@dataclass
class Alignment:
    """Dataset class id -> checkpoint row, and how each was found."""

    rows: list[int]
    how: list[str]  # per class: "position", "class_map", "synset" or "name"
    head_size: int  # the checkpoint's number of classes

    @classmethod
    def whole(cls, size: int) -> Alignment:
        """The head as it is: class i is row i."""
        return cls(list(range(size)), ["position"] * size, size)

    @property
    def full(self) -> bool:
        """The rows are all of the head's (in any order): the head is kept whole."""
        return sorted(self.rows) == list(range(self.head_size))

    def describe(self) -> str:
        counts = {how: self.how.count(how) for how in dict.fromkeys(self.how)}
        by = ", ".join(f"{n} by {how}" for how, n in counts.items())
        scope = "all of its" if self.full else f"{len(self.rows)} of its"
        return f"the data's {len(self.rows)} classes are {scope} {self.head_size} classes ({by})"


def _normalise(name) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def _keys(name) -> set[str]:
    """A label's whole name and each of its comma-separated synonyms, normalised."""
    return {_normalise(name), *(_normalise(part) for part in str(name).split(",") if part.strip())}


class _Head:
    """The checkpoint's classes, indexed for lookups by name, synonym and synset."""

    def __init__(self, config):
        self.names = label_names(config, missing_as_index=False)
        self.imagenet = is_imagenet_head(self.names)
        self.by_key: dict[str, list[int]] = {}
        for row, name in enumerate(self.names):
            for key in _keys(name) if name is not None else ():
                self.by_key.setdefault(key, []).append(row)

    def describe_row(self, row: int) -> str:
        synset = f" {imagenet_synsets()[row]}" if self.imagenet else ""
        return f"{row}{synset} ({self.names[row]!r})"

    def by_synset(self, synset: str) -> int | None:
        exact = [row for row, name in enumerate(self.names) if name == synset]
        if len(exact) == 1:
            return exact[0]
        return imagenet_synsets().index(synset) if self.imagenet and synset in imagenet_synsets() else None

    def by_name(self, name) -> list[int]:
        return sorted({row for key in _keys(name) for row in self.by_key.get(key, ())})


def _from_class_map(head: _Head, label: str, target) -> int:
    """The row `class_map` names for `label`, or a ConfigError naming the candidates."""
    if isinstance(target, bool):
        raise ConfigError(f"class_map: {label!r} -> {target!r} is not a row, a synset id or a class name.")
    if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
        row = int(target)
        if not 0 <= row < len(head.names):
            raise ConfigError(f"class_map: {label!r} -> row {row}, but the checkpoint has rows "
                              f"0..{len(head.names) - 1}.")
        return row
    if is_synset(target):
        row = head.by_synset(target)
        if row is None:
            raise ConfigError(f"class_map: {label!r} -> {target!r}, a synset id, but the checkpoint's head is not in "
                              "ImageNet-1k's order and no class is named so; map it by row index or name.")
        return row
    rows = head.by_name(target)
    if len(rows) == 1:
        return rows[0]
    if rows:
        raise ConfigError(f"class_map: {label!r} -> {target!r} names {len(rows)} checkpoint classes: "
                          f"{'; '.join(head.describe_row(r) for r in rows)}; map it by row index or synset id.")
    close = difflib.get_close_matches(_normalise(target), sorted(head.by_key), n=3)
    hint = f" Close: {close}." if close else ""
    raise ConfigError(f"class_map: {label!r} -> {target!r} is not a class of the checkpoint.{hint} Map it by row "
                      "index, synset id or one of its names.")


def _automatic(head: _Head, label: str) -> tuple[int | None, str]:
    if is_synset(label) and (row := head.by_synset(label)) is not None:
        return row, "synset"
    rows = head.by_name(label)
    return (rows[0], "name") if len(rows) == 1 else (None, "")


def align_classes(config, labels: list[str], class_map: dict | None = None) -> Alignment | None:
    """The checkpoint row of each of `labels` (the data's classes, in label-id order), or None when some class has
    none (a new head). With `class_map`, a class it cannot place is a ConfigError instead."""
    head = _Head(config)
    if any(name is None for name in head.names):
        if class_map:
            raise ConfigError("class_map is set, but the checkpoint's config has no class names (id2label).")
        return None
    size = len(head.names)
    same = [_normalise(n) for n in head.names] == [_normalise(label) for label in labels]
    if len(labels) == size and (same or head.imagenet and is_imagenet_head(labels)):
        return Alignment.whole(size)
    class_map = class_map or {}
    unknown = sorted(set(class_map) - set(labels))
    if unknown:
        raise ConfigError(f"class_map names {unknown}, which are not classes of the data (its classes: "
                          f"{labels[:10]}{' ...' if len(labels) > 10 else ''}).")
    rows, how = [], []
    for label in labels:
        if label in class_map:
            row, found = _from_class_map(head, label, class_map[label]), "class_map"
        else:
            row, found = _automatic(head, label)
        if row is None:
            if class_map:
                raise ConfigError(f"class_map: the data's class {label!r} is not in it and matches no single class "
                                  f"of the checkpoint (candidates: {_candidates(head, label)}); add it to class_map.")
            return None
        rows.append(row)
        how.append(found)
    shared = {row: [label for label, r in zip(labels, rows) if r == row] for row in rows if rows.count(row) > 1}
    if shared:
        if class_map:
            row, names = next(iter(shared.items()))
            raise ConfigError(f"class_map puts {names} on one checkpoint class, {head.describe_row(row)}; each class "
                              "needs its own row.")
        return None
    return Alignment(rows, how, size)


def _candidates(head: _Head, label: str) -> str:
    rows = head.by_name(label)
    if rows:
        return "; ".join(head.describe_row(r) for r in rows[:5])
    close = difflib.get_close_matches(_normalise(label), sorted(head.by_key), n=3)
    return ", ".join(close) if close else "none"


def row_names(config, rows: list[int]) -> list[str]:
    """The checkpoint's names for `rows`, each made unique (ImageNet's two "crane"s get their synset ids)."""
    head = _Head(config)
    names = [str(head.names[row]) for row in rows]
    synsets = [s for s, _ in imagenet_classes()] if head.imagenet else None
    return [
        f"{name} ({synsets[row] if synsets else f'row {row}'})" if names.count(name) > 1 else name
        for name, row in zip(names, rows)
    ]


def read_class_map(value) -> dict | None:
    """`class_map` as given (a mapping, inline YAML/JSON, or a .yaml/.json file) -> {dataset class: row index,
    synset id or name}; a ConfigError names what is wrong with it."""
    if value is None or value == {} or is_null(value):
        return None
    if isinstance(value, str):
        path = Path(value).expanduser()
        looks_like_file = value.strip().endswith((".yaml", ".yml", ".json")) and "{" not in value
        if looks_like_file and not path.is_file():
            raise ConfigError(f"class_map file {value!r} does not exist; give a .yaml/.json file or inline YAML "
                              "such as '{cat: 281, dog: Chihuahua}'.")
        text = path.read_text(encoding="utf-8") if looks_like_file else value
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"class_map is not valid YAML/JSON ({first_line(err)}); write it as "
                              "'{cat: 281, dog: Chihuahua}'.") from err
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"class_map must map each dataset class to a checkpoint class ({{cat: 281, dog: "
                          f"Chihuahua}}), not {type(value).__name__} {str(value)[:60]!r}.")
    bad = [f"{k!r}: {v!r}" for k, v in value.items() if isinstance(v, bool) or not isinstance(v, (int, str))]
    if bad:
        raise ConfigError(f"class_map values are row indices, synset ids or names; not {', '.join(bad[:3])}.")
    return {str(key): value for key, value in value.items()}
