"""The report's pictures, drawn with matplotlib's Agg canvas (no display, no global pyplot state): confusion
matrix, training curves, a grid of predictions beside the truth, Grad-CAM overlays (also as one picture for
`hf-resnet demo`). Pure drawing: the numbers and images come from the caller."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

CORRECT, WRONG, NEUTRAL = "#1a7f37", "#cf222e", "#24292f"
DPI = 100
GRADCAM_COLOURS, GRADCAM_ALPHA = "jet", 0.45  # red: the evidence for the class


def _short(name: str, width: int = 22) -> str:
    name = str(name)
    return name if len(name) <= width else name[: width - 1] + "…"


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return Path(path)


def confusion_png(path: Path, counts: np.ndarray, labels: Sequence[str], support: np.ndarray, normalize: bool,
                  title: str) -> Path:
    """`counts`: the rows and columns to show (all classes, or the most-confused subset); `support`: each shown
    true class's total images, so a normalised cell is the share of that class's images, whatever is hidden."""
    counts = np.asarray(counts)
    n = counts.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(support[:, None] > 0, counts / np.maximum(support[:, None], 1), 0.0)
    values = shares if normalize else counts
    side = min(max(4.5, 0.36 * n + 2.5), 14.0)
    figure = Figure(figsize=(side + 1.2, side))
    axes = figure.add_subplot()
    # pcolormesh draws one square per cell: no display-sized image buffer, crisp at any size
    # square-root colour scale: a 3% confusion is still visible beside a 90% diagonal
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=1 if normalize else max(1, int(values.max())))
    mesh = axes.pcolormesh(values, cmap="Blues", norm=norm)
    axes.set_xlim(0, n)
    axes.set_ylim(n, 0)  # true class 0 at the top, as a table reads
    axes.set_aspect("equal")
    figure.colorbar(mesh, ax=axes, fraction=0.046, pad=0.04,
                    label="share of the true class's images" if normalize else "images")
    names = [_short(label) for label in labels]
    font = 10 if n <= 12 else 8 if n <= 20 else 7
    centres = [i + 0.5 for i in range(n)]
    axes.set_xticks(centres, names, rotation=60, ha="right", rotation_mode="anchor", fontsize=font)
    axes.set_yticks(centres, names, fontsize=font)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title, fontsize=11)
    if n <= 20:  # a number in every cell while they are readable
        threshold = (1 if normalize else values.max()) * 0.3  # white text on the darker half of the scale
        for i in range(n):
            for j in range(n):
                if counts[i, j] == 0:
                    continue
                text = f"{shares[i, j]:.0%}" if normalize else str(int(counts[i, j]))
                axes.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=max(5, font - 1),
                          color="white" if values[i, j] > threshold else NEUTRAL)
    return _save(figure, path)


def _history_points(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for entry in log_history:
        if "train_runtime" in entry:  # the end-of-training summary: later entries are final evaluations
            break
        if key in entry and "step" in entry:
            steps.append(int(entry["step"]))
            values.append(float(entry[key]))
    return steps, values


def training_curves_png(path: Path, log_history: list[dict], best_step: int | None = None) -> Path | None:
    """Train loss, eval loss and eval metrics against optimizer steps; None when nothing was trained."""
    train_steps, train_loss = _history_points(log_history, "loss")
    if not train_steps:
        return None
    figure = Figure(figsize=(12, 4.2))
    loss_axes, metric_axes = figure.subplots(1, 2)
    loss_axes.plot(train_steps, train_loss, color="#0969da", label="train loss", linewidth=1.4)
    eval_steps, eval_loss = _history_points(log_history, "eval_loss")
    if eval_steps:
        loss_axes.plot(eval_steps, eval_loss, "o-", color="#bc4c00", label="eval loss", linewidth=1.4, markersize=4)
    loss_axes.set_xlabel("optimizer step")
    loss_axes.set_ylabel("cross-entropy loss")
    loss_axes.set_title("Loss")
    lowest = 1.0
    for key, name, colour in (("eval_accuracy", "eval top-1 accuracy", "#1a7f37"),
                              ("eval_top5_accuracy", "eval top-5 accuracy", "#8250df"),
                              ("eval_f1_macro", "eval macro F1", "#bf8700")):
        steps, values = _history_points(log_history, key)
        if steps:
            metric_axes.plot(steps, values, "o-", label=name, color=colour, linewidth=1.4, markersize=4)
            lowest = min(lowest, *values)
    metric_axes.set_xlabel("optimizer step")
    metric_axes.set_title("Evaluation" if metric_axes.lines else "Evaluation (none during training)")
    metric_axes.set_ylim(max(0.0, math.floor(lowest * 10 - 0.2) / 10), 1.01)  # from just below the lowest point
    for axes in (loss_axes, metric_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best_step is not None:
            axes.axvline(best_step, color=NEUTRAL, linestyle=":", linewidth=1, label=f"best checkpoint ({best_step})")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=9)
    return _save(figure, path)


def _frame(axes, colour: str) -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3 if colour == WRONG else 1.5)


def _colour(correct: bool | None) -> str:
    return NEUTRAL if correct is None else CORRECT if correct else WRONG


def predictions_grid_png(path: Path, images: Sequence[np.ndarray], titles: Sequence[str],
                         correct: Sequence[bool | None], title: str, columns: int = 4) -> Path:
    """Pictures as the model saw them, each titled with its true and predicted label; mistakes framed in red."""
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    figure = Figure(figsize=(3.0 * columns, 3.3 * rows))
    for index in range(rows * columns):
        axes = figure.add_subplot(rows, columns, index + 1)
        if index >= len(images):
            axes.axis("off")
            continue
        axes.imshow(images[index], interpolation="nearest" if images[index].shape[0] < 96 else "antialiased")
        axes.set_title(titles[index], fontsize=9, color=_colour(correct[index]))
        _frame(axes, _colour(correct[index]))
    figure.suptitle(title, fontsize=12)
    return _save(figure, path)


def gradcam_png(path: Path, images: Sequence[np.ndarray], maps: Sequence[np.ndarray], titles: Sequence[str],
                correct: Sequence[bool | None], title: str, pairs_per_row: int = 2) -> Path:
    """Each image beside its Grad-CAM overlay (red: the evidence for the predicted class)."""
    pairs_per_row = max(1, min(pairs_per_row, len(images)))
    rows = max(1, -(-len(images) // pairs_per_row))
    figure = Figure(figsize=(3.0 * 2 * pairs_per_row, 3.3 * rows))
    for index in range(rows * pairs_per_row):
        image_axes = figure.add_subplot(rows, 2 * pairs_per_row, 2 * index + 1)
        overlay_axes = figure.add_subplot(rows, 2 * pairs_per_row, 2 * index + 2)
        if index >= len(images):
            image_axes.axis("off")
            overlay_axes.axis("off")
            continue
        smooth = "nearest" if images[index].shape[0] < 96 else "antialiased"
        image_axes.imshow(images[index], interpolation=smooth)
        image_axes.set_title(titles[index], fontsize=9, color=_colour(correct[index]))
        overlay_axes.imshow(images[index], interpolation=smooth)
        overlay_axes.imshow(maps[index], cmap=GRADCAM_COLOURS, alpha=GRADCAM_ALPHA, vmin=0, vmax=1,
                           interpolation="bilinear")
        overlay_axes.set_title("Grad-CAM", fontsize=9)
        _frame(image_axes, _colour(correct[index]))
        _frame(overlay_axes, _colour(correct[index]))
    figure.suptitle(title, fontsize=12)
    return _save(figure, path)


def gradcam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = GRADCAM_ALPHA) -> np.ndarray:
    """One picture (H, W, 3) uint8 with its Grad-CAM map (H, W, in [0, 1]) laid over it in gradcam_png's colours,
    as one uint8 array (the demo's overlay)."""
    colours = colormaps[GRADCAM_COLOURS](np.clip(cam, 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * (image.astype(np.float64) / 255.0) + alpha * colours
    return np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)


def reliability_png(path: Path, table: np.ndarray, ece: float, title: str) -> Path:
    """A reliability diagram: the accuracy of each equal-width confidence bin beside its mean confidence (the
    diagonal is a calibrated model; bars under it: over-confident), and how many images each bin holds."""
    table = np.asarray(table, dtype=np.float64)
    bins = len(table)
    edges = np.linspace(0.0, 1.0, bins + 1)
    count = table[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = np.where(count > 0, table[:, 2] / np.maximum(count, 1), 0.0)
        confidence = np.where(count > 0, table[:, 1] / np.maximum(count, 1), 0.0)
    figure = Figure(figsize=(5.5, 6.4))
    axes, counts_axes = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / bins
    axes.bar(edges[:-1], accuracy, width=width, align="edge", color="#0969da", edgecolor="white", label="accuracy")
    axes.bar(edges[:-1], confidence - accuracy, bottom=accuracy, width=width, align="edge", color=WRONG, alpha=0.3,
             edgecolor=WRONG, label="gap to the mean confidence")
    axes.plot([0, 1], [0, 1], linestyle="--", color=NEUTRAL, linewidth=1, label="calibrated")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_ylabel("accuracy in the bin")
    axes.set_title(f"{title}\nECE {ece:.4f} ({bins} bins)", fontsize=11)
    axes.legend(fontsize=9, loc="upper left")
    axes.grid(alpha=0.3)
    counts_axes.bar(edges[:-1], count, width=width, align="edge", color="#8c959f", edgecolor="white")
    counts_axes.set_xlabel("confidence (top-1 probability)")
    counts_axes.set_ylabel("images")
    counts_axes.grid(alpha=0.3)
    return _save(figure, path)


def lr_find_png(path: Path, rates: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                suggestions: dict[str, tuple[float, float]], chosen: str) -> Path:
    """`hf-resnet lr-find`'s curve: each step's loss (faint) and its smoothed value against the rate (log axis);
    each suggestion a marker on the smoothed curve at (rate, loss), the chosen one named in the title."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.add_subplot()
    axes.plot(rates, losses, color="#8c959f", linewidth=0.8, alpha=0.6, label="loss")
    axes.plot(rates, smoothed, color=NEUTRAL, linewidth=1.6, label="smoothed loss")
    markers = {"valley": ("o", "#cf222e"), "slide": ("s", "#0969da"), "minimum": ("v", "#1a7f37"),
               "steep": ("^", "#8250df")}
    for name, (rate, loss) in suggestions.items():
        shape, colour = markers.get(name, ("x", NEUTRAL))
        axes.plot([rate], [loss], linestyle="none", marker=shape, markersize=9 if name == chosen else 6,
                  color=colour, label=f"{name}: {rate:.2g}" + (" (suggested)" if name == chosen else ""))
    axes.set_xscale("log")
    axes.set_xlabel("learning_rate (every group's rate scaled with it)")
    axes.set_ylabel("training loss")
    top = max(smoothed[: max(1, len(smoothed) // 10)] + [min(smoothed) * 4]) if smoothed else 1.0
    axes.set_ylim(min(min(losses), min(smoothed)) * 0.95, top * 1.05)
    axes.set_title(f"Learning-rate range test: suggested {suggestions[chosen][0]:.2g} ({chosen})")
    axes.grid(True, which="both", alpha=0.25)
    axes.legend(fontsize=8)
    return _save(figure, path)
