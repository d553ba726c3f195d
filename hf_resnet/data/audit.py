"""Audit image folders before training: what a run would find out the slow way, found in one pass over the files.

`audit_folder(path)` reads a folder of split sub-folders (`train/`, `validation/`|`val/`|`valid/`, `test/`, each with
one sub-folder per class) or a single class-folder tree (audited as the split "train") and returns a JSON-ready
dict: per split the class counts and imbalance, undecodable files (decoded with `images.decode_image`, the same code
training uses), image modes, sizes and extreme aspect ratios; exact duplicates (sha256 of the bytes) within and
across splits; classes missing from train. `format_report(report)` renders it as plain-text tables.
"""

from __future__ import annotations

import hashlib
import statistics
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from ..constants import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, VALIDATION_SPLITS
from ..errors import HfResnetError
from .folders import is_ignored, is_ignored_folder, walk
from .images import ImageDecodeError, decode_image, stored_mode

EXTREME_ASPECT = 10.0  # longer side / shorter side
PROGRESS_MIN_FILES = 500  # show a progress bar from this many image files on


class AuditError(HfResnetError, ValueError):
    """The folder cannot be audited (missing, not a folder, no images); the message names the fix."""


def _find_splits(root: Path) -> tuple[dict[str, Path], list[str]]:
    """-> (split name -> folder, names of other sub-folders ignored); a bare class tree is the split "train"."""
    validation_names = VALIDATION_SPLITS
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not is_ignored_folder(p.name))
    splits = {p.name: p for p in folders if p.name in ("train", *validation_names, "test")}
    if "train" not in splits and not any(name in splits for name in validation_names):
        return {"train": root}, []
    return splits, [p.name for p in folders if p.name not in splits]


def _scan(root: Path, splits: dict[str, Path]) -> tuple[list[tuple[str, str | None, Path]], Counter, Counter]:
    """-> ([(split, class or None, file)], non-image files per split, ignored (hidden) files per split).

    Files count by `folders`' one rule, the one training uses: what it ignores, the audit counts as hidden.
    """
    files, non_image, hidden = [], Counter(), Counter()
    for split, folder in splits.items():
        hidden[split] = sum(
            1 for path in folder.rglob("*") if path.is_file() and is_ignored(path.relative_to(folder))
        )
        for path, image in walk(folder):
            if image:
                rel = path.relative_to(folder)
                files.append((split, rel.parts[0] if len(rel.parts) > 1 else None, path))
            else:
                non_image[split] += 1
    return files, non_image, hidden


