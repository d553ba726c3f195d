"""CPU input pipeline cost on real images: hf-resnet's train and eval paths against the HF image processor, the HF
example script's transforms and bare decoding, all timed in the same run.

    python benchmarks/preprocessing.py [--folder DIR] [--images 200] [--repeats 5] [--workers 0 2] [--batch 32]
        [--resize 4032x3024]

Part 1, one process, one thread: median CPU seconds per image over the repeats (process CPU time, not wall
time: on a shared machine other processes' load barely moves it; methods interleaved), and each method's speed as
a multiple of the processor's, the HF example's and bare decoding's (higher is faster; 0.80 against decode =
within 25% of just decoding the file).
- decode_pil / decode_tensor: bare decoding into RGB (Pillow; hf-resnet's `decode_tensor`, libjpeg-turbo into a
  tensor for plain JPEGs, Pillow for the rest), the floor
- processor: Pillow decode + the checkpoint's AutoImageProcessor (what pipeline() does); float32 out
- hf_example_eval / _train: Pillow decode + run_image_classification.py's transforms (Resize(224) CenterCrop(224)
  / RandomResizedCrop(224) flip, then ToTensor Normalize, per image in the worker); float32 out
- hf_resnet_eval / _train: what hf-resnet's DataLoader workers do: `decode_tensor`, the processor-exact resize +
  crop (eval) or the seeded RandomResizedCrop + flip (train, decoding JPEGs over 3.3 MP smaller: `TrainDraft`),
  uint8 out
- normalise_on_device: the share per image of `BatchNormalizer` on a batch of 32, which runs where the model is
  (on a GPU: off the CPU; on a CPU: in the main process)
- hf_resnet_eval_in_worker: the eval path normalising per image in the worker (float out, as in 0.2)
Part 2, DataLoader throughput (images/s) with each `--workers` count, batch `--batch`, for the train paths.
Peak RSS of the whole run is printed last. Any folder works; files are found by extension (.jpg, .JPEG, .png...).
`--resize WxH` re-encodes each image at that size first (JPEG quality 90), e.g. 4032x3024 for phone photos.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T
from transformers import AutoImageProcessor

from hf_resnet.bundled import resolve_asset
from hf_resnet.constants import IMAGE_EXTENSIONS
from hf_resnet.data.images import decode_tensor
from hf_resnet.data.inputs import ExampleTransform, collate
from hf_resnet.data.transforms import (
    BatchNormalizer,
    PreprocessConfig,
    TrainDraft,
    build_eval_transform,
    build_train_transform,
)

DEFAULT_FOLDER = Path(__file__).resolve().parents[2] / "shared/data/hymenoptera_data"


def find_images(folder: Path, count: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise SystemExit(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    return files[:count]


def build_methods(processor) -> dict:
    cfg = PreprocessConfig.from_processor(processor)
    norm = T.Normalize(mean=processor.image_mean, std=processor.image_std)
    example_eval = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), norm])
    example_train = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    normalizer = BatchNormalizer(cfg)
    ours_eval = ExampleTransform(build_eval_transform(cfg, normalize=False), "image", None, crop_size=cfg.crop_size)
    ours_train = ExampleTransform(build_train_transform(cfg, normalize=False), "image", None,
                                  crop_size=cfg.crop_size, seed=0, reduction=TrainDraft(max(cfg.crop_size), 0.08))
    in_worker = ExampleTransform(build_eval_transform(cfg), "image", None, crop_size=cfg.crop_size)

    def pil(data: bytes) -> Image.Image:
        return Image.open(io.BytesIO(data)).convert("RGB")

    def raw(data: bytes) -> dict:
        return {"image": {"bytes": data, "path": None}}

    batch = torch.zeros(32, 3, *cfg.crop_size, dtype=torch.uint8)

    def normalise_share(index: int) -> None:
        if index % 32 == 0:
            normalizer(batch)

    return {
        "decode_pil": lambda i, d: pil(d),
        "decode_tensor": lambda i, d: decode_tensor({"bytes": d, "path": None}),
        "processor": lambda i, d: processor(pil(d), return_tensors="pt")["pixel_values"][0],
        "hf_example_eval": lambda i, d: example_eval(pil(d)),
        "hf_example_train": lambda i, d: example_train(pil(d)),
        "hf_resnet_eval": lambda i, d: ours_eval(raw(d), i)["pixel_values"],
        "hf_resnet_train": lambda i, d: ours_train(raw(d), i)["pixel_values"],
        "normalise_on_device": lambda i, d: normalise_share(i),
        "hf_resnet_eval_in_worker": lambda i, d: in_worker(raw(d), i)["pixel_values"],
    }, (example_train, ours_train, normalizer)


def reencoded(data: bytes, width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((width, height), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def per_image(methods: dict, blobs: list[bytes], repeats: int) -> dict:
    timings = {name: [] for name in methods}
    for _ in range(repeats):
        for name, method in methods.items():
            start = time.process_time()
            for i, data in enumerate(blobs):
                method(i, data)
            timings[name].append((time.process_time() - start) / len(blobs))
    return {name: statistics.median(values) for name, values in timings.items()}


class _Files(torch.utils.data.Dataset):
    def __init__(self, blobs: list[bytes], transform, ours: bool):
        self.blobs, self.transform, self.ours = blobs, transform, ours

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, index: int) -> dict:
        data = self.blobs[index]
        if self.ours:
            return self.transform({"image": {"bytes": data, "path": None}}, index)
        return {"pixel_values": self.transform(Image.open(io.BytesIO(data)).convert("RGB")), "example_ids": index}


def loader_throughput(blobs: list[bytes], transform, ours: bool, workers: int, batch: int, normalizer) -> float:
    loader = torch.utils.data.DataLoader(_Files(blobs, transform, ours), batch_size=batch, num_workers=workers,
                                         collate_fn=collate, persistent_workers=False)
    start, count = None, 0
    for step, batch_dict in enumerate(loader):
        pixels = normalizer(batch_dict["pixel_values"])  # the HF example's float batches pass through unchanged
        if step == 0:  # workers started and warm: time from here
            start, count = time.perf_counter(), 0
            continue
        count += pixels.shape[0]
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resize", help="WxH: re-encode every image at this size first (JPEG, quality 90)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = find_images(args.folder, args.images)
    blobs = [f.read_bytes() for f in files]
    if args.resize:
        width, height = (int(v) for v in args.resize.lower().split("x"))
        blobs = [reencoded(data, width, height) for data in blobs]
    processor = AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-50-processor"))
    methods, (example_train, ours_train, normalizer) = build_methods(processor)

    medians = per_image(methods, blobs, args.repeats)
    sizes = [Image.open(io.BytesIO(b)).size for b in blobs]
    pixels = statistics.median(w * h for w, h in sizes)
    print(f"{len(files)} images from {args.folder} (median {pixels / 1e6:.2f} MP), {args.repeats} repeats, "
          f"1 thread, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    floor = medians["decode_pil"]
    header = (f"{'method':<26}{'CPU ms/image':>13}{'x processor':>13}{'x hf_example':>14}{'x decode':>10}")
    print(header)
    for name, median in medians.items():
        example = medians["hf_example_train" if "train" in name else "hf_example_eval"]
        print(f"{name:<26}{median * 1000:>13.2f}{medians['processor'] / median:>13.2f}"
              f"{example / median:>14.2f}{floor / median:>10.2f}")

    print(f"\nDataLoader throughput, train paths, batch {args.batch} (images/s, median of {args.repeats})")
    print(f"{'workers':<10}{'hf_example_train':>18}{'hf_resnet_train':>18}{'ratio':>8}")
    for workers in args.workers:
        theirs = statistics.median(loader_throughput(blobs, example_train, False, workers, args.batch, normalizer)
                                   for _ in range(args.repeats))
        ours = statistics.median(loader_throughput(blobs, ours_train, True, workers, args.batch, normalizer)
                                 for _ in range(args.repeats))
        print(f"{workers:<10}{theirs:>18.0f}{ours:>18.0f}{ours / theirs:>8.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\npeak RSS: {peak:.0f} MiB (this process), {children:.0f} MiB (largest worker)")


if __name__ == "__main__":
    main()
