"""Training throughput: hf-resnet's recipe against the HF example script's method, same data, model, batch, workers
and steps, steady-state images/s (between optimizer steps --warmup and --warmup + --steps), each run in its own
process, timed in the same invocation.

    python benchmarks/train.py [--model tiny resnet50] [--images 640] [--batch 32] [--workers 2] [--bf16] \
        [--warmup 20] [--steps 80] [--repeats 1] [--ours-args "--gpu_decode true"] [--source DIR]

The data is an image folder of `--classes` classes made of hard links to the JPEGs under `--source` (the
hymenoptera photos by default), `--images` files in all. The models are random-init checkpoints saved with
microsoft/resnet-50's processor: `tiny` (a basic-block ResNet of widths 16-128: input-bound, so it shows the input
pipeline's ceiling) and `resnet50` (ResNetConfig's defaults). Nothing is downloaded.
- hf_example: run_image_classification.py's method: `datasets` imagefolder, `set_transform` with torchvision's
  PIL transforms (RandomResizedCrop, flip, ToTensor, Normalize), a plain `Trainer`, AdamW at 3e-4
- hf_resnet: `hf-resnet train --config resnet50/imagefolder_full` on the same folder and checkpoint (+ --ours-args)
Printed: a table of median images/s over --repeats, the ratio to hf_example, each run's peak RSS, and CPU time
over the timed steps: the main thread's per step (the Python driving the GPU; on a GPU it also counts the time
CUDA spin-waits in a host read, so read it with the profile), the main process's per step (adds torch's threads
and the pin-memory thread) and the DataLoader workers' per image. `--profile` adds, per run, where the main
thread's time per step goes (cProfile: a host read shows as time in `.item()`/`.tolist()`).
`benchmarks/gpu.py` runs this on a GPU with more rows.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "hymenoptera_data"
if not DEFAULT_SOURCE.is_dir():
    DEFAULT_SOURCE = REPO / "tests" / "data" / "photos"


class StepTimer(TrainerCallback):
    """Wall time from the end of optimizer step `warmup` to the end of step `warmup + steps` (CUDA synchronised at
    those two points only), then stops the run. Over the same window: the main thread's CPU time (the Python that
    drives each step: the Trainer, our hooks, kernel launches), the whole main process's (adds torch's intra-op
    threads and the pin-memory thread) and the DataLoader workers' (child processes, read from /proc)."""

    def __init__(self, warmup: int, steps: int, profile: str | None = None):
        self.warmup, self.steps, self.profile = warmup, steps, profile
        self.start = self.seconds = None
        self.cpu: dict[str, float] = {}
        self.profiler = cProfile.Profile() if profile else None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, self.warmup + self.steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            now = time.perf_counter()
            clocks = {"main_thread": time.thread_time(), "main_process": time.process_time(),
                      "workers": children_cpu_seconds()}
            if state.global_step == self.warmup:
                self.start, self._clocks = now, clocks
                if self.profiler is not None:
                    self.profiler.enable()
            else:
                if self.profiler is not None:
                    self.profiler.disable()
                    self.profiler.dump_stats(self.profile)
                self.seconds = now - self.start
                self.cpu = {name: clocks[name] - self._clocks[name] for name in clocks}
                control.should_training_stop = True
        return control


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's children (the DataLoader workers): the live ones (from /proc)
    plus the ended ones (RUSAGE_CHILDREN), so a worker that exits inside the window still counts once."""
    me, ticks = str(os.getpid()), 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        if fields[1] == me:
            ticks += int(fields[11]) + int(fields[12])
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ticks / os.sysconf("SC_CLK_TCK") + ended.ru_utime + ended.ru_stime


# Data and checkpoints -------------------------------------------------------------------------------------------

def make_folder(source: Path, root: Path, images: int, classes: int) -> Path:
    """`images` hard links (copies across file systems) to the JPEGs under `source`, spread over `classes` folders."""
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())
    if not files:
        raise SystemExit(f"no JPEGs under {source}")
    for i in range(images):
        folder = root / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{i:06d}{files[i % len(files)].suffix}"
        if not target.exists():
            try:
                os.link(files[i % len(files)], target)
            except OSError:
                target.write_bytes(files[i % len(files)].read_bytes())
    return root


def make_checkpoint(kind: str, root: Path, classes: int) -> Path:
    from transformers import AutoImageProcessor, ResNetConfig, ResNetForImageClassification

    from hf_resnet.bundled import resolve_asset

    if kind == "tiny":
        config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                              layer_type="basic")
    else:
        config = ResNetConfig()  # microsoft/resnet-50's architecture
    config.num_labels = classes
    config.id2label = {i: f"class_{i:03d}" for i in range(classes)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    path = root / f"checkpoint-{kind}"
    torch.manual_seed(0)
    ResNetForImageClassification(config).save_pretrained(path)
    AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-50-processor")).save_pretrained(path)
    return path


# One run, in a child process -------------------------------------------------------------------------------------

def run_hf_example(options: dict, timer: StepTimer) -> None:
    from datasets import load_dataset
    from torchvision.transforms import Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, ToTensor
    from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments

    dataset = load_dataset("imagefolder", data_dir=options["data"], split="train")
    labels = dataset.features["label"].names
    processor = AutoImageProcessor.from_pretrained(options["checkpoint"])
    size = processor.size.get("shortest_edge") or (processor.size["height"], processor.size["width"])
    transform = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(),
                         Normalize(mean=processor.image_mean, std=processor.image_std)])

    def preprocess(batch):
        batch["pixel_values"] = [transform(image.convert("RGB")) for image in batch["image"]]
        return batch

    def collate_fn(examples):
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
                "labels": torch.tensor([e["label"] for e in examples])}

    dataset.set_transform(preprocess)
    model = AutoModelForImageClassification.from_pretrained(
        options["checkpoint"], num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)}, ignore_mismatched_sizes=True)
    args = TrainingArguments(
        output_dir=options["output"], remove_unused_columns=False, per_device_train_batch_size=options["batch"],
        max_steps=options["max_steps"], bf16=options["bf16"], dataloader_num_workers=options["workers"],
        learning_rate=3e-4, report_to="none", save_strategy="no", eval_strategy="no", logging_steps=10_000,
        seed=42, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collate_fn, processing_class=processor,
            callbacks=[timer]).train()


def run_hf_resnet(options: dict, timer: StepTimer) -> None:
    from hf_resnet import run
    from hf_resnet.cli import train

    class TimedTrainer(run.ImageClassificationTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(timer)

    run.ImageClassificationTrainer = TimedTrainer
    argv = ["--config", "resnet50/imagefolder_full", "--model_name_or_path", options["checkpoint"],
            "--train_dir", options["data"], "--validation_dir", options["validation"], "--do_eval", "false",
            "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
            "--output_dir", options["output"], "--per_device_train_batch_size", str(options["batch"]),
            "--max_steps", str(options["max_steps"]), "--dataloader_num_workers", str(options["workers"]),
            "--bf16", str(options["bf16"]).lower(), "--logging_steps", "10000", "--disable_tqdm", "true",
            *shlex.split(options.get("ours_args", ""))]
    if train(argv) != 0:
        raise SystemExit("hf-resnet train failed")


def child(options: dict) -> None:
    timer = StepTimer(options["warmup"], options["steps"], options.get("profile"))
    torch.manual_seed(0)
    (run_hf_example if options["method"] == "hf_example" else run_hf_resnet)(options, timer)
    if timer.seconds is None:
        raise SystemExit("the run ended before the timed steps: lower --warmup/--steps or add --images")
    images = options["steps"] * options["batch"]
    print("RESULT " + json.dumps({"images_per_second": images / timer.seconds,
                                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                  "main_thread_ms_per_step": 1000 * timer.cpu["main_thread"] / options["steps"],
                                  "main_process_ms_per_step": 1000 * timer.cpu["main_process"] / options["steps"],
                                  "worker_ms_per_image": 1000 * timer.cpu["workers"] / images}))


def run_once(options: dict, timeout: float | None = None) -> dict | None:
    """One timed run in a fresh process (no shared compile caches, workers or allocator state). A run that fails
    or outlives `timeout` seconds prints why and gives None, so one bad row does not cost the others (on a lent GPU
    the whole script gets one try)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        result = subprocess.run([sys.executable, __file__, "--child", json.dumps(options)], capture_output=True,
                                text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        print(f"\n{options['method']} {options.get('ours_args', '')}: over {timeout:.0f} s, stopped; its output "
              f"ended with:\n{str(err.stderr or '')[-2000:]}", flush=True)
        return None
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        print(f"\n{options['method']} {options.get('ours_args', '')} failed (exit {result.returncode}):\n"
              f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def compare(rows: list[tuple[str, dict]], repeats: int, profile: bool = False,
            timeout: float | None = None) -> dict[str, dict]:
    """Each (name, options) run `repeats` times, interleaved; -> name: {median images/s, CPU columns, peak RSS}
    over the runs that finished (a row none finished is left out, and said so by `run_once`).
    With `profile`, each run's main thread is profiled over the timed steps into `<output>.prof` (the last repeat's
    stays; `print_profiles` reads them)."""
    if profile:
        rows = [(name, dict(options, profile=options["output"] + ".prof")) for name, options in rows]
    results: dict[str, list[dict]] = {name: [] for name, _ in rows}
    for _ in range(repeats):
        for name, options in rows:
            result = run_once(options, timeout)
            if result is not None:
                results[name].append(result)
    return {name: {**{key: statistics.median(r[key] for r in runs) for key in runs[0] if key != "peak_rss_mib"},
                   "peak_rss_mib": max(r["peak_rss_mib"] for r in runs)} for name, runs in results.items() if runs}


# What the main thread runs per step: the Trainer's loop and the hooks hf-resnet adds (cumulative, children included).
PROFILED = ("training_step", "compute_loss", "_prepare_inputs", "backward", "guarded_step", "step", "__next__",
            "call_event", "normalize", "__call__")


def print_profile(name: str, path: str, steps: int) -> None:
    """Main-thread ms per step of the Trainer's and hf-resnet's step functions, from the steady-state profile."""
    stats = pstats.Stats(path).stats
    rows = [(cumulative * 1000 / steps, f"{Path(file).parent.name}/{Path(file).name}:{function}")
            for (file, _, function), (_, _, _, cumulative, _) in stats.items()
            if function in PROFILED and ("hf_resnet" in file or "transformers/trainer" in file
                                         or "accelerate" in file or "torch/utils/data" in file)]
    print(f"\n{name}: main-thread ms per step (cProfile, steps in the timed window; includes what they call)")
    for ms, where in sorted(rows, reverse=True)[:14]:
        print(f"  {ms:9.2f}  {where}")


def print_profiles(rows: list[tuple[str, dict]], steps: int) -> None:
    for name, options in rows:
        if Path(options["output"] + ".prof").is_file():
            print_profile(name, options["output"] + ".prof", steps)


CPU_COLUMNS = (("main_thread_ms_per_step", "main thr ms/step"), ("main_process_ms_per_step", "main proc ms/step"),
               ("worker_ms_per_image", "worker ms/img"))


def print_table(title: str, table: dict[str, dict], baseline: str) -> None:
    """images/s, the ratio to `baseline`, peak RSS, and the CPU columns where the rows have them (medians)."""
    cpu = [(key, label) for key, label in CPU_COLUMNS if any(key in row for row in table.values())]
    print(f"\n{title}")
    if baseline not in table:  # its run failed (printed above): the ratios would have nothing to divide by
        table = {baseline: {"images_per_second": float("nan"), "peak_rss_mib": 0}, **table}
    print(f"{'run':<56}{'images/s':>10}{'ratio':>8}{'peak RSS MiB':>14}" + "".join(f"{label:>19}" for _, label in cpu)
          + "   (ratio: to the first row)")
    base = table[baseline]["images_per_second"]
    for name, row in table.items():
        rss = f"{row['peak_rss_mib']:.0f}" if row["peak_rss_mib"] else "-"
        print(f"{name:<56}{row['images_per_second']:>10.1f}{row['images_per_second'] / base:>8.2f}{rss:>14}"
              + "".join(f"{row[key]:>19.2f}" if key in row else f"{'-':>19}" for key, _ in cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", nargs="+", default=["tiny"], choices=["tiny", "resnet50"])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--images", type=int, default=640)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--ours-args", default="", help="extra hf-resnet train arguments for an extra row")
    parser.add_argument("--profile", action="store_true",
                        help="also profile each run's main thread over the timed steps (cProfile) and print where "
                             "its time per step goes")
    parser.add_argument("--work", type=Path, help="where to make the data and checkpoints (default: a temp dir)")
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    work = args.work or Path(tempfile.mkdtemp(prefix="hf-resnet-train-bench-"))
    data = make_folder(args.source, work / "train", args.images, args.classes)
    validation = make_folder(args.source, work / "validation", args.classes * 2, args.classes)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    print(f"{args.images} images in {args.classes} classes from {args.source}; {device}; batch {args.batch}, "
          f"{args.workers} workers, bf16 {args.bf16}; images/s between steps {args.warmup} and "
          f"{args.warmup + args.steps}; median of {args.repeats}; load {os.getloadavg()[0]:.2f}")
    for kind in args.model:
        checkpoint = make_checkpoint(kind, work, args.classes)
        common = dict(checkpoint=str(checkpoint), data=str(data), validation=str(validation), batch=args.batch,
                      workers=args.workers, bf16=args.bf16, warmup=args.warmup, steps=args.steps,
                      max_steps=args.warmup + args.steps + 5)
        rows = [("hf_example", dict(common, method="hf_example", output=str(work / f"out-{kind}-example"))),
                ("hf_resnet", dict(common, method="hf_resnet", output=str(work / f"out-{kind}-ours")))]
        if args.ours_args:
            rows.append((f"hf_resnet {args.ours_args}", dict(common, method="hf_resnet", ours_args=args.ours_args,
                                                             output=str(work / f"out-{kind}-ours-extra"))))
        print_table(f"{kind}: training images/s", compare(rows, args.repeats, profile=args.profile), "hf_example")
        print_profiles(rows, args.steps)


if __name__ == "__main__":
    main()
