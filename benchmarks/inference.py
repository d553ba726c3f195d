"""CPU inference of ResNet-50 by backend: batch-1 latency and batch-32 throughput, against eager PyTorch timed in
the same run, and pipeline("image-classification")'s overhead over the bare forward.

    python benchmarks/inference.py [--threads 2] [--repeats 10] [--calls 5] [--images ../shared/data/hymenoptera_data]
                                   [--calibration-images 64] [--backends eager,compile,...]

A random-init ResNet-50 (ResNetConfig's defaults, built offline; the head sized to the image folder's classes and
fitted by ridge regression on train/'s features, so that predictions differ between images) is saved with
microsoft/resnet-50's processor (`bundled:resnet-50-processor`) and exported with `hf_resnet.export` (fp32, and
int8 static QDQ calibrated on train/, its top-1 change measured on val/: the export prints it). Each backend then
runs in its own process (so its peak RSS is its own), all started before timing, and the parent asks them in
turn, repeat after repeat, so a load that comes and goes on a shared machine falls on all of them alike:
- eager: model(pixel_values) under torch.inference_mode, NCHW: the baseline
- channels_last: the model and input in torch.channels_last
- compile: torch.compile(model, dynamic=False) (inductor; one graph per batch size, compiled during warm-up)
- ort_fp32 / ort_int8: ONNX Runtime CPU sessions of model.onnx / model_int8.onnx
- pipeline: pipeline("image-classification") on the decoded PIL image (its preprocessing included); batch 32 is a
  list of 32 images with batch_size=32; in its process, call by call in turn, its model's bare forward on the
  processor's output (pipeline_bare) and the processor alone (pipeline_preprocess)
Printed: ms per batch-1 call and images/s at batch 32 (medians over repeats of each repeat's median), each with its
ratio to eager (the median of the ratios within each repeat); pipeline() against its own model's bare forward,
timed call by call in turn in its process; the peak RSS of each process (resource.getrusage).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

BACKENDS = ("eager", "channels_last", "compile", "ort_fp32", "ort_int8", "pipeline")
BATCH = 32


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _runner(backend: str, folder: str, threads: int):
    """({name: call(batch_size)}, warm-up seconds): each call one forward pass of `batch_size` images. The
    pipeline's process also times the bare forward of the pipeline's own model on its processor's output, and
    the processor alone."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor

    from hf_resnet.data.transforms import PreprocessConfig, build_eval_transform
    from hf_resnet.export import INT8_NAME, ONNX_NAME, session
    from hf_resnet.inference import Classifier

    torch.set_num_threads(threads)
    start = time.perf_counter()
    decoded = [Image.open(f).convert("RGB") for f in sorted(Path(folder, "images").glob("*.jpg"))]
    images = [decoded[i % len(decoded)] for i in range(BATCH)]
    transform = build_eval_transform(PreprocessConfig.from_processor(AutoImageProcessor.from_pretrained(folder)))
    inputs = {1: torch.stack([transform(images[0])]), BATCH: torch.stack([transform(i) for i in images])}
    if backend in ("eager", "channels_last", "compile"):
        model = Classifier.load(folder, device="cpu").model  # as hf-resnet predict loads it: eval mode
        if backend == "channels_last":
            model = model.to(memory_format=torch.channels_last)
            inputs = {n: x.contiguous(memory_format=torch.channels_last) for n, x in inputs.items()}
        if backend == "compile":
            model = torch.compile(model, dynamic=False)

        def call(n):
            with torch.inference_mode():
                model(pixel_values=inputs[n])
        calls = {backend: call}
    elif backend.startswith("ort_"):
        sess = session(Path(folder, "onnx", ONNX_NAME if backend == "ort_fp32" else INT8_NAME), threads)
        arrays = {n: x.numpy() for n, x in inputs.items()}

        def call(n):
            sess.run(["logits"], {"pixel_values": arrays[n]})
        calls = {backend: call}
    else:
        from transformers import pipeline

        pipe = pipeline("image-classification", model=folder, device="cpu")
        processed = {1: pipe.image_processor(images[0], return_tensors="pt")["pixel_values"],
                     BATCH: pipe.image_processor(images, return_tensors="pt")["pixel_values"]}

        def call(n):
            pipe(images[0]) if n == 1 else pipe(images, batch_size=n)

        def bare(n):
            with torch.inference_mode():
                pipe.model(pixel_values=processed[n])
        def preprocess(n):  # what the pipeline adds before the forward: its image processor
            pipe.preprocess(images[0]) if n == 1 else pipe.image_processor(images, return_tensors="pt")
        calls = {"pipeline": call, "pipeline_bare": bare, "pipeline_preprocess": preprocess}
    for n in (1, 1, 1, BATCH):  # compiles, allocations, kernel choices
        for call in calls.values():
            call(n)
    return calls, time.perf_counter() - start


