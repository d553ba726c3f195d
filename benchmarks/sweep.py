"""Pruning's worth on a sweep: the same sweep of the smoke recipe on the bundled digits with the median pruner and
with none, same seed, space and trials; wall time, epochs trained and the best objective of each, and their ratio.

    python benchmarks/sweep.py [--n_trials 12] [--epochs 4] [--space smoke/digits_sweep] [--output DIR]

Each sweep runs in its own process (`hf-resnet sweep`, offline), one after the other, into a temporary folder
(or --output). With the same seed both sample the same first trials; after the median pruner's 3 start-up
trials it stops a trial whose evaluation falls below the median of the others' at that epoch, and TPE then
samples from a history that differs, so the two sweeps' later trials differ too.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_sweep(pruner: str, output: Path, args) -> dict:
    command = [sys.executable, "-m", "hf_resnet.cli", "sweep", "--config", "smoke/digits_smoke", "--space", args.space,
               "--n_trials", str(args.n_trials), "--output_dir", str(output / pruner), "--pruner", pruner,
               "--num_train_epochs", str(args.epochs), "--dataloader_num_workers", str(args.workers)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"the {pruner} sweep failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    with open(output / pruner / "trials.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: float(r["objective"]))
    return {"pruner": pruner, "seconds": seconds, "pruned": sum(r["state"] == "PRUNED" for r in rows),
            "epochs": sum(float(r["epochs"]) for r in rows), "best": float(best["objective"]),
            "best_trial": best["number"], "summary": result.stdout.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (the smoke recipe's 12 by default "
                        "would take a minute a trial)")
    parser.add_argument("--space", default="smoke/digits_sweep")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers per trial")
    parser.add_argument("--output", type=Path, help="keep the sweeps here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hf-resnet-sweep-bench-") as temporary:
        output = args.output or Path(temporary)
        results = [run_sweep(pruner, output, args) for pruner in ("none", "median")]
    print(f"\n{args.n_trials} trials of {args.epochs} epochs, smoke/digits_smoke on bundled:digits, {args.space}, "
          f"TPE seeded 42, {os.cpu_count()} CPU cores")
    print(f"{'pruner':<8} {'wall s':>8} {'pruned':>7} {'epochs':>7} {'best accuracy':>14} {'best trial':>11}")
    for r in results:
        print(f"{r['pruner']:<8} {r['seconds']:8.1f} {r['pruned']:7d} {r['epochs']:7.0f} {r['best']:14.4f} "
              f"{r['best_trial']:>11}")
    none, median = results
    print(f"median / none: wall time x{median['seconds'] / none['seconds']:.2f}, epochs trained "
          f"x{median['epochs'] / none['epochs']:.2f}, best accuracy {median['best'] - none['best']:+.4f}")


if __name__ == "__main__":
    main()
