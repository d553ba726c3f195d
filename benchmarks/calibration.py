"""Plain vs test-time augmentation vs temperature-scaled, on `transfer.py`'s data, offline, in minutes.

    python benchmarks/calibration.py [--per-class 30] [--seeds 3] [--epochs 10] [--pretrain-epochs 15]

The smoke ResNet pre-trained on digits 0-4, then fully fine-tuned (transfer.py's `full`: AdamW 1e-3, head 1e-2,
cosine) on `--per-class` images per digit of 5-9, with `temperature_scaling: true` and each `tta` mode but flip
(a mirrored digit is another digit). Each row: the validation split of digits 5-9, mean over the seeds: top-1
plain and with TTA, ECE before and after temperature scaling (T fitted on that same split: an optimistic ECE
after, as Guo et al. fit on a held-out part), the temperature, and the wall time of a run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

from transfer import ADAMW_COSINE, SOURCE_CLASSES, STRATEGIES, TARGET_CLASSES, common, link_classes, run

MODES = ["five_crop", "augment"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pretrain-epochs", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="hf-resnet-calibration-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_RESNET_CACHE", str(work / "hf_resnet-cache"))
    logging.basicConfig(filename=work / "runs.log", level=logging.INFO, force=True)
    import torch

    from hf_resnet.bundled import digits_image_folder

    torch.set_num_threads(1)
    digits = digits_image_folder()
    source_train = link_classes(digits / "train", work / "source" / "train", SOURCE_CLASSES, None, 0)
    source_val = link_classes(digits / "validation", work / "source" / "validation", SOURCE_CLASSES, None, 0)
    target_val = link_classes(digits / "validation", work / "target" / "validation", TARGET_CLASSES, None, 0)
    pretrained = work / "pretrained"
    run([*common(source_train, source_val, pretrained, args.pretrain_epochs, 0), "--model_name_or_path", "null",
         "--config_name", "bundled:resnet-smoke", "--per_device_train_batch_size", "64", "--learning_rate", "0.003",
         *ADAMW_COSINE], work / "runs.log")
    rows: dict = {}
    for seed in range(args.seeds):
        subset = link_classes(digits / "train", work / "target" / f"train-{seed}", TARGET_CLASSES, args.per_class,
                              seed)
        for mode in MODES:
            out = work / "runs" / f"{mode}-{seed}"
            argv = [*STRATEGIES["full"], *common(subset, target_val, out, args.epochs, seed), *ADAMW_COSINE,
                    "--model_name_or_path", str(pretrained), "--temperature_scaling", "true", "--tta", mode]
            metrics, seconds = run(argv, work / "runs.log")
            report = json.loads((out / "report" / "validation" / "eval_report.json").read_text())
            calibration = report["calibration"]
            rows.setdefault(mode, []).append((metrics["eval_accuracy"], metrics["eval_tta_accuracy"],
                                              calibration["ece_before"], calibration["ece_after"],
                                              calibration["temperature"], seconds))
            print(f"  seed {seed} {mode:<9} " + " ".join(f"{v:.4f}" for v in rows[mode][-1]), flush=True)
    print(f"\n{args.per_class} images per digit, {args.epochs} epochs, {args.seeds} seeds (mean):\n")
    print("| tta | top-1 plain | top-1 TTA | ECE before | ECE after | T | wall time per run |")
    print("|---|---|---|---|---|---|---|")
    for mode, values in rows.items():
        mean = [statistics.mean(column) for column in zip(*values)]
        print(f"| {mode} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.4f} | {mean[3]:.4f} | {mean[4]:.2f} | "
              f"{mean[5]:.1f} s |")


if __name__ == "__main__":
    sys.exit(main())
