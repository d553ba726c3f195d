"""`hf-resnet predict`: each image's top-k labels, probabilities and time, for files and folders.

Imports only argparse at the top, so `hf-resnet --help` stays fast; the model loads when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .constants import DEFAULT_MAX_PIXELS, TTA_MODES
from .flags import add_model_flags, both, pixels, positive, share


def _image_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """The images named or found (recursively) in folders, in order; and the arguments that are neither."""
    from .data.folders import list_images

    files, missing = [], []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = list_images(path)
            files += [str(p) for p in found]
            if not found:
                missing.append(f"{name}: a folder without images")
        elif path.is_file():
            files.append(name)
        else:
            missing.append(f"{name}: no such file or folder")
    return files, missing


def _format_prediction(prediction, width: int) -> str:
    if prediction.error:
        return f"{prediction.file}: cannot read it ({prediction.error})"
    lines = [f"{prediction.file}  computation time {prediction.seconds * 1000:.1f} ms"]
    lines += [f"  {label:<{width}}  {score:.4f}" for label, score in zip(prediction.labels, prediction.scores)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import time

    import torch
    import transformers
    from tqdm.auto import tqdm

    from .errors import HfResnetError
    from .hub import settle_offline_mode
    from .inference import Classifier
    from .reports.predictions import PredictionsCsv

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights" would come before every answer
    files, missing = _image_files(args.images)
    for line in missing:
        print(line, file=sys.stderr)
    if not files:
        print("hf-resnet predict: no image to predict; pass image files or folders that hold images.", file=sys.stderr)
        return 2
    settle_offline_mode([args.model])  # no Hub: a cached model loads at once, a missing one fails at once
    try:
        device = torch.device(args.device) if args.device else None
        classifier = Classifier.load(args.model, device=device, revision=args.revision, token=args.token,
                                     allow_pickle_weights=args.allow_pickle_weights, tta=args.tta,
                                     tta_passes=args.tta_passes, image_size=args.eval_image_size,
                                     crop_pct=args.eval_crop_pct)
    except (HfResnetError, RuntimeError) as err:
        print(f"hf-resnet predict: {err}", file=sys.stderr)
        return 2
    k = min(args.top_k, len(classifier.labels))
    width = max(len(label) for label in classifier.labels)
    classifier.warm_up()  # not billed to the first image
    output = PredictionsCsv(args.output, k) if args.output else None
    progress = tqdm(total=len(files), unit="image", file=sys.stderr,
                    disable=len(files) <= args.batch_size or not sys.stderr.isatty())
    failed, read_seconds, start = 0, 0.0, time.perf_counter()
    try:
        for index, prediction in enumerate(classifier.predict_files(files, k=k, batch_size=args.batch_size,
                                                                    max_pixels=args.max_image_pixels or None,
                                                                    on_batch=progress.update)):
            failed += prediction.error is not None
            read_seconds += prediction.seconds if prediction.error is None else 0.0
            progress.write(_format_prediction(prediction, width), file=sys.stdout)
            if output is not None:
                output.write(index, prediction.file, "", prediction.labels, prediction.scores, prediction.error or "")
    finally:
        progress.close()
        if output is not None:
            output.close()
    seconds = time.perf_counter() - start
    read = len(files) - failed
    # per image: the images read (their decoding, preprocessing and share of the forward), not the failed files
    print(f"{read} image(s) in {seconds:.2f} s: {1000 * read_seconds / max(read, 1):.1f} ms per image including "
          "decoding "
          f"(batch {args.batch_size}, {classifier.device}"
          + (f", {torch.get_num_threads()} CPU thread(s))" if classifier.device.type == "cpu" else ")")
          + (f"; {failed} could not be read" if failed else "")
          + (f"; written to {args.output}" if args.output else ""))
    return 1 if failed or missing else 0


def add_command(commands) -> argparse.ArgumentParser:
    """`hf-resnet predict` in the command line's sub-commands (`cli.build_parser`)."""
    predict = commands.add_parser(
        "predict", help="top-k labels, probabilities and time per image for image files or folders",
        description="Print each image's top-k labels with their probabilities and its computation time (decoding, "
        "preprocessing and its share of the batch's forward pass). Folders are searched recursively and predicted "
        "in batches. A file that cannot be read gets its own line and exit code 1; the others are still predicted.")
    predict.add_argument("model", metavar="MODEL", help="local model folder or Hub id (from the cache when "
                         "HF_HUB_OFFLINE=1)")
    predict.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+", help="image files and/or folders")
    predict.add_argument(*both("--top_k"), type=positive, default=5, metavar="K",
                         help="labels shown per image (default 5)")
    predict.add_argument(*both("--batch_size"), type=positive, default=16, metavar="N",
                         help="images per forward pass (default 16)")
    predict.add_argument("--output", metavar="CSV", help="also write every prediction to this CSV file (columns: "
                         "index, file, true_label (empty), predicted_label, score, topK labels and scores, skipped)")
    predict.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    add_model_flags(predict)
    predict.add_argument(*both("--max-image-pixels"), dest="max_image_pixels", type=pixels, default=DEFAULT_MAX_PIXELS,
                         metavar="N", help=f"refuse images over N pixels (default {DEFAULT_MAX_PIXELS:,}; 0: none)")
    predict.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation: the mirror "
                         "image (flip), the four corners and the centre (five_crop) or N training augmentations "
                         "(augment) averaged with the plain view (default none)")
    predict.add_argument(*both("--tta_passes"), type=positive, default=4, metavar="N",
                         help="augmented passes of --tta augment (default 4)")
    predict.add_argument(*both("--eval_image_size"), type=positive, metavar="N",
                         help="predict at this input size instead of the processor's crop")
    predict.add_argument(*both("--eval_crop_pct"), type=share, metavar="X",
                         help="with it: crop / resized short side (default the processor's)")
    predict.set_defaults(run=run)
    return predict
