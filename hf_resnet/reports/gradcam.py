"""Grad-CAM (Selvaraju et al., 2017) on a ResNet's last stage: where in the picture the evidence for a class lies.

A few lines of forward hooks rather than a dependency (`grad-cam` pulls OpenCV; `captum` is a large toolkit for
one method): one forward pass records every encoder stage's output, one `autograd.grad` takes the class score's
gradient with respect to the chosen stage, and the map is ReLU(sum over channels of mean-gradient x activation),
upsampled to the input size.

The stage is the last one whose map has at least `min_cells` positions a side: ResNet-50's stage 4 at 224 px
(7x7). A 32 px input leaves stage 4 with 1x1, which says nothing about where, so an earlier stage is used there;
`GradCam.stage` names the one taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class GradCam:
    maps: torch.Tensor  # (batch, height, width) in [0, 1], at the input's size
    stage: str  # e.g. "stage4 (7x7)"


def encoder_stages(model) -> list[torch.nn.Module]:
    """The encoder stages of a transformers ResNet (also ConvNeXt, RegNet: `<base>.encoder.stages`)."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    stages = getattr(getattr(base, "encoder", None), "stages", None)
    if not stages:
        raise ValueError(f"{type(model).__name__} has no `encoder.stages` to take Grad-CAM on.")
    return list(stages)


def grad_cam(model, pixel_values: torch.Tensor, class_ids: torch.Tensor, min_cells: int = 4) -> GradCam:
    """Grad-CAM maps of `class_ids` (one per image) for a batch of model inputs; the model is left as it was."""
    stages = encoder_stages(model)
    outputs: list[torch.Tensor | None] = [None] * len(stages)

    def keep(index):
        def hook(module, inputs, output):
            outputs[index] = output[0] if isinstance(output, tuple) else output

        return hook

    hooks = [stage.register_forward_hook(keep(i)) for i, stage in enumerate(stages)]
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # The input asks for a gradient so the stages' outputs carry one even when the backbone is frozen.
            inputs = pixel_values.detach().to(device, dtype).requires_grad_(True)
            logits = model(pixel_values=inputs).logits
            index = next((i for i in reversed(range(len(stages))) if min(outputs[i].shape[-2:]) >= min_cells),
                         len(stages) - 1)
            activation = outputs[index]
            score = logits.gather(1, class_ids.to(device).view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, activation)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # one weight per channel: the gradient's spatial mean
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=tuple(pixel_values.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.view(-1, 1, 1)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    height, width = activation.shape[-2:]
    return GradCam(maps=cam.cpu(), stage=f"stage{index + 1} ({height}x{width})")
