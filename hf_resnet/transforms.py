"""Train and eval transforms resolved from the checkpoint's own image processor.

The processor is the truth for size, crop_pct, resample, mean and std (timm's `resolve_data_config` idea).
Eval reproduces the processor's resize + center crop exactly (tests compare tensors on real photos), so the
accuracy measured here is the accuracy `pipeline("image-classification")` gives on the same images. Note the
HF example script resizes ResNet-50's eval images to 224 and crops 224, ignoring crop_pct (256 -> 224).

Train is RandomResizedCrop + horizontal flip at the processor's crop size, then what the recipe adds, in timm's
and torchvision's reference order: an augmentation policy (RandAugment, TrivialAugmentWide, AutoAugment), colour
jitter, rotation/translation, the processor's normalisation, random erasing. All run on uint8 tensors with
torch's random generator, which `inputs.py` seeds per example, inside the DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from .images import to_rgb

# PIL resample codes (as stored in preprocessor_config.json) -> torchvision modes.
_PIL_TO_TV = {
    0: InterpolationMode.NEAREST,
    1: InterpolationMode.LANCZOS,
    2: InterpolationMode.BILINEAR,
    3: InterpolationMode.BICUBIC,
    4: InterpolationMode.BOX,
    5: InterpolationMode.HAMMING,
}


@dataclass(frozen=True)
class PreprocessConfig:
    """What the processor does, as plain numbers: resize rule, crop, interpolation, normalisation."""

    crop_size: tuple[int, int]  # (height, width) fed to the model
    resize_shortest_edge: int | None  # resize the short side to this (aspect kept) ...
    resize_size: tuple[int, int] | None  # ... or resize to exactly (height, width)
    center_crop: bool
    interpolation: InterpolationMode
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float = 1 / 255

    @classmethod
    def from_processor(cls, processor) -> PreprocessConfig:
        """Read a HF image processor (ConvNext/ResNet, BiT, ViT styles) into a PreprocessConfig."""
        size = dict(processor.size) if processor.size is not None else {}
        size = {k: v for k, v in size.items() if v is not None}
        resample = getattr(processor, "resample", 2)
        interpolation = resample if isinstance(resample, InterpolationMode) else _PIL_TO_TV[int(resample)]
        mean = tuple(float(m) for m in processor.image_mean)
        std = tuple(float(s) for s in processor.image_std)
        if getattr(processor, "do_normalize", True) is False:
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        rescale = float(getattr(processor, "rescale_factor", 1 / 255))
        if getattr(processor, "do_rescale", True) is False:
            rescale = 1.0
        crop_pct = getattr(processor, "crop_pct", None)
        if "shortest_edge" in size and crop_pct is not None:  # ConvNext / microsoft/resnet-* processors
            edge = int(size["shortest_edge"])
            if edge < 384:
                return cls((edge, edge), int(edge / crop_pct), None, True, interpolation, mean, std, rescale)
            return cls((edge, edge), None, (edge, edge), False, interpolation, mean, std, rescale)
        do_crop = bool(getattr(processor, "do_center_crop", False))
        crop = dict(getattr(processor, "crop_size", None) or {})
        if "shortest_edge" in size:  # BiT / CLIP style: resize short side, then crop
            edge = int(size["shortest_edge"])
            crop_hw = (int(crop["height"]), int(crop["width"])) if do_crop else (edge, edge)
            return cls(crop_hw, edge, None, do_crop, interpolation, mean, std, rescale)
        if "height" in size and "width" in size:  # ViT style: resize to a fixed size
            hw = (int(size["height"]), int(size["width"]))
            crop_hw = (int(crop["height"]), int(crop["width"])) if do_crop else hw
            return cls(crop_hw, None, hw, do_crop, interpolation, mean, std, rescale)
        raise ValueError(
            f"Unsupported image processor size {processor.size!r}; expected shortest_edge or height/width."
        )


def _resize_shortest_edge(image: torch.Tensor, edge: int, interpolation) -> torch.Tensor:
    # Same arithmetic as transformers' get_resize_output_image_size (int(), not round()).
    height, width = image.shape[-2:]
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    size = (new_long, edge) if width <= height else (edge, new_long)
    return F.resize(image, list(size), interpolation=interpolation, antialias=True)


def _center_crop(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # transformers floors the offset; torchvision's CenterCrop rounds it, which is one pixel off on odd margins.
    height, width = image.shape[-2:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        return F.center_crop(image, list(size))  # pads with zeros, as the processor does
    top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
    return F.crop(image, top, left, crop_h, crop_w)


MAX_ASPECT = 4.0  # beyond this, only the central part of the long side can reach the center crop


def _trim_extreme_aspect(image: Image.Image) -> Image.Image:
    """Cut a 4000x3 strip to its central 12x3 before the short side is upscaled (which would allocate a
    256x341,333 tensor). The center crop sees the same pixels; images up to 4:1 are untouched (exact parity)."""
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= MAX_ASPECT * short:
        return image
    keep = int(MAX_ASPECT * short)
    start = (long - keep) // 2
    box = (start, 0, start + keep, height) if width > height else (0, start, width, start + keep)
    return image.crop(box)


class _Normalize(torch.nn.Module):
    """uint8 -> float, then (x - mean/rescale) / (std/rescale): the processor's fused rescale + normalise."""

    def __init__(self, cfg: PreprocessConfig):
        super().__init__()
        self.mean = (torch.tensor(cfg.mean) * (1.0 / cfg.rescale_factor)).tolist()
        self.std = (torch.tensor(cfg.std) * (1.0 / cfg.rescale_factor)).tolist()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(image.to(torch.float32), self.mean, self.std)


