"""Test-time augmentation (TTA): several views of each image, scored together, their softmax probabilities
averaged with fixed weights.

    flip        the processor's eval crop and its mirror image, half each
    five_crop   torchvision's FiveCrop (4 corners, then the centre) of the image after the processor's resize (its
                short side at crop / crop_pct: 256 for a 224 crop), a fifth each: on an image twice as wide as
                tall, the left corners see its left half and the right corners its right half
    augment     the plain eval crop and N passes of the recipe's training augmentation, blended as fastai's `tta`
                does: beta x plain + (1 - beta) x mean(augmented), beta 0.25

Where the views are made: in the DataLoader workers, by `TtaTransform`, from the decoded image, as a (K, 3, H, W)
uint8 tensor per example; the trainer (`training/tta.py`) and `inference.Classifier` run the K views as one batch
of B x K and average per example (`combine_views`). One path for all three modes: five_crop needs the image
before the center crop, and augment the image before any crop (fastai applies its training transforms to the
original item), which a view made from the batch on the device would no longer have; flip is the cheap case of
the same path. The cost is K times the uint8 bytes through the loader and K times the forward pass. Augmented
views are seeded per example (`inputs.ExampleTransform`), so a TTA figure is the same on every rerun.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

from ..constants import TTA_MODES
from .images import to_rgb
from .transforms import PreprocessConfig, _resize, _shortest_edge_size, _trim_extreme_aspect, eval_geometry

TTA_BETA = 0.25  # fastai's `Learner.tta(beta=0.25)`: the plain view's weight beside the augmented ones


def view_weights(mode: str, passes: int = 4) -> list[float]:
    """Each view's weight in the average, in the order `TtaTransform` stacks them."""
    if mode == "flip":
        return [0.5, 0.5]
    if mode == "five_crop":
        return [0.2] * 5
    if mode == "augment":
        return [TTA_BETA] + [(1.0 - TTA_BETA) / passes] * passes
    raise ValueError(f"no views for TTA mode {mode!r}; one of {', '.join(TTA_MODES[1:])}")


def five_crop_geometry(x: torch.Tensor, cfg: PreprocessConfig) -> list[torch.Tensor]:
    """FiveCrop of the processor's resized image (before its center crop): top-left, top-right, bottom-left,
    bottom-right, centre, each `cfg.crop_size`. A fixed-size processor with no crop gives five equal views."""
    if cfg.resize_shortest_edge is not None:
        x = _trim_extreme_aspect(x)
        x = _resize(x, _shortest_edge_size(*x.shape[-2:], cfg.resize_shortest_edge), cfg.interpolation)
    elif cfg.resize_size is not None:
        x = _resize(x, cfg.resize_size, cfg.interpolation)
    height, width = x.shape[-2:]
    crop_h, crop_w = cfg.crop_size
    if crop_h > height or crop_w > width:  # smaller than the crop: padded as the processor's center crop pads
        x = F.center_crop(x, [max(height, crop_h), max(width, crop_w)])
    return list(F.five_crop(x, [crop_h, crop_w]))


class TtaTransform(torch.nn.Module):
    """PIL image or uint8 (3, H, W) tensor -> (K, 3, H, W) uint8 views, in `view_weights`' order. `train_transform`
    (uint8 out, the recipe's augmentation) makes the augmented views of `augment`."""

    def __init__(self, cfg: PreprocessConfig, mode: str, passes: int = 4, train_transform=None):
        super().__init__()
        if mode == "augment" and train_transform is None:
            raise ValueError("TTA `augment` needs the training transform")
        view_weights(mode, passes)  # an unknown mode fails here
        self.cfg, self.mode, self.passes, self.train_transform = cfg, mode, passes, train_transform

    def forward(self, image) -> torch.Tensor:
        x = image if isinstance(image, torch.Tensor) else F.pil_to_tensor(to_rgb(image))
        if self.mode == "five_crop":
            return torch.stack(five_crop_geometry(x, self.cfg))
        plain = eval_geometry(x, self.cfg)
        if self.mode == "flip":
            return torch.stack([plain, F.horizontal_flip(plain)])
        return torch.stack([plain] + [self.train_transform(x) for _ in range(self.passes)])


def combine_views(logits: torch.Tensor, weights) -> torch.Tensor:
    """(B, K, C) logits of K views -> (B, C) log of the weighted mean of their softmax probabilities: a valid
    logit vector, whose softmax is that mean (so the top-k, the loss and the report read it as any logits)."""
    weights = torch.as_tensor(weights, dtype=torch.float32, device=logits.device).view(1, -1, 1)
    probs = (torch.softmax(logits.float(), dim=-1) * weights).sum(dim=1)
    return probs.clamp_min(torch.finfo(torch.float32).tiny).log()
