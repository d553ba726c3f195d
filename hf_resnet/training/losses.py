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
in). Their random draws come from torch's global generator, which a resumed run restores. Nothing here reads a
device tensor on the host: on a GPU the loss adds no wait per step.

Evaluation keeps the model's own cross-entropy, so `eval_loss` compares across strategies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float targets; a row whose label is -100 is all zeros (it weighs nothing). Built by a scatter: no read of the
    labels on the host (`F.one_hot` checks their range there, a sync per step on a GPU)."""
    valid = labels != IGNORE_INDEX
    targets = torch.zeros(labels.shape[0], num_classes, dtype=torch.float32, device=labels.device)
    targets.scatter_(1, torch.where(valid, labels, 0).unsqueeze(1), 1.0)  # any other label out of range fails
    return targets * valid.unsqueeze(1)


def previous_rows(count: int, device=None) -> torch.Tensor:
    """Each row's partner when every row takes part: the previous one (row 0 takes the last)."""
    return (torch.arange(count, device=device) - 1) % count


def partners(valid: torch.Tensor) -> torch.Tensor:
    """Each valid row's partner: the previous valid row in the batch (the first valid row takes the last); a
    skipped row, or a lone valid one, is its own. On the device: nothing is read on the host."""
    positions = torch.arange(valid.shape[0], device=valid.device)
    order = torch.argsort((~valid).to(torch.uint8), stable=True)  # valid rows first, in batch order
    count = valid.sum()
    previous = torch.where(positions == 0, count - 1, positions - 1).clamp(min=0)
    partner = torch.empty_like(order)
    partner[order] = order[previous]  # the row at sorted position j takes the row at sorted position j - 1
    return torch.where(valid, partner, positions)


def mixup(pixels: torch.Tensor, targets: torch.Tensor, lam: float, partner: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend each row with its partner (default: the previous row; row 0 with the last): lam of its own, 1 - lam of
    its partner."""
    partner = previous_rows(pixels.shape[0], pixels.device) if partner is None else partner
    return lam * pixels + (1 - lam) * pixels[partner], lam * targets + (1 - lam) * targets[partner]


def cutmix(pixels: torch.Tensor, targets: torch.Tensor, box: tuple[int, int, int, int],
           partner: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste the box (top, left, height, width) of each row's partner (default: the previous row) into it; the
    targets mix by the box's share of the area."""
    partner = previous_rows(pixels.shape[0], pixels.device) if partner is None else partner
    top, left, height, width = box
    rows, cols = slice(top, top + height), slice(left, left + width)
    mixed = pixels.clone()
    mixed[..., rows, cols] = pixels[partner][..., rows, cols]
    lam = 1.0 - height * width / (pixels.shape[-2] * pixels.shape[-1])
    return mixed, lam * targets + (1 - lam) * targets[partner]


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
    weights = row_sums.squeeze(-1) if class_weights is None else targets @ class_weights
    return (weights * per_example).sum() / weights.sum()


class TrainingLoss:
    """Mixes a training batch and scores it; `active` is False when plain cross-entropy would do."""

    def __init__(self, num_classes: int, label_smoothing: float = 0.0, class_weights: list[float] | None = None,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self._weights_on: dict[torch.device, torch.Tensor] = {}  # copied to each device once, not every step

    @property
    def active(self) -> bool:
        return bool(self.label_smoothing or self.class_weights is not None or self.mixup_alpha or self.cutmix_alpha)

    def _draw_lam(self, alpha: float) -> float:
        return float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample())

    def mix(self, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels, soft targets): mixup or CutMix (one of them, at random, when both are on) among the rows whose
        label is not -100 (each with the previous such row); other rows keep their pixels and get all-zero
        targets. The draws are on the CPU and the pairing on the device: nothing waits for the GPU."""
        targets = one_hot(labels, self.num_classes)
        use = [name for name, alpha in (("mixup", self.mixup_alpha), ("cutmix", self.cutmix_alpha)) if alpha > 0]
        if not use:
            return pixels, targets
        valid = labels != IGNORE_INDEX
        partner = partners(valid)
        mixing = valid & (partner != torch.arange(len(labels), device=labels.device))  # has another row to mix with
        kind = use[int(torch.randint(len(use), ()))] if len(use) > 1 else use[0]
        if kind == "mixup":
            mixed, mixed_targets = mixup(pixels, targets, self._draw_lam(self.mixup_alpha), partner)
        else:
            box = draw_box(pixels.shape[-2], pixels.shape[-1], self._draw_lam(self.cutmix_alpha))
            mixed, mixed_targets = cutmix(pixels, targets, box, partner)
        pixels = torch.where(mixing.view(-1, 1, 1, 1), mixed.to(pixels.dtype), pixels)
        return pixels, torch.where(mixing.unsqueeze(1), mixed_targets, targets)

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weights = None
        if self.class_weights is not None:
            weights = self._weights_on.get(targets.device)
            if weights is None:
                weights = self._weights_on[targets.device] = self.class_weights.to(targets.device)
        return soft_cross_entropy(logits, targets, self.label_smoothing, weights)
