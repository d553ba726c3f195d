"""Per-image preprocessing cost on real JPEGs, against the HF example script's method timed in the same run.

    python benchmarks/preprocessing.py [--images 100] [--repeats 5] [--folder ../shared/data/hymenoptera_data]

Each method decodes the file and produces a normalised 3x224x224 tensor (one process, one thread). Printed:
median seconds per image over the repeats, and the ratio to the HF example's method (lower is faster).
- hf_example: PIL open + convert("RGB") + torchvision Resize(224), CenterCrop(224), ToTensor, Normalize
  (run_image_classification.py's eval transform; note it resizes to 224, not 256 as the checkpoint was evaluated)
- processor: PIL open + the checkpoint's AutoImageProcessor (what pipeline() does)
- hf_resnet_eval: hf_resnet's eval path (decode_image + processor-exact EvalTransform)
- hf_resnet_train / _seeded: the train path (RandomResizedCrop + flip) without / with per-example RNG seeding
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T
from transformers import AutoImageProcessor

from hf_resnet.bundled import resolve_asset
from hf_resnet.inputs import ExampleTransform
from hf_resnet.transforms import PreprocessConfig, build_eval_transform, build_train_transform


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(Path(__file__).resolve().parents[2] / "shared/data/hymenoptera_data"))
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = sorted(Path(args.folder).rglob("*.jpg"))[: args.images]
    if not files:
        raise SystemExit(f"no .jpg files under {args.folder}")

    processor = AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-50-processor"))
    cfg = PreprocessConfig.from_processor(processor)
    example = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(),
                         T.Normalize(mean=processor.image_mean, std=processor.image_std)])
    ours_eval = ExampleTransform(build_eval_transform(cfg), "image", None, crop_size=cfg.crop_size)
    train_tf = build_train_transform(cfg)
    ours_train = ExampleTransform(train_tf, "image", None, crop_size=cfg.crop_size)
    ours_seeded = ExampleTransform(train_tf, "image", None, crop_size=cfg.crop_size, seed=0)
    def raw(f):
        return {"image": {"path": str(f), "bytes": None}}

    methods = {
        "hf_example": lambda i, f: example(Image.open(f).convert("RGB")),
        "processor": lambda i, f: processor(Image.open(f), return_tensors="pt")["pixel_values"][0],
        "hf_resnet_eval": lambda i, f: ours_eval(raw(f), i)["pixel_values"],
        "hf_resnet_train": lambda i, f: ours_train(raw(f))["pixel_values"],
        "hf_resnet_train_seeded": lambda i, f: ours_seeded(raw(f), i)["pixel_values"],
    }
    timings = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, method in methods.items():  # interleaved, so drift in machine load hits every method alike
            start = time.perf_counter()
            for i, f in enumerate(files):
                assert method(i, f).shape == (3, 224, 224)
            timings[name].append((time.perf_counter() - start) / len(files))
    base = statistics.median(timings["hf_example"])
    print(f"{len(files)} JPEGs from {args.folder}, {args.repeats} repeats, 1 thread")
    print(f"{'method':<24}{'median ms/image':>16}{'ratio':>8}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<24}{median * 1000:>16.2f}{median / base:>8.2f}")


if __name__ == "__main__":
    main()
