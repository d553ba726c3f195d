"""Things that ship with the package, so the whole flow runs with no Hub access.

- `bundled:digits`: scikit-learn's 1,797 handwritten digits (8x8), rendered once as 32x32 PNGs into an image
  folder (`train/` and `validation/`, stratified 85/15 with a fixed seed) under `$HF_RESNET_CACHE`
  (default `~/.cache/hf_resnet`).
- `bundled:resnet-smoke`: a small ResNet config (basic blocks, widths 16-128; no weights: a model built from it
  starts random) and its image processor (32x32 inputs).
- `bundled:resnet-50-processor`: microsoft/resnet-50's preprocessor_config.json (224 crop of a 256 resize).

`check_bundled(name, kind)` tells, before anything is loaded, whether a `bundled:` name exists and is of the
kind a field needs (a model config, an image processor, a dataset), naming the right ones when it is not.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .constants import BUNDLED_PREFIX
from .errors import ConfigError

ASSETS = Path(__file__).parent / "assets"
DIGITS_VERSION = "digits-v1"  # bump when the rendering changes, so old caches are not reused


def is_bundled(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(BUNDLED_PREFIX)


def cache_root() -> Path:
    return Path(os.environ.get("HF_RESNET_CACHE", Path.home() / ".cache" / "hf_resnet"))


DATASETS = ("digits",)
KINDS = {"config": "a model config", "processor": "an image processor", "dataset": "a dataset"}


def bundled_names(kind: str) -> list[str]:
    """The `bundled:` names of one kind: `config` (has config.json), `processor`, or `dataset`."""
    if kind == "dataset":
        return [BUNDLED_PREFIX + name for name in DATASETS]
    wanted = {"config": "config.json", "processor": "preprocessor_config.json"}[kind]
    return [BUNDLED_PREFIX + p.parent.name for p in sorted(ASSETS.glob(f"*/{wanted}"))]


def check_bundled(name: str | None, kind: str, field: str) -> None:
    """A `bundled:` name given to `field` must exist and be of `kind`; other names pass untouched."""
    if not is_bundled(name) or name in bundled_names(kind):
        return
    others = [k for k in KINDS if k != kind and name in bundled_names(k)]
    what = f"is {KINDS[others[0]]}, not {KINDS[kind]}" if others else "is not shipped with the package"
    raise ConfigError(
        f"`{field}` {name!r} {what}; {KINDS[kind]} shipped with the package: {', '.join(bundled_names(kind))}."
    )


def resolve_asset(name: str) -> str:
    """`bundled:resnet-smoke` -> the folder inside the package; any other string is returned as given."""
    if not is_bundled(name):
        return name
    folder = ASSETS / name[len(BUNDLED_PREFIX) :]
    if not folder.is_dir():
        known = ", ".join(BUNDLED_PREFIX + p.name for p in sorted(ASSETS.iterdir()) if p.is_dir())
        raise ConfigError(f"Unknown bundled asset {name!r}; the package ships: {known}.")
    return str(folder)


def digits_image_folder(root: Path | None = None) -> Path:
    """Render scikit-learn's digits as `<root>/digits-v1/{train,validation}/<digit>/<n>.png` once; return the
    folder."""
    root = Path(root) if root is not None else cache_root()
    target = root / DIGITS_VERSION
    if (target / "train").is_dir() and (target / "validation").is_dir():
        return target
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 ink -> 0..255
    indices = np.arange(len(pixels))
    train_idx, val_idx = train_test_split(indices, test_size=0.15, stratify=digits.target, random_state=0)
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DIGITS_VERSION}-", dir=root))  # rename at the end: no half folders
    for split, idx in (("train", train_idx), ("validation", val_idx)):
        for i in idx:
            folder = staging / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i], mode="L").resize((32, 32), Image.Resampling.BILINEAR)
            image.convert("RGB").save(folder / f"{i:04d}.png")
    try:
        staging.rename(target)
    except OSError:  # another process rendered it first
        shutil.rmtree(staging, ignore_errors=True)
    return target
