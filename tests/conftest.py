"""Shared fixtures: everything offline, tiny, and made by the tests (no Hub, no downloads)."""

import os
import tempfile
from pathlib import Path

# Before datasets/transformers are imported anywhere: no network, caches in a throwaway folder.
_CACHE = tempfile.mkdtemp(prefix="hf-resnet-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = str(Path(_CACHE) / "datasets")
os.environ["HF_RESNET_CACHE"] = str(Path(_CACHE) / "hf_resnet")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread per test process: on 2 cores, tiny models spend most of their time in threads waiting for
# each other (a tiny run took 27 s with 2 threads, 2 s with one); subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoImageProcessor, ResNetConfig, ResNetForImageClassification  # noqa: E402

from hf_resnet.bundled import resolve_asset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PHOTOS = Path(__file__).resolve().parent / "data" / "photos"  # 12 real JPEGs, ants/ and bees/ (see data/README.md)

COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


def make_image(colour, rng: np.random.Generator, size=(40, 40)) -> Image.Image:
    """A noisy background with a coloured square somewhere: separable by colour, not trivially constant."""
    h, w = size
    pixels = rng.integers(60, 140, size=(h, w, 3), dtype=np.uint8)
    top, left = rng.integers(0, h // 3), rng.integers(0, w // 3)
    pixels[top : top + h // 2, left : left + w // 2] = colour
    return Image.fromarray(pixels)


def make_image_folder(root: Path, per_class: int, seed: int, fmt: str = "png", classes=COLOURS) -> Path:
    rng = np.random.default_rng(seed)
    for name, colour in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(colour, rng).save(root / name / f"{name}_{i:03d}.{fmt}")
    return root


@pytest.fixture(scope="session")
def colour_folders(tmp_path_factory) -> dict[str, Path]:
    """train (24 per class), validation (8 per class), test (flat, unlabeled, 6 images) image folders."""
    root = tmp_path_factory.mktemp("colours")
    train = make_image_folder(root / "train", 24, seed=0)
    validation = make_image_folder(root / "validation", 8, seed=1)
    test = root / "test"
    test.mkdir()
    rng = np.random.default_rng(2)
    for i, colour in enumerate(list(COLOURS.values()) * 2):
        make_image(colour, rng).save(test / f"img_{i}.png")
    return {"train": train, "validation": validation, "test": test}


def recipe_args(output_dir: Path, folders: dict, **overrides) -> list[str]:
    """Command-line arguments for a tiny, fast run of the fine-tuning recipe on the colour folders."""
    values = {
        "model_name_or_path": "null",  # build from config_name: no weights to download
        "config_name": "bundled:resnet-smoke",
        "train_dir": str(folders["train"]),
        "validation_dir": str(folders["validation"]),
        "output_dir": str(output_dir),
        "num_train_epochs": "4",
        "per_device_train_batch_size": "8",
        "per_device_eval_batch_size": "16",
        "learning_rate": "0.003",
        "logging_steps": "1",
        "save_strategy": "no",
        "dataloader_num_workers": "0",
        "horizontal_flip": "0.5",
        "seed": "0",
        "report_to": "none",
    }
    values.update(overrides)
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        argv += [f"--{key}", str(value)]
    return argv


def finetune(argv: list[str]) -> dict:
    """The run exactly as `hf-resnet train ARGV` does it, in this process; returns its metrics."""
    from hf_resnet.parser import parse_args
    from hf_resnet.run import main

    return main(*parse_args(argv))


def save_checkpoint(path, names):
    """A tiny ResNet 'pretrained' on `names`, saved with the smoke processor: stands in for a Hub checkpoint."""
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=len(names), id2label=dict(enumerate(names)),
                          label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    model = ResNetForImageClassification(config)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so keeping them is a real check
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    model.save_pretrained(path)
    AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-smoke")).save_pretrained(path)
    return path

