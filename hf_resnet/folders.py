"""Image folders on disk: which files count as images, and whether a folder is laid out as training needs.

One rule decides which files exist, for training, prediction and the audit alike: a file counts when its
extension is an image extension (any case) and no part of its path below the folder is hidden (`.DS_Store`,
`._x.jpg`, `.git/`) or a special `__name__` directory (`__MACOSX/`): the files `datasets`' imagefolder skips.
"""

from __future__ import annotations

from pathlib import Path

from .constants import IMAGE_EXTENSIONS
from .errors import DataError


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
    root = Path(folder)
    files = []
    for path in sorted(root.rglob("*")):
        if is_ignored(path.relative_to(root)) or not path.is_file():
            continue
        files.append((path, is_image_file(path)))
    return files


def list_images(folder: str | Path) -> list[Path]:
    """The image files under `folder` (recursively), sorted, by the rule above."""
    return [path for path, image in walk(folder) if image]


def glob_pattern(folder: str | Path) -> str:
    """The `data_files` pattern that makes `datasets` read every file under `folder`."""
    return str(Path(folder) / "**")


def check_folder(path: str, name: str, labeled: bool = True) -> list[Path]:
    """The folder exists and holds images; a labeled one has every image directly in a class sub-folder
    (`imagefolder` would otherwise drop all labels, or name a class after the folder or a nested one), and a
    training folder has at least 2 classes. Returns the images found."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"`{name}` {path!r} is not a folder; point it at a folder with one sub-folder per class.")
    images = list_images(folder)
    if not images:
        raise DataError(
            f"`{name}` {path!r} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "put them in one sub-folder per class, e.g. train/cat/1.jpg."
        )
    if labeled:
        loose = [p for p in images if len(p.relative_to(folder).parts) != 2]
        if loose:
            raise DataError(
                f"`{name}` {path!r} has {len(loose)} image(s) not directly in a class sub-folder (e.g. "
                f"{loose[0].relative_to(folder)}); put each image in <{name}>/<class>/, one level deep."
            )
    if name == "train_dir" and len({p.parent for p in images}) < 2:
        raise DataError(
            f"`train_dir` {path!r} has 1 class sub-folder ({images[0].parent.name!r}); a classifier needs at least 2 "
            "classes: add a sub-folder per class."
        )
    return images
