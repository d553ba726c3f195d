"""The training loss when it is more than plain cross-entropy: soft targets, so that label smoothing, mixup, CutMix
and class weights compose, and images that could not be decoded (label -100) count for nothing.

For each example i whose label is not -100, with target distribution t_i (one-hot, or mixed) and class weights w:
    t'_i   = (1 - eps) t_i + eps / K                       label smoothing over K classes
    loss_i = -sum_k t'_ik log softmax(logits_i)_k
    a_i    = sum_k w_k t_ik                                 the example's weight (w_{y_i} for a one-hot target)
    loss   = sum_i a_i loss_i / sum_i a_i
Without mixing this is torch's `cross_entropy(logits, labels, weight=w, ignore_index=-100)`, and with smoothing
and no weights `cross_entropy(..., label_smoothing=eps)`. Mixup and CutMix pair each decodable image with the
previous decodable one in the batch (the batch is shuffled, so pairs are random; a blank -100 image is never mixed
in). Their random draws come from torch's global generator, which a resumed run restores.

Evaluation keeps the model's own cross-entropy, so `eval_loss` compares across strategies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .constants import IGNORE_INDEX


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float targets; a row whose label is -100 is all zeros (it weighs nothing)."""
    valid = labels != IGNORE_INDEX
    targets = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32, device=labels.device)
    targets[valid] = F.one_hot(labels[valid], num_classes).float()
    return targets


def mixup(pixels: torch.Tensor, targets: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each row with the previous one (row 0 with the last): lam of its own, 1 - lam of its partner."""
    return lam * pixels + (1 - lam) * pixels.roll(1, 0), lam * targets + (1 - lam) * targets.roll(1, 0)


def cutmix(pixels: torch.Tensor, targets: torch.Tensor, box: tuple[int, int, int, int]
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the box (top, left, height, width) of each row's partner (the previous row) into it; the targets
    mix by the box's share of the area."""
    top, left, height, width = box
    rows, cols = slice(top, top + height), slice(left, left + width)
    mixed = pixels.clone()
    mixed[..., rows, cols] = pixels.roll(1, 0)[..., rows, cols]
    lam = 1.0 - height * width / (pixels.shape[-2] * pixels.shape[-1])
    return mixed, lam * targets + (1 - lam) * targets.roll(1, 0)


def draw_box(height: int, width: int, lam: float) -> tuple[int, int, int, int]:
    """CutMix's box for a drawn lam: sides sqrt(1 - lam) of the image's, centred at a uniform point, clipped."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, left, bottom - top, right - left


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """The loss above; rows of `targets` that are all zero (label -100) are left out. 0/0 (nan) when every row is."""
    num_classes = targets.shape[-1]
    row_sums = targets.sum(-1, keepdim=True)  # 1 for a real example, 0 for a skipped one
    smoothed = (1.0 - smoothing) * targets + smoothing / num_classes * row_sums
    per_example = -(smoothed * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    weights = row_sums.squeeze(-1) if class_weights is None else targets @ class_weights.to(targets)
    return (weights * per_example).sum() / weights.sum()


class TrainingLoss:
    """Mixes a training batch and scores it; `active` is False when plain cross-entropy would do."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, class_weights: list[float] | None = None,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)

    @property
    def active(self) -> bool:
        return bool(self.label_smoothing or self.class_weights is not None or self.mixup_alpha or self.cutmix_alpha)

    def _draw_lam(self, alpha: float) -> float:
        return float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())

    def mix(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, soft targets): mixup or CutMix (one of them, at random, when both are on) among the rows whose
        label is not -100; other rows keep their pixels and get all-zero targets."""
        targets = one_hot(labels, self.num_classes)
        rows = (labels != IGNORE_INDEX).nonzero().squeeze(-1)
        use = [name for name, alpha in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if alpha > 0]
        if not use or rows.numel() < 2:
            return pixels, targets
        kind = use[int(torch.randint(len(use), ()))] if len(use) > 1 else use[0]
        if kind == "mixup":
            mixed, mixed_targets = mixup(pixels[rows], targets[rows], self._draw_lam(self.mixup_alpha))
        else:
            box = draw_box(pixels.shape[-2], pixels.shape[-1], self._draw_lam(self.cutmix_alpha))
            mixed, mixed_targets = cutmix(pixels[rows], targets[rows], box)
        pixels, targets = pixels.clone(), targets.clone()
        pixels[rows], targets[rows] = mixed.to(pixels.dtype), mixed_targets
        return pixels, targets

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(logits, targets, self.label_smoothing, self.class_weights)