def _worker(backend: str, folder: str, threads: int, conn) -> None:
    calls, warm_up = _runner(backend, folder, threads)
    conn.send((list(calls), warm_up))
    while True:
        request = conn.recv()
        if request is None:
            conn.send(_peak_rss_mb())
            return
        batch, count = request
        times = {name: [] for name in calls}
        for _ in range(count):  # call by call in turn: the pipeline and its bare forward see the same load
            for name, call in calls.items():
                start = time.perf_counter()
                call(batch)
                times[name].append(time.perf_counter() - start)
        conn.send(times)


def _fit_head(model, train_dir: Path, transform, ridge: float = 100.0) -> float:
    """A random backbone gives every image nearly the same logits (one class for all), which would make int8's
    top-1 change meaningless. So the linear head is fitted by ridge regression on the pooled features of train/
    (the backbone stays random: the same network and cost). Returns the training images' top-1."""
    import torch

    from hf_resnet.data.folders import read_folder
    from hf_resnet.export import load_pixels

    split = read_folder(str(train_dir), "train_dir")
    pixels, kept = load_pixels(split.files, transform)
    labels = torch.tensor([split.classes.index(split.labels[i]) for i in kept])
    with torch.inference_mode():
        features = torch.cat([model.resnet(pixel_values=pixels[i : i + BATCH]).pooler_output.flatten(1)
                              for i in range(0, len(pixels), BATCH)]).double()
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    y = torch.nn.functional.one_hot(labels, len(split.classes)).double() * 2 - 1
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(x.shape[1], dtype=x.dtype), x.T @ (y - y.mean(0)))
    head = model.classifier[-1]
    with torch.no_grad():
        head.weight.copy_((w / std[:, None]).T.float())
        head.bias.copy_((y.mean(0) - (mean / std) @ w).float())
    return float(((x @ w + y.mean(0)).argmax(1) == labels).double().mean())


