"""Does pre-training help, and which fine-tuning strategy uses it best? Offline, on 2 CPU cores, in minutes.

    python benchmarks/transfer.py [--per-class 10 30 100] [--seeds 5] [--epochs 10] [--out /tmp/hf-resnet-transfer]

1. Pre-train the smoke ResNet (`bundled:resnet-smoke`, 310,746 parameters, 32x32 inputs) from scratch on digits 0-4
   of the bundled digits (all their training images).
2. Fine-tune it on digits 5-9, a different task, from `--per-class` training images per digit (a few-shot
   subset drawn per seed), with each strategy below, at the same budget: `--epochs` epochs of batch 32, the
   report's budget (10 epochs, batch 32) by default.
3. Score each run on all validation images of digits 5-9; print the mean and spread of accuracy over the seeds,
   and the mean wall time of a run (loading, training, evaluation), one torch thread by default.

Strategies (every run goes through `hf_resnet.run.main`, as `hf-resnet train` does):
- scratch: a randomly initialised model of the same architecture, AdamW 3e-3, cosine (the smoke recipe's rate);
- linear_probe: the pre-trained backbone frozen, a new head, AdamW 1e-2;
- full: everything trains, AdamW 1e-3 for the backbone and 1e-2 for the new head;
- full_at_3e-3: a control, full fine-tuning at scratch's rate: the pre-trained start is then the only difference;
- gradual: the head alone, then stage 4 at epoch 2, stage 3 at 4, stage 2 at 6, stage 1 at 8, layer decay 0.7;
- report_recipe: `--config resnet50/report_recipe` as shipped (SGD momentum 0.9, conv1 at 0.001 and the head at
  0.01, the rest frozen with BatchNorm statistics adapting, x0.1 after epoch 5), only model, data and budget set;
- fine_tune: `--config resnet50/imagefolder_fine_tune` as shipped (fastai's fine_tune: the head alone for an epoch,
  then three groups at 1e-5 / 1e-4 / 1e-3 on a one-cycle), only model, data and budget set;
- fine_tune_lr_find: the same, at the rates `hf-resnet lr-find --at_epoch 1` suggests for it on the same data
  (valley; all three groups scaled together), the range test counted in the run's wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SOURCE_CLASSES = ["0", "1", "2", "3", "4"]
TARGET_CLASSES = ["5", "6", "7", "8", "9"]

STRATEGIES = {
    "scratch": ["--model_name_or_path", "null", "--config_name", "bundled:resnet-smoke", "--learning_rate", "0.003"],
    "linear_probe": ["--tuning", "linear_probe", "--learning_rate", "0.01"],
    "full": ["--learning_rate", "0.001", "--head_learning_rate", "0.01"],
    "full_at_3e-3": ["--learning_rate", "0.003"],  # a control: pre-trained weights at scratch's rate
    "gradual": ["--tuning", "linear_probe", "--unfreeze_epochs", "2", "4", "6", "8", "--learning_rate", "0.002",
                "--head_learning_rate", "0.01", "--layer_decay", "0.7"],
    "report_recipe": ["--config", "resnet50/report_recipe"],
    "fine_tune": ["--config", "resnet50/imagefolder_fine_tune"],
    "fine_tune_lr_find": ["--config", "resnet50/imagefolder_fine_tune"],  # + the rates lr-find suggests
}
OWN_SCHEDULE = ("report_recipe", "fine_tune", "fine_tune_lr_find")  # as shipped: their own optimizer and schedule
ADAMW_COSINE = ["--optim", "adamw_torch", "--lr_scheduler_type", "cosine", "--warmup_steps", "0.05",
                "--weight_decay", "0.0001"]


def link_classes(source: Path, target: Path, classes: list[str], per_class: int | None, seed: int) -> Path:
    """An image folder of `classes` from `source` (symlinks), `per_class` images each (all when None)."""
    rng = random.Random(seed)
    for name in classes:
        files = sorted((source / name).glob("*.png"))
        if per_class is not None:
            files = rng.sample(files, per_class)
        (target / name).mkdir(parents=True, exist_ok=True)
        for file in files:
            (target / name / file.name).symlink_to(file)
    return target


def run(argv: list[str], log: Path) -> tuple[dict, float]:
    """One `hf-resnet train ARGV`, in this process, its printed metrics into `log`; -> (metrics, seconds)."""
    from hf_resnet.parser import parse_args
    from hf_resnet.run import main

    start = time.perf_counter()
    with open(log, "a") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        metrics = main(*parse_args(argv))
    return metrics, time.perf_counter() - start


def found_rates(argv: list[str], log: Path) -> list[str]:
    """The flags that set the rates `hf-resnet lr-find --at_epoch 1` suggests for the run of `argv`."""
    from hf_resnet.lr_find import find_lr
    from hf_resnet.lr_find_cli import scaled_rates
    from hf_resnet.parser import parse_args
    from hf_resnet.run import build_trainer

    with open(log, "a") as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        arguments = parse_args(argv)
        result = find_lr(build_trainer(*arguments, resume=False).trainer, at_epoch=1)
    rate = arguments[3].learning_rate
    return scaled_rates(arguments[2], rate, result.suggested / rate)


def common(train: Path, validation: Path, out: Path, epochs: int, seed: int) -> list[str]:
    return ["--train_dir", str(train), "--validation_dir", str(validation), "--output_dir", str(out),
            "--num_train_epochs", str(epochs), "--per_device_train_batch_size", "32",
            "--per_device_eval_batch_size", "128", "--seed", str(seed), "--random_resized_crop_scale", "0.7", "1.0",
            "--horizontal_flip", "0", "--eval_strategy", "no", "--save_strategy", "no", "--logging_strategy", "no",
            "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", "true", "--log_level", "error"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, nargs="+", default=[10, 30, 100],
                        help="fine-tuning images per target digit (one table row group each)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine, 2 threads spin against other processes "
                             "and run up to 15x slower)")
    parser.add_argument("--out", default=None, help="working folder (default: a temporary one, removed after)")
    args = parser.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="hf-resnet-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "datasets-cache"))
    os.environ.setdefault("HF_RESNET_CACHE", str(work / "hf_resnet-cache"))
    logging.basicConfig(filename=work / "runs.log", level=logging.INFO, force=True)  # the runs' logs, not stdout
    import torch

    from hf_resnet.bundled import digits_image_folder

    torch.set_num_threads(args.threads)

    digits = digits_image_folder()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; working in {work}", flush=True)

    source_train = link_classes(digits / "train", work / "source" / "train", SOURCE_CLASSES, None, 0)
    source_val = link_classes(digits / "validation", work / "source" / "validation", SOURCE_CLASSES, None, 0)
    target_val = link_classes(digits / "validation", work / "target" / "validation", TARGET_CLASSES, None, 0)
    pretrained = work / "pretrained"
    pretrain = [*common(source_train, source_val, pretrained, args.pretrain_epochs, 0), "--model_name_or_path", "null",
                "--config_name", "bundled:resnet-smoke", "--per_device_train_batch_size", "64", "--learning_rate",
                "0.003", *ADAMW_COSINE]
    metrics, seconds = run(pretrain, work / "runs.log")
    print(f"pre-trained on digits 0-4 ({len(list(source_train.rglob('*.png')))} images, {args.pretrain_epochs} "
          f"epochs): accuracy {metrics['eval_accuracy']:.3f} on their validation images, {seconds:.0f} s", flush=True)

    results: dict = {}
    for per_class in args.per_class:
        for seed in range(args.seeds):
            subset = work / "target" / f"train-{per_class}-{seed}"
            link_classes(digits / "train", subset, TARGET_CLASSES, per_class, seed)
            for name in args.strategies:
                out = work / "runs" / f"{name}-{per_class}-{seed}"
                argv = [*STRATEGIES[name], *common(subset, target_val, out, args.epochs, seed)]
                if name != "scratch":
                    argv += ["--model_name_or_path", str(pretrained)]
                if name not in OWN_SCHEDULE:
                    argv += ADAMW_COSINE
                start = time.perf_counter()
                if name == "fine_tune_lr_find":
                    argv += found_rates(argv, work / "runs.log")
                metrics, _ = run(argv, work / "runs.log")
                seconds = time.perf_counter() - start  # with the range test, for fine_tune_lr_find
                results.setdefault((per_class, name), []).append((metrics["eval_accuracy"], seconds))
                print(f"  {per_class:>3}/digit seed {seed} {name:<13} accuracy {metrics['eval_accuracy']:.3f} "
                      f"({seconds:.1f} s)", flush=True)
                shutil.rmtree(out, ignore_errors=True)

    print(f"\nFine-tuning on digits 5-9 ({len(list(target_val.rglob('*.png')))} validation images), {args.epochs} "
          f"epochs of batch 32, {args.seeds} seeds (mean, min-max):\n")
    print("| images per digit | strategy | accuracy | min-max | wall time per run |")
    print("|---|---|---|---|---|")
    for (per_class, name), runs in results.items():
        accuracy = [a for a, _ in runs]
        print(f"| {per_class} | {name} | {statistics.mean(accuracy):.3f} | {min(accuracy):.3f}-{max(accuracy):.3f} | "
              f"{statistics.mean(s for _, s in runs):.1f} s |")
    (work / "results.json").write_text(json.dumps({f"{k[0]}/{k[1]}": v for k, v in results.items()}, indent=2))
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
