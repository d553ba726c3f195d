"""Issue 8's GPU table in one run: the model's own step on GPU tensors, the HF example's method, hf-resnet's recipe
with channels-last (its GPU default), `torch_compile` and `gpu_decode`, and decoding alone; plus the nvJPEG eval
bound. Under 5 minutes on one H200 with 16 cores; nothing downloaded.

    PYTHONPATH=. python3 benchmarks/gpu.py [--images 10752] [--batch 256] [--workers 15] [--quick] [--profile]

On the GPU machine (torch, torchvision, transformers and accelerate present; `datasets` not): install the carried
wheels first, `pip install --no-index --find-links benchmarks/wheels datasets dill multiprocess pyarrow`
(`docs/performance.md` says how to fetch them for that machine's Python). The images are hard links to the JPEGs
under --source (tests/data/photos travels with the repository). `--quick` runs everything at toy sizes (what was
run on a CPU to check the script).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as bench  # noqa: E402  (benchmarks/train.py: the data, checkpoints and timed runs)

REPO = Path(__file__).resolve().parents[1]


def model_step_rows(batch: int, steps: int, warmup: int, device: str, quick: bool) -> dict[str, dict]:
    """ResNet-50 forward + backward + SGD step on random tensors already on the device, bf16 autocast. The guard
    row reuses the compiled model (one compile fewer), alternating with the plain compiled step."""
    from transformers import ResNetConfig, ResNetForImageClassification

    def timed(forward, optimizer, pixels, labels, guard: bool) -> float:
        for _ in range(warmup):
            train_step(forward, optimizer, pixels, labels, device, guard)
        synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            train_step(forward, optimizer, pixels, labels, device, guard)
        synchronize()
        return batch * steps / (time.perf_counter() - start)

    rows = {}
    for name, channels_last, benchmark, compiled in (
            ("model step, eager, NCHW", False, False, False),
            ("model step, channels_last", True, False, False),
            ("model step, channels_last + cudnn.benchmark", True, True, False),
            ("model step, channels_last + torch.compile", True, False, True)):
        torch.backends.cudnn.benchmark = benchmark
        torch.manual_seed(0)
        config = ResNetConfig(num_labels=100) if not quick else ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic", num_labels=100)
        model = ResNetForImageClassification(config).to(device)
        pixels = torch.randn(batch, 3, 224, 224, device=device)
        labels = torch.randint(0, 100, (batch,), device=device)
        if channels_last:
            model, pixels = model.to(memory_format=torch.channels_last), pixels.contiguous(
                memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        forward = torch.compile(model) if compiled else model
        rows[name] = {"images_per_second": timed(forward, optimizer, pixels, labels, False), "peak_rss_mib": 0}
        if compiled:  # the guard's cost: plain and guarded steps in turn, 3 times each, medians
            plain, guarded = [], []
            for _ in range(3):
                plain.append(timed(forward, optimizer, pixels, labels, False))
                guarded.append(timed(forward, optimizer, pixels, labels, True))
            rows[name]["images_per_second"] = statistics.median(plain)
            rows["  + the NaN guard's host sync after each forward"] = {
                "images_per_second": statistics.median(guarded), "peak_rss_mib": 0}
        del model, forward, optimizer
    return rows


def train_step(forward, optimizer, pixels, labels, device: str, guard: bool = False) -> None:
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        loss = forward(pixel_values=pixels, labels=labels).loss
    if guard:  # what ImageClassificationTrainer.compute_loss adds: flags on the device, read once
        flags = ~(labels == -100).all() & ~torch.isfinite(loss.detach()).all()
        flags.float().reshape(1).tolist()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def decode_rows(files: list[Path], batch: int, device: str) -> tuple[dict, dict]:
    """nvJPEG batch decode + resize on the device, and Pillow decode on one core: images/s. Plus the eval bound:
    hf-resnet's on-device eval transform against the processor-exact CPU path, on the repository's photos."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from hf_resnet.data.gpu_decode import decode_jpegs

    blobs = [files[i % len(files)].read_bytes() for i in range(batch)]
    for _ in range(3):
        images = decode_jpegs(blobs, device)
    synchronize()
    start, rounds = time.perf_counter(), 5
    for _ in range(rounds):
        images = decode_jpegs(blobs, device)
        resized = [F.resize(image, [224, 224], antialias=True) for image in images]
    synchronize()
    gpu = batch * rounds / (time.perf_counter() - start)
    torch.set_num_threads(1)
    start = time.process_time()
    for i in range(100):
        Image.open(io.BytesIO(blobs[i % len(blobs)])).convert("RGB").load()
    pil = 100 / (time.process_time() - start)
    del resized
    rows = {f"decode_jpeg(device={device}) + resize, batch {batch}": {"images_per_second": gpu, "peak_rss_mib": 0},
            "Pillow decode, 1 core": {"images_per_second": pil, "peak_rss_mib": 0}}
    return rows, eval_bound(device)