def _prepare(folder: Path, images: Path, threads: int, calibration_images: int, conn) -> None:
    """Random ResNet-50 with the bundled processor, its ONNX exports, and the sample images the workers read;
    in a process of its own: its peak RSS is reported alone and is not inherited by the workers (Linux's
    ru_maxrss starts at the parent's at fork)."""
    import shutil

    import torch
    from transformers import AutoImageProcessor, ResNetConfig, ResNetForImageClassification

    from hf_resnet.bundled import resolve_asset
    from hf_resnet.data.folders import class_folders, list_images
    from hf_resnet.data.transforms import PreprocessConfig, build_eval_transform
    from hf_resnet.export import export_model

    torch.set_num_threads(threads)
    classes = class_folders(images / "val")
    torch.manual_seed(0)
    config = ResNetConfig(num_labels=len(classes), id2label=dict(enumerate(classes)),
                          label2id={c: i for i, c in enumerate(classes)})
    model = ResNetForImageClassification(config).eval()
    processor = AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-50-processor"))
    start = time.perf_counter()
    fitted = _fit_head(model, images / "train", build_eval_transform(PreprocessConfig.from_processor(processor)))
    print(f"head fitted on train/'s features of the random backbone in {time.perf_counter() - start:.0f} s "
          f"(top-1 on train/ {fitted:.3f})", flush=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    (folder / "images").mkdir()
    for i, file in enumerate(list_images(images / "val")[:BATCH]):
        shutil.copy(file, folder / "images" / f"{i:03d}.jpg")
    start = time.perf_counter()
    export_model(str(folder), folder / "onnx", int8=True, calibration=str(images / "train"),
                 eval_dir=str(images / "val"), calibration_images=calibration_images)
    print(f"export (fp32 + int8, calibration, top-1 on val) took {time.perf_counter() - start:.0f} s\n", flush=True)
    conn.send(_peak_rss_mb())


def _machine() -> str:
    import platform
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    packages = ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "onnxruntime"))
    return f"{cpu}, {os.cpu_count()} cores; {packages}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared/data/hymenoptera_data"),
                        help="a folder with train/ and val/, one sub-folder per class (default: the shared ants/bees)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--calls", type=int, default=5, help="batch-1 calls per process and repeat")
    parser.add_argument("--batch-calls", type=int, default=1, help=f"batch-{BATCH} calls per process and repeat")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--calibration-images", type=int, default=64, help="int8 calibration images from train/")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    backends = args.backends.split(",")
    print(f"{_machine()}; load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-inference-") as scratch:
        folder = Path(scratch)
        context = mp.get_context("spawn")  # a fresh interpreter per process: no torch state shared
        here, there = context.Pipe()
        preparing = context.Process(target=_prepare, args=(folder, Path(args.images), args.threads,
                                                           args.calibration_images, there))
        preparing.start()
        export_rss = here.recv()
        preparing.join()
        workers, names, warm_ups = {}, {}, {}
        for backend in backends:  # one at a time, so one's compile does not slow another's start
            here, there = context.Pipe()
            process = context.Process(target=_worker, args=(backend, str(folder), args.threads, there), daemon=True)
            process.start()
            names[backend], warm_ups[backend] = here.recv()
            workers[backend] = (process, here)
        runs = {(name, batch): [] for batch in (1, BATCH) for b in backends for name in names[b]}
        for _ in range(args.repeats):  # each repeat asks every process in turn
            for batch, count in ((1, args.calls), (BATCH, args.batch_calls)):
                for _, conn in workers.values():
                    conn.send((batch, count))
                    for name, times in conn.recv().items():
                        runs[name, batch].append(statistics.median(times))
        rss = {}
        for backend, (process, conn) in workers.items():
            conn.send(None)
            rss[backend] = conn.recv()
            process.join()
    _print_table(names, runs, rss, warm_ups, export_rss, args)


def _ratios(runs, name, baseline, batch) -> list[float]:
    """Per repeat: `name`'s median over `baseline`'s, both from the same repeat (the load of that moment)."""
    return [a / b for a, b in zip(runs[name, batch], runs[baseline, batch])]


def _print_table(names, runs, rss, warm_ups, export_rss, args) -> None:
    median = statistics.median
    print(f"\nResNet-50, 3x224x224 fp32 inputs, {args.threads} threads; {args.repeats} repeats, each asking every "
          f"process in turn for {args.calls} batch-1 calls and {args.batch_calls} batch-{BATCH} call(s).")
    print("ms: median over repeats of each repeat's median (min-max of the repeats' medians); x eager: median over "
          "repeats of the ratio to eager in the same repeat (below 1: faster). Peak RSS: the process's.\n")
    print(f"| backend | batch 1 ms (min-max) | x eager | batch {BATCH} images/s | x eager | warm-up s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for backend, backend_names in names.items():
        for name in backend_names:
            ms = [t * 1000 for t in runs[name, 1]]
            ips = BATCH / median(runs[name, BATCH])
            speed = median(_ratios(runs, name, "eager", 1)) if ("eager", 1) in runs else float("nan")
            rate = 1 / median(_ratios(runs, name, "eager", BATCH)) if ("eager", 1) in runs else float("nan")
            shared = name != backend  # the pipeline's bare forward and processor run in its process
            own = "(same process) | |" if shared else f"{warm_ups[backend]:.1f} | {rss[backend]:.0f} |"
            print(f"| {name} | {median(ms):.1f} ({min(ms):.1f}-{max(ms):.1f}) | {speed:.2f} | {ips:.1f} | "
                  f"{rate:.2f} | {own}")
    print(f"\nexporting process (PyTorch model, export, quantisation, top-1): peak RSS {export_rss:.0f} MB")
    if ("pipeline", 1) in runs:
        for batch in (1, BATCH):
            overhead = median(_ratios(runs, "pipeline", "pipeline_bare", batch)) - 1
            print(f"pipeline() over its model's bare forward at batch {batch} (same process, call by call in turn; "
                  f"median of the repeats' ratios): {100 * overhead:+.1f}% (target: <= +15%)")
    print(f"load average when done: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