class EvalTransform(torch.nn.Module):
    """PIL image -> normalised tensor, exactly as the checkpoint's image processor would produce it."""

    def __init__(self, cfg: PreprocessConfig):
        super().__init__()
        self.cfg = cfg
        self.normalize = _Normalize(cfg)

    def forward(self, image: Image.Image) -> torch.Tensor:
        cfg = self.cfg
        image = to_rgb(image)
        if cfg.resize_shortest_edge is not None:
            image = _trim_extreme_aspect(image)
        x = F.pil_to_tensor(image)
        if cfg.resize_shortest_edge is not None:
            x = _resize_shortest_edge(x, cfg.resize_shortest_edge, cfg.interpolation)
        elif cfg.resize_size is not None:
            x = F.resize(x, list(cfg.resize_size), interpolation=cfg.interpolation, antialias=True)
        if cfg.center_crop:
            x = _center_crop(x, cfg.crop_size)
        return self.normalize(x)


def build_train_transform(
    cfg: PreprocessConfig, scale: Sequence[float] = (0.08, 1.0), flip: float = 0.5, auto_augment: str = "none",
    rand_augment_magnitude: int = 9, color_jitter: float = 0.0, rotation_degrees: float = 0.0,
    translate: float = 0.0, random_erasing: float = 0.0,
) -> Callable[[Image.Image], torch.Tensor]:
    """RandomResizedCrop at the model's input size, optional flip and augmentations (each off at 0 / `none`),
    the processor's normalisation, optional random erasing (of the normalised image: the erased box is 0, the
    dataset mean's colour)."""
    steps: list = [
        v2.Lambda(to_rgb),
        v2.PILToTensor(),
        v2.RandomResizedCrop(cfg.crop_size, scale=tuple(scale), interpolation=cfg.interpolation, antialias=True),
    ]
    if flip > 0:
        steps.append(v2.RandomHorizontalFlip(p=flip))
    bilinear = InterpolationMode.BILINEAR  # geometric ops on tensors take nearest or bilinear only
    policies = {
        "randaugment": lambda: v2.RandAugment(magnitude=rand_augment_magnitude, interpolation=bilinear),
        "trivialaugment": lambda: v2.TrivialAugmentWide(interpolation=bilinear),
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET, interpolation=bilinear),
    }
    if auto_augment in policies:
        steps.append(policies[auto_augment]())
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    if rotation_degrees > 0 or translate > 0:
        steps.append(v2.RandomAffine(degrees=rotation_degrees, translate=(translate, translate) if translate else None,
                                     interpolation=bilinear))
    steps.append(_Normalize(cfg))
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)


def augmentation(data_args) -> dict:
    """`build_train_transform`'s keyword arguments from a recipe's `DataArguments`."""
    names = ("auto_augment", "rand_augment_magnitude", "color_jitter", "rotation_degrees", "translate",
             "random_erasing")
    return {"scale": data_args.random_resized_crop_scale, "flip": data_args.horizontal_flip,
            **{name: getattr(data_args, name) for name in names}}


def build_eval_transform(cfg: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    return EvalTransform(cfg)
