"""Peak memory of streamed training against the number of images: hf-resnet with `streaming: true` trains one epoch
over N, 2N and 4N images and prints each run's peak RSS (main process, and the largest DataLoader worker).
Flat figures mean nothing is materialised per image; a line growing with N would be a leak.

    python benchmarks/streaming_memory.py [--images 400] [--source DIR] [--workers 2]

Each run is its own process: `hf-resnet train --config smoke/imagefolder_smoke --streaming true` (the small
bundled ResNet, so the run is quick) on a folder of hard links to the JPEGs under --source, evaluation off.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as bench  # noqa: E402  (make_folder)


def child(options: dict) -> None:
    from hf_resnet.cli import train

    start = time.perf_counter()
    code = train(["--config", "smoke/imagefolder_smoke", "--train_dir", options["data"], "--validation_dir",
                  options["validation"], "--streaming", "true", "--num_train_epochs", "1", "--do_eval", "false",
                  "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
                  "--dataloader_num_workers", str(options["workers"]), "--output_dir", options["output"],
                  "--disable_tqdm", "true", "--logging_steps", "100000"])
    if code != 0:
        raise SystemExit(code)
    print("RESULT " + json.dumps({
        "seconds": time.perf_counter() - start,
        "main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "steps": json.loads((Path(options["output"]) / "trainer_state.json").read_text())["global_step"],
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=400, help="N: the runs read N, 2N and 4N images")
    parser.add_argument("--source", type=Path, default=bench.DEFAULT_SOURCE)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child))
    work = Path(tempfile.mkdtemp(prefix="hf-resnet-stream-mem-"))
    validation = bench.make_folder(args.source, work / "validation", 20, 10)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(bench.REPO), os.environ.get("PYTHONPATH", "")])}
    print(f"streamed training, one epoch, {args.workers} workers, from {args.source}; load "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'images':>8}{'steps':>7}{'seconds':>9}{'main peak RSS MiB':>19}{'worker peak RSS MiB':>21}")
    for images in (args.images, 2 * args.images, 4 * args.images):
        data = bench.make_folder(args.source, work / f"train-{images}", images, 10)
        options = dict(data=str(data), validation=str(validation), workers=args.workers,
                       output=str(work / f"out-{images}"))
        result = subprocess.run([sys.executable, __file__, "--child", json.dumps(options)], capture_output=True,
                                text=True, env=env)
        lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        if result.returncode != 0 or not lines:
            raise SystemExit(f"run failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        row = json.loads(lines[-1][len("RESULT "):])
        print(f"{images:>8}{row['steps']:>7}{row['seconds']:>9.1f}{row['main_mib']:>19.0f}{row['worker_mib']:>21.0f}",
              flush=True)


if __name__ == "__main__":
    main()