def _inspect(path: Path, max_pixels: int | None) -> tuple[str, dict]:
    """-> (sha256, {"mode", "size"} or {"reason"}) for one file; decodability is decided by `decode_image`."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        with warnings.catch_warnings():  # Pillow's palette/EXIF warnings: the audit reports what matters itself
            warnings.simplefilter("ignore")
            picture = decode_image({"bytes": data, "path": str(path)}, max_pixels)
            mode = stored_mode(data)
    except ImageDecodeError as err:
        return digest, {"reason": str(err)}
    return digest, {"mode": mode, "size": picture.size}


def _stats(values: list[int]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _split_report(split: str, folder: Path, root: Path, entries: list, non_image: int, hidden: int) -> dict:
    """entries: [(class or None, file, info)] of one split."""
    class_folders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not is_ignored_folder(p.name))
    classes = dict.fromkeys(class_folders, 0)
    undecodable, modes, sizes, extreme, unlabeled, nested, not_rgb = [], Counter(), [], [], 0, [], []
    for label, path, info in entries:
        name = path.relative_to(root).as_posix()
        if label is None:
            unlabeled += 1
        if len(path.relative_to(folder).parts) > 2:  # class/sub/x.jpg: an image folder would label it "sub"
            nested.append(name)
        if "reason" in info:
            undecodable.append({"file": name, "reason": info["reason"]})
            continue
        if label is not None:
            classes[label] += 1
        modes[info["mode"]] += 1
        if info["mode"] != "RGB" and len(not_rgb) < 100:  # converted when read; a palette GIF may be a placeholder
            not_rgb.append({"file": name, "mode": info["mode"], "size": list(info["size"])})
        width, height = info["size"]
        sizes.append((width, height))
        if max(width, height) > EXTREME_ASPECT * min(width, height):
            extreme.append({"file": name, "size": [width, height]})
    counts = list(classes.values())
    return {
        "folder": folder.relative_to(root).as_posix() if folder != root else ".",
        "image_files": len(entries),
        "decodable": len(entries) - len(undecodable),
        "classes": classes,
        "imbalance_ratio": round(max(counts) / min(counts), 2) if counts and min(counts) > 0 else None,
        "small_classes": sorted(name for name, n in classes.items() if n < 2),
        "unlabeled": unlabeled,
        "nested": nested,
        "undecodable": undecodable,
        "modes": dict(modes.most_common()),
        "not_rgb": not_rgb,
        "width": _stats([w for w, _ in sizes]),
        "height": _stats([h for _, h in sizes]),
        "extreme_aspect": extreme,
        "non_image_files": non_image,
        "hidden_files": hidden,
    }


def _duplicates(hashes: dict[str, list[tuple[str, str]]]) -> tuple[list, list]:
    """sha256 -> [(split, file)] -> (groups within one split, groups spanning splits)."""
    within, across = [], []
    for digest, found in sorted(hashes.items(), key=lambda item: item[1]):
        if len(found) > 1:
            splits = sorted({split for split, _ in found})
            group = {"sha256": digest, "splits": splits, "files": [name for _, name in found]}
            (across if len(splits) > 1 else within).append(group)
    return within, across


def _problems_and_warnings(report: dict) -> tuple[list[str], list[str]]:
    problems, warns, splits = [], [], report["splits"]
    train = set(splits["train"]["classes"]) if "train" in splits else None
    for split, info in splits.items():
        if info["undecodable"]:
            problems.append(f"{split}: {len(info['undecodable'])} undecodable file(s)")
        if info["small_classes"]:
            problems.append(f"{split}: class(es) with fewer than 2 images: {', '.join(info['small_classes'])}")
        if split != "train" and train is not None:
            missing = sorted(set(info["classes"]) - train)
            if split == "test" and len(info["classes"]) == 1 and missing:  # test/unknown/: unlabeled, as in loading.py
                missing = []
            info["missing_from_train"] = missing
            if info["missing_from_train"]:
                problems.append(f"{split}: class(es) missing from train: {', '.join(info['missing_from_train'])}")
        if info["nested"]:
            problems.append(f"{split}: {len(info['nested'])} image(s) below a class sub-folder (e.g. "
                            f"{info['nested'][0]}); training needs <split>/<class>/<image>")
        if info["unlabeled"] and info["classes"] and split != "test":
            problems.append(f"{split}: {info['unlabeled']} file(s) directly in the split folder, outside any class; "
                            "training refuses them: move them into class sub-folders")
        elif info["unlabeled"] and info["classes"]:
            label = Path(report["data"], info["folder"]).name
            warns.append(f"{split}: {info['unlabeled']} file(s) directly in the split folder, outside any class "
                         f"(an image folder would label them {label!r}); move them")
        if info["extreme_aspect"]:
            warns.append(
                f"{split}: {len(info['extreme_aspect'])} image(s) with aspect ratio over {EXTREME_ASPECT:g}:1"
            )
    if train is not None and len(train) < 2:
        problems.append(f"train: {len(train)} class(es); a classifier needs at least 2 class sub-folders")
    if train is None:
        warns.append("no train split: only evaluation splits were audited")
    for group in report["duplicates"]["across_splits"]:
        problems.append(f"same file in {' and '.join(group['splits'])}: {', '.join(group['files'])}")
    if report["duplicates"]["within_splits"]:
        warns.append(f"{len(report['duplicates']['within_splits'])} group(s) of duplicate files within a split")
    if report["ignored_folders"]:
        warns.append(f"folders that are not splits were ignored: {', '.join(report['ignored_folders'])}")
    return problems, warns


def audit_folder(path, max_pixels: int | None = DEFAULT_MAX_PIXELS, progress: bool = False) -> dict:
    """Audit an image-folder dataset; returns the report (JSON-ready). Raises AuditError for unusable input."""
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise AuditError(f"{str(path)!r} does not exist; pass the dataset folder (with train/ and val/ inside).")
    if not root.is_dir():
        raise AuditError(
            f"{str(path)!r} is not a folder; pass the folder that holds train/ and val/ (or the classes)."
        )
    splits, ignored = _find_splits(root)
    files, non_image, hidden = _scan(root, splits)
    if not files:
        raise AuditError(f"{str(path)!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); put them in one "
                         "sub-folder per class, e.g. train/cat/1.jpg.")
    entries, hashes = defaultdict(list), defaultdict(list)
    bar = tqdm(files, desc="audit", unit="file", disable=not progress or len(files) < PROGRESS_MIN_FILES)
    for split, label, file in bar:
        digest, info = _inspect(file, max_pixels)
        entries[split].append((label, file, info))
        hashes[digest].append((split, file.relative_to(root).as_posix()))
    within, across = _duplicates(hashes)
    report = {
        "data": str(root),
        "layout": "splits" if splits.get("train") != root else "class folders (audited as train)",
        "max_image_pixels": max_pixels,
        "splits": {
            split: _split_report(split, folder, root, entries[split], non_image[split], hidden[split])
            for split, folder in splits.items()
        },
        "duplicates": {"within_splits": within, "across_splits": across},
        "ignored_folders": ignored,
        "non_image_files": sum(non_image.values()),
    }
    report["problems"], report["warnings"] = _problems_and_warnings(report)
    report["ok"] = not report["problems"]
    return report


def _table(headers: list[str], rows: list[list], align: str) -> list[str]:
    """Plain-text table; align holds one "l" or "r" per column."""
    cells = [[str(cell) for cell in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    pad = {"l": str.ljust, "r": str.rjust}
    return ["  ".join(pad[a](c, w) for c, w, a in zip(row, widths, align)).rstrip() for row in cells]


def _listing(title: str, lines: list[str], limit: int = 10) -> list[str]:
    if not lines:
        return []
    more = [f"  ... and {len(lines) - limit} more (see the JSON report)"] if len(lines) > limit else []
    return ["", f"{title} ({len(lines)}):", *(f"  {line}" for line in lines[:limit]), *more]


def _num(value) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def format_report(report: dict) -> str:
    """The audit as readable plain text: splits, classes, sizes, then every finding and the verdict."""
    splits = report["splits"]
    out = [f"Audit of {report['data']} ({report['layout']})", ""]
    out += _table(["split", "folder", "images", "undecodable", "classes", "imbalance", "unlabeled", "non-image",
                   "modes"], [[name, s["folder"], s["image_files"], len(s["undecodable"]), len(s["classes"]),
                               _num(s["imbalance_ratio"]), s["unlabeled"], s["non_image_files"],
                               ", ".join(f"{m} {n}" for m, n in s["modes"].items()) or "-"]
                              for name, s in splits.items()], "llrrrrrrl")
    classes = sorted({c for s in splits.values() for c in s["classes"]})
    if classes:
        out += [""] + _table(["class", *splits], [[c, *(s["classes"].get(c, "-") for s in splits.values())]
                                                  for c in classes], "l" + "r" * len(splits))
    out += [""] + _table(
        ["split", "width min", "median", "max", "height min", "median", "max", f"aspect>{EXTREME_ASPECT:g}:1"],
        [[name, *(_num(s[axis][k]) for axis in ("width", "height") for k in ("min", "median", "max")),
          len(s["extreme_aspect"])] for name, s in splits.items()], "lrrrrrrr")
    undecodable = [f"{u['file']}: {u['reason']}" for s in splits.values() for u in s["undecodable"]]
    out += _listing("Undecodable files", undecodable)
    dups = report["duplicates"]
    out += _listing("Same file in several splits (leak)", [" = ".join(g["files"]) for g in dups["across_splits"]])
    out += _listing("Duplicate files within a split", [" = ".join(g["files"]) for g in dups["within_splits"]])
    extreme = [f"{e['file']}: {e['size'][0]}x{e['size'][1]}" for s in splits.values() for e in s["extreme_aspect"]]
    out += _listing(f"Aspect ratio over {EXTREME_ASPECT:g}:1", extreme)
    odd = [f"{o['file']}: {o['mode']} {o['size'][0]}x{o['size'][1]}" for s in splits.values() for o in s["not_rgb"]]
    out += _listing("Not stored as RGB (converted when read; a small palette image may be a placeholder)", odd)
    out += _listing("Warnings", report["warnings"], limit=50)
    out += _listing("Problems", report["problems"], limit=50)
    ignored = f"; {report['non_image_files']} non-image file(s) ignored" if report["non_image_files"] else ""
    verdict = "OK: no problems" if report["ok"] else f"{len(report['problems'])} problem(s)"
    return "\n".join([*out, "", verdict + ignored])
