"""One split's report, written by the main process after the split's final evaluation, into
`output_dir/report/<split>/`:

    eval_report.json                  metrics, per-class precision/recall/F1/support, most-confused pairs
    confusion_matrix.csv              every class (rows: true, columns: predicted)
    confusion_matrix.png              counts; the most-confused classes when there are more than 30
    confusion_matrix_normalized.png   the same, as shares of each true class's images
    predictions_<split>.csv           one row per image: file or position, true label, top-5 labels and scores
    predictions_grid.png              16 images as the model saw them, true and predicted labels, mistakes in red
                                      (the mistakes of highest loss first, then correct ones drawn at random)
    gradcam.png                       Grad-CAM on 4 wrong and 4 correct predictions
    reliability_diagram.png           accuracy against confidence in 15 bins, with the ECE
    top_losses.csv / top_losses.png   the 100 (16) images of highest loss -log p(true), files and probabilities

and `output_dir/report/training_curves.png` once per run. An unlabeled split gets its predictions CSV and pictures
without the truth. Memory: the gathered top-k ids (examples x 5), the confusion counts (classes x classes) and a
handful of re-read images; never examples x classes.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from ..constants import IGNORE_INDEX, REPORT_DIR
from ..data.inputs import file_names, iter_file_names
from ..inference import Classifier
from ..training.metrics import calibration_bins, confusion_counts, expected_calibration_error
from ..training.modeling import subset_head
from .confusion import classes_to_show, most_confused, per_class_rows, write_confusion_csv
from .gradcam import grad_cam
from .model_card import SplitResult
from .plots import confusion_png, gradcam_png, predictions_grid_png, reliability_png, training_curves_png
from .predictions import write_predictions
from .top_losses import CSV_ROWS, PICTURE_IMAGES, example_losses, worst, write_top_losses

logger = logging.getLogger(__name__)

GRID_IMAGES = 16
GRADCAM_IMAGES = 8
STREAM_SCAN = 128  # a streamed split shows examples from its first images (a stream cannot be re-read by index)


def start_report(output_dir: str | Path) -> Path:
    """A fresh `report/` for this run: a previous run's splits must not linger beside this one's."""
    folder = Path(output_dir) / REPORT_DIR
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _relative(path: Path, output_dir: Path) -> str:
    return path.relative_to(output_dir).as_posix()


def write_training_curves(output_dir: str | Path, state, load_best: bool = False) -> str | None:
    """`report/training_curves.png` from the Trainer's log history (the best checkpoint marked when
    `load_best_model_at_end` restored it); None, and nothing written, when nothing was trained."""
    output_dir = Path(output_dir)
    path = output_dir / REPORT_DIR / "training_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    best = state.best_model_checkpoint if load_best else None
    best_step = int(str(best).rstrip("/").rsplit("-", 1)[-1]) if best else None
    return _relative(path, output_dir) if training_curves_png(path, state.log_history, best_step) else None


# Which images the pictures show ---------------------------------------------------------------------------------


def _pick_indices(top1: np.ndarray, true_ids: np.ndarray | None, count: int, seed: int,
                  skipped: dict[int, str], losses: np.ndarray | None = None) -> list[int]:
    """Up to half mistakes, the rest correct (unlabeled: any readable images), drawn with `seed`; mistakes first.
    With `losses`, the mistakes are those of highest loss, highest first."""
    rng = np.random.default_rng(seed)
    if true_ids is None:
        readable = np.setdiff1d(np.arange(len(top1)), np.fromiter(skipped, dtype=np.int64, count=len(skipped)))
        return sorted(rng.choice(readable, min(count, len(readable)), replace=False).tolist())
    scored = true_ids != IGNORE_INDEX
    wrong = np.flatnonzero(scored & (top1 != true_ids))
    right = np.flatnonzero(scored & (top1 == true_ids))
    n_wrong = min(len(wrong), count // 2)
    n_right = min(len(right), count - n_wrong)
    n_wrong = min(len(wrong), count - n_right)
    picks = [sorted(rng.choice(group, n, replace=False).tolist()) for group, n in ((wrong, n_wrong), (right, n_right))]
    if losses is not None:
        picks[0] = sorted(wrong.tolist(), key=lambda i: (-losses[i], i))[:n_wrong]
    return picks[0] + picks[1]


def _examples_by_index(dataset, indices: list[int]) -> list[dict]:
    names = file_names(dataset, indices)
    return [{**dataset[i], "name": Path(name).name} for i, name in zip(indices, names)]


def _examples_from_stream(dataset, classifier: Classifier, count: int) -> list[dict]:
    """The first readable examples of a stream, predicted here: up to half mistakes, mistakes first."""
    right, wrong = [], []
    stream = iter(dataset)
    while len(right) + len(wrong) < STREAM_SCAN:
        batch = [e for e in itertools.islice(stream, 32) if e.get("labels", 0) != IGNORE_INDEX]
        if not batch:
            break
        top1 = classifier.topk(torch.stack([classifier.pixels_of(e) for e in batch]), 1)[0][:, 0]
        for example, predicted in zip(batch, top1.tolist()):
            is_wrong = "labels" in example and predicted != example["labels"]
            (wrong if is_wrong else right).append({**example, "name": ""})
        if len(wrong) >= count // 2 and len(right) >= count:
            break
    n_wrong = min(len(wrong), count // 2)
    n_right = min(len(right), count - n_wrong)
    return wrong[: count - n_right] + right[:n_right]


def _pictures(folder: Path, split: str, examples: list[dict], classifier: Classifier, labels: list[str]) -> dict:
    """predictions_grid.png and gradcam.png for the chosen examples; returns name -> path written."""
    if not examples:
        return {}
    pixels = torch.stack([classifier.pixels_of(e) for e in examples])
    ids, probs = classifier.topk(pixels, 1)
    images = classifier.to_display(pixels)
    truths = [labels[e["labels"]] if "labels" in e else None for e in examples]
    predicted = [labels[i] for i in ids[:, 0].tolist()]
    correct = [None if t is None else t == p for t, p in zip(truths, predicted)]
    titles = [
        "\n".join(line for line in (f"true: {t}" if t is not None else "", f"pred: {p} ({s:.2f})", e["name"][:28])
                  if line)
        for t, p, s, e in zip(truths, predicted, probs[:, 0].tolist(), examples)
    ]
    written = {}
    wrong_count = sum(c is False for c in correct)
    grid_title = f"{split}: {len(examples)} images as the model sees them" + (
        f", {wrong_count} of them mistakes (red)" if correct[0] is not None else "")
    written["predictions_grid"] = predictions_grid_png(folder / "predictions_grid.png", images, titles, correct,
                                                       grid_title)
    # Grad-CAM: up to half wrong, half correct
    wrong = [i for i, c in enumerate(correct) if c is False][: GRADCAM_IMAGES // 2]
    others = [i for i, c in enumerate(correct) if c is not False][: GRADCAM_IMAGES - len(wrong)]
    chosen = wrong + others
    try:
        cam = grad_cam(classifier.model, classifier.normalizer(pixels[chosen]), ids[chosen, 0])
    except ValueError as err:  # a model without encoder stages
        logger.warning("No Grad-CAM picture: %s", err)
        return written
    written["gradcam"] = gradcam_png(
        folder / "gradcam.png", images[chosen], cam.maps.numpy(), [titles[i] for i in chosen],
        [correct[i] for i in chosen], f"{split}: Grad-CAM for the predicted class, on {cam.stage}",
    )
    return written


def _top_losses(folder: Path, output_dir: Path, split: str, predictions, true_ids: np.ndarray, labels: list[str],
                dataset, classifier: Classifier, names_known: bool) -> tuple[dict, dict]:
    """top_losses.csv (the 100 worst, with files; positions for a stream) and top_losses.png (the 16 worst; not
    for a stream, which cannot be re-read by index). Returns (files, figures) written."""
    ids, probs, truth = (np.asarray(part) for part in predictions[:3])
    losses = example_losses(truth, true_ids)
    indices = worst(losses, CSV_ROWS)
    files = file_names(dataset, indices) if names_known else [f"position {i}" for i in indices]
    write_top_losses(folder / "top_losses.csv", indices, losses, truth, ids, probs, true_ids, labels, files)
    written = {"top_losses_csv": _relative(folder / "top_losses.csv", output_dir)}
    shown = indices[:PICTURE_IMAGES]
    if not names_known or not shown:
        return written, {}
    examples = _examples_by_index(dataset, shown)
    pixels = torch.stack([classifier.pixels_of(e) for e in examples])
    titles = [f"pred: {labels[int(ids[i, 0])]} ({probs[i, 0]:.2f})\ntrue: {labels[int(true_ids[i])]} "
              f"(p {truth[i]:.2f})\nloss {losses[i]:.2f}  {e['name'][:22]}" for i, e in zip(shown, examples)]
    correct = [bool(ids[i, 0] == true_ids[i]) for i in shown]
    path = predictions_grid_png(folder / "top_losses.png", classifier.to_display(pixels), titles, correct,
                                f"{split}: the {len(shown)} images of highest loss -log p(true), highest first")
    return written, {"top_losses": _relative(path, output_dir)}


def _reliability(folder: Path, output_dir: Path, split: str, ids, probs, true_ids: np.ndarray) -> tuple[dict, list]:
    """reliability_diagram.png from the top-1 probabilities; returns (figures, the bins as rows)."""
    scored = true_ids != IGNORE_INDEX
    table = calibration_bins(np.asarray(probs)[scored, 0], np.asarray(ids)[scored, 0] == true_ids[scored])
    ece = expected_calibration_error(table)
    path = reliability_png(folder / "reliability_diagram.png", table, ece, f"{split}: {int(scored.sum())} images")
    edges = np.linspace(0, 1, len(table) + 1)
    rows = [{"lower": round(float(lo), 4), "upper": round(float(hi), 4), "images": int(n),
             "confidence": float(c / n) if n else None, "accuracy": float(a / n) if n else None}
            for lo, hi, (n, c, a) in zip(edges[:-1], edges[1:], table)]
    return {"reliability_diagram": _relative(path, output_dir)}, rows


# The split's report ----------------------------------------------------------------------------------------------


def _scope(classifier: Classifier, num_classes: int) -> str:
    """What the top-k of this report ranks among: the head's classes, or some rows of the checkpoint's."""
    head = subset_head(classifier.model)
    if head is None:
        return f"the model's {num_classes} classes"
    return (f"the data's {num_classes} classes, rows {head.rows.tolist()[:20]}{' ...' if num_classes > 20 else ''} "
            f"of the checkpoint's {head.full.out_features}-class head (all_classes_* metrics: among all of them)")


def write_split_report(output_dir: str | Path, split: str, predictions, label_ids: np.ndarray | None,
                       metrics: dict, prefix: str, labels: list[str], dataset, classifier: Classifier,
                       skipped: dict[int, str] | None = None, seed: int = 0,
                       calibration: dict | None = None) -> SplitResult | None:
    """Write `report/<split>/` from the gathered predictions ((n, k) top-k ids and probabilities) and label ids
    (head ids; -100 for images that could not be decoded; None when the split is unlabeled), and the probability
    of the truth when there is a third entry. `metrics` are the Trainer's, keyed `<prefix>_accuracy` etc.;
    `calibration`: the temperature scaling's record, for eval_report.json. Returns what the model card shows of it
    (None when unlabeled).
    Kept whole: one split's files in the order a reader finds them in the folder; each picture is a call."""
    output_dir = Path(output_dir)
    folder = output_dir / REPORT_DIR / split
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    skipped = skipped or {}
    ids, probs = np.asarray(predictions[0]), np.asarray(predictions[1])  # a third: ranks among all classes
    true_ids = None if label_ids is None else np.asarray(label_ids).astype(np.int64).ravel()
    files: dict[str, str] = {}

    names = iter_file_names(dataset)
    if names is None:
        # A stream's skip records carry each DataLoader worker's own example count, not the row's position: the
        # rows of a labeled stream are marked by their -100 label instead (unlabeled ones cannot be told apart).
        skipped = {}
    csv_path = folder / f"predictions_{split}.csv"
    rows = write_predictions(csv_path, ids, probs, labels, true_ids=true_ids, files=names, skipped=skipped)
    files["predictions"] = _relative(csv_path, output_dir)

    figures: dict[str, str] = {}
    result = None
    if true_ids is not None:
        counts = confusion_counts(true_ids, ids[:, 0], len(labels))
        write_confusion_csv(folder / "confusion_matrix.csv", counts, labels)
        shown = classes_to_show(counts)
        subset = counts[np.ix_(shown, shown)]
        support = counts.sum(axis=1)[shown]
        what = "" if len(shown) == len(labels) else f", the {len(shown)} most-confused of {len(labels)} classes"
        for name, normalize in (("confusion_matrix", False), ("confusion_matrix_normalized", True)):
            path = confusion_png(folder / f"{name}.png", subset, [labels[i] for i in shown], support, normalize,
                                 f"{split}: {int(counts.sum())} images{what}"
                                 + (" (share of each true class)" if normalize else ""))
            figures[name] = _relative(path, output_dir)
        reliability, bins = _reliability(folder, output_dir, split, ids, probs, true_ids)
        figures.update(reliability)
        if len(predictions) > 2:
            written, pictures = _top_losses(folder, output_dir, split, predictions, true_ids, labels, dataset,
                                            classifier, names is not None)
            files.update(written)
            figures.update(pictures)
        plain = {k.removeprefix(f"{prefix}_"): v for k, v in metrics.items() if k.startswith(f"{prefix}_")}
        result = SplitResult(split=split, metrics=plain, per_class=per_class_rows(counts, labels),
                             most_confused=most_confused(counts, labels))
        report = {
            "split": split,
            "metrics": metrics,
            "images": rows,
            "scored": int(counts.sum()),
            "skipped": int((true_ids == IGNORE_INDEX).sum()),
            "scored_among": _scope(classifier, len(labels)),
            "rows_identified_by": "file" if names is not None else
            "position in the evaluated stream (streamed data does not carry file names)",
            "per_class": result.per_class,
            "most_confused": result.most_confused,
            "reliability_bins": bins,
            **({"calibration": calibration} if calibration is not None else {}),
        }
        (folder / "eval_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        files = {"eval_report": _relative(folder / "eval_report.json", output_dir),
                 "confusion_matrix_csv": _relative(folder / "confusion_matrix.csv", output_dir), **files}

    if names is not None:
        losses = example_losses(predictions[2], true_ids) if true_ids is not None and len(predictions) > 2 else None
        examples = _examples_by_index(dataset, _pick_indices(ids[:, 0], true_ids, GRID_IMAGES, seed, skipped, losses))
    else:
        examples = _examples_from_stream(dataset, classifier, GRID_IMAGES)
    for name, path in _pictures(folder, split, examples, classifier, labels).items():
        figures[name] = _relative(path, output_dir)
    logger.info("Wrote the %s report (%d predictions, %s) to %s", split, rows, ", ".join(sorted(figures)), folder)
    if result is not None:
        result.figures, result.files = figures, files
    return result