def eval_bound(device: str) -> dict:
    from PIL import Image
    from transformers import AutoImageProcessor

    from hf_resnet.bundled import resolve_asset
    from hf_resnet.data.gpu_decode import DeviceDecoder
    from hf_resnet.data.inputs import ExampleTransform, collate
    from hf_resnet.data.transforms import BatchNormalizer, DeviceDecode, PreprocessConfig, build_eval_transform

    processor = AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-50-processor"))
    cfg = PreprocessConfig.from_processor(processor)
    files = sorted((REPO / "tests" / "data" / "photos").glob("*/*.jpg"))
    worker = ExampleTransform(build_eval_transform(cfg, False), "image", None, crop_size=cfg.crop_size,
                              blank=torch.zeros(3, *cfg.crop_size, dtype=torch.uint8),
                              device_decode=DeviceDecode(train=False))
    batch = collate([worker({"image": {"path": str(f), "bytes": None}}, i) for i, f in enumerate(files)])
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    ours = DeviceDecoder(cfg, BatchNormalizer(cfg))(inputs)["pixel_values"].float().cpu()
    exact = processor([Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    difference = (ours - exact).abs()
    return {"images": len(files), "max": float(difference.max()), "mean": float(difference.mean()),
            "share_over_1e-2": float((difference > 1e-2).float().mean())}


@contextlib.contextmanager
def section(name: str):
    """A part that fails prints its traceback and lets the next part run: the GPU machine gives one try."""
    try:
        yield
    except Exception:
        print(f"\n{name}: FAILED\n{traceback.format_exc()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / "tests" / "data" / "photos")
    parser.add_argument("--images", type=int, default=10752)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="toy sizes, to check the script on a CPU")
    parser.add_argument("--skip-train", action="store_true", help="only the model-step and decode rows")
    parser.add_argument("--skip-model-step", action="store_true",
                        help="no model-step rows (e.g. a second call that runs only `--models tiny`)")
    parser.add_argument("--run-timeout", type=float, default=240,
                        help="seconds one end-to-end run may take before it is stopped and the next row runs")
    parser.add_argument("--profile", action="store_true",
                        help="profile each end-to-end run's main thread over the timed steps (benchmarks/train.py)")
    parser.add_argument("--models", nargs="+", default=["resnet50", "tiny"], choices=["resnet50", "tiny"],
                        help="end-to-end rows for these models (resnet50: 5 runs, 2 compiled; tiny: 3 runs)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        args.images, args.classes, args.batch, args.workers, args.warmup, args.steps = 96, 4, 8, 2, 2, 3
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="hf-resnet-gpu-bench-"))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{name}, {os.cpu_count()} cores, torch {torch.__version__}; batch {args.batch}, {args.workers} workers, "
          f"{args.images} images of {args.source} in {args.classes} classes; steady state between steps "
          f"{args.warmup} and {args.warmup + args.steps}", flush=True)

    with section("model step"):
        if not args.skip_model_step:
            table = model_step_rows(args.batch, args.steps, args.warmup, device, args.quick)
            bench.print_table("ResNet-50 step on device tensors (bf16 autocast)", table, "model step, eager, NCHW")
    with section("decoding"):
        files = sorted(args.source.rglob("*.jpg"))
        decode, bound = decode_rows(files, args.batch, device)
        bench.print_table("Decoding", decode, next(iter(decode)))
        print(f"\nOn-device eval transform vs the processor on {bound['images']} photos: max |diff| "
              f"{bound['max']:.4f}, mean {bound['mean']:.5f}, share of values over 1e-2: "
              f"{bound['share_over_1e-2']:.4%}", flush=True)
    if args.skip_train:
        return
    data = bench.make_folder(args.source, work / "train", args.images, args.classes)
    validation = bench.make_folder(args.source, work / "validation", args.classes, args.classes)
    bf16 = device == "cuda"
    # In the order of the targets they measure, so a run cut short loses the least: the HF example and ours
    # (target 1), compiled with gpu_decode (target 2), compiled alone, then what the queued copy gains.
    plans = {"resnet50": ["--torch_compile true --gpu_decode true", "--torch_compile true",
                          "--accelerator_config '{\"non_blocking\": false}'"],
             "tiny": ["--gpu_decode true"]}
    for kind, extra in ((kind, plans[kind]) for kind in args.models):
        checkpoint = bench.make_checkpoint(kind if not args.quick else "tiny", work, args.classes)
        common = dict(checkpoint=str(checkpoint), data=str(data), validation=str(validation), batch=args.batch,
                      workers=args.workers, bf16=bf16, warmup=args.warmup, steps=args.steps,
                      max_steps=args.warmup + args.steps + 2)
        rows = [("hf_example (PIL transforms, plain Trainer)", dict(common, method="hf_example")),
                ("hf_resnet (channels_last on a GPU)", dict(common, method="hf_resnet"))]
        rows += [(f"hf_resnet {options}", dict(common, method="hf_resnet", ours_args=options)) for options in extra]
        rows = [(label, dict(options, output=str(work / f"out-{kind}-{i}")))
                for i, (label, options) in enumerate(rows)]
        table = bench.compare(rows, 1, profile=args.profile, timeout=args.run_timeout)
        bench.print_table(f"{kind}: end-to-end training images/s", table, rows[0][0])
        bench.print_profiles(rows, args.steps)
        print(f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    print(f"\nDone in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
