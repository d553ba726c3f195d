"""Train and eval transforms resolved from the checkpoint's own image processor.

The processor is the truth for size, crop_pct, resample, mean and std (timm's `resolve_data_config` idea).
Eval reproduces the processor's resize + center crop exactly (tests compare tensors on real photos), so the
accuracy measured here is the accuracy `pipeline("image-classification")` gives on the same images. Note the
HF example script resizes ResNet-50's eval images to 224 and crops 224, ignoring crop_pct (256 -> 224).

Train is RandomResizedCrop + horizontal flip at the processor's crop size, then what the recipe adds, in timm's
and torchvision's reference order: an augmentation policy (RandAugment, TrivialAugmentWide, AutoAugment), colour
jitter, rotation/translation, random erasing. All run on uint8 tensors with torch's random generator, which
`inputs.py` seeds per example, inside the DataLoader workers.

Training and evaluation batches leave the workers as uint8 (4x fewer bytes to pickle, pin and copy than float32)
and are normalised where the model is, by `BatchNormalizer`, with the same float32 arithmetic as the processor's
rescale + normalise: the result is bit-identical to normalising in the worker (tested). Called with
`normalize=True`, the transforms return normalised float tensors themselves (for use outside the Trainer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

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


def resize_processor(processor, image_size: int | None, crop_pct: float | None = None):
    """`processor` set to crop `image_size` pixels (timm's --img-size, fastai's Resize): the saved processor then
    says so, and pipeline() preprocesses as training did. ConvNext style (microsoft/resnet-*): shortest_edge and
    crop_pct; BiT style: the short side to image_size / crop_pct, then the crop; ViT style: a fixed size."""
    if image_size is None and crop_pct is None:
        return processor
    size = dict(processor.size or {})
    edge = image_size or int(size.get("shortest_edge") or size.get("height"))
    if "shortest_edge" in size and getattr(processor, "crop_pct", None) is not None:
        processor.size = {"shortest_edge": edge}
        processor.crop_pct = crop_pct or processor.crop_pct
    elif "shortest_edge" in size:
        processor.size = {"shortest_edge": int(edge / (crop_pct or 0.875))}
        processor.crop_size, processor.do_center_crop = {"height": edge, "width": edge}, True
    else:
        processor.size = {"height": edge, "width": edge}
        if getattr(processor, "do_center_crop", False):
            processor.crop_size = {"height": edge, "width": edge}
    return processor


def at_resolution(cfg: PreprocessConfig, image_size: int | None = None,
                  crop_pct: float | None = None) -> PreprocessConfig:
    """The eval preprocessing at another resolution (`eval_image_size`, `eval_crop_pct`; timm's test-size
    evaluation): short side resized to image_size / crop_pct, then the center image_size crop. Either unset keeps
    the processor's: its crop, and its crop_pct (crop / resized short side; 1.0 for a processor without a crop)."""
    if image_size is None and crop_pct is None:
        return cfg
    size = int(image_size or cfg.crop_size[0])
    if crop_pct is None:
        edge = cfg.resize_shortest_edge or (cfg.resize_size[0] if cfg.resize_size else size)
        crop_pct = cfg.crop_size[0] / edge if cfg.center_crop else 1.0
    return replace(cfg, crop_size=(size, size), resize_shortest_edge=int(size / crop_pct), resize_size=None,
                   center_crop=True)


def _shortest_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    # Same arithmetic as transformers' get_resize_output_image_size (int(), not round()).
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(edge * long / short)
    return (new_long, edge) if width <= height else (edge, new_long)


def _resize(image: torch.Tensor, size, interpolation) -> torch.Tensor:
    return F.resize(image, list(size), interpolation=interpolation, antialias=True)


def eval_geometry(x: torch.Tensor, cfg: PreprocessConfig, resize=_resize) -> torch.Tensor:
    """The processor's resize (short side, or a fixed size) and center crop of a (3, H, W) tensor; `resize(x,
    (height, width), interpolation)` does the resizing (`gpu_decode` passes its float32 two-pass one)."""
    if cfg.resize_shortest_edge is not None:
        x = _trim_extreme_aspect(x)
        x = resize(x, _shortest_edge_size(*x.shape[-2:], cfg.resize_shortest_edge), cfg.interpolation)
    elif cfg.resize_size is not None:
        x = resize(x, cfg.resize_size, cfg.interpolation)
    if cfg.center_crop:
        x = _center_crop(x, cfg.crop_size)
    return x


def _center_crop(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # transformers floors the offset; torchvision's CenterCrop rounds it, which is one pixel off on odd margins.
    height, width = image.shape[-2:]
    crop_h, crop_w = size
    if crop_h > height or crop_w > width:
        return F.center_crop(image, list(size))  # pads with zeros, as the processor does
    top, left = int((height - crop_h) / 2.0), int((width - crop_w) / 2.0)
    return F.crop(image, top, left, crop_h, crop_w)


MAX_ASPECT = 4.0  # beyond this, only the central part of the long side can reach the center crop


def _trim_extreme_aspect(image: torch.Tensor) -> torch.Tensor:
    """Cut a 4000x3 strip to its central 12x3 before the short side is upscaled (which would allocate a
    256x341,333 tensor). The center crop sees the same pixels; images up to 4:1 are untouched (exact parity)."""
    height, width = image.shape[-2:]
    short, long = min(width, height), max(width, height)
    if long <= MAX_ASPECT * short:
        return image
    keep = int(MAX_ASPECT * short)
    start = (long - keep) // 2
    return image[..., start : start + keep] if width > height else image[..., start : start + keep, :]


def _scaled_mean_std(cfg: PreprocessConfig) -> tuple[list[float], list[float]]:
    """The processor's rescale folded into its normalisation: (x - mean/rescale) / (std/rescale) on 0..255."""
    mean = (torch.tensor(cfg.mean) * (1.0 / cfg.rescale_factor)).tolist()
    std = (torch.tensor(cfg.std) * (1.0 / cfg.rescale_factor)).tolist()
    return mean, std


def mean_colour(cfg: PreprocessConfig) -> list[int]:
    """The normalisation's mean as a uint8 colour: what a blank (skipped) input or an erased box is filled with."""
    return [min(255, max(0, round(m))) for m in _scaled_mean_std(cfg)[0]]


class _Normalize(torch.nn.Module):
    """uint8 -> float, then (x - mean/rescale) / (std/rescale): the processor's fused rescale + normalise."""

    def __init__(self, cfg: PreprocessConfig):
        super().__init__()
        self.mean, self.std = _scaled_mean_std(cfg)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(image.to(torch.float32), self.mean, self.std)


class BatchNormalizer:
    """uint8 batches (B, 3, H, W) -> the model's float32 input, on the batch's own device (the GPU in training),
    with `_Normalize`'s arithmetic, so the values equal a worker-side normalisation bit for bit. Float batches are
    taken as already normalised and pass unchanged. `channels_last` also lays the batch out as the model is."""

    def __init__(self, cfg: PreprocessConfig, channels_last: bool = False):
        self.mean, self.std = _scaled_mean_std(cfg)
        self.channels_last = channels_last
        self._constants: dict = {}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) on 0..255 as float32 (1, 3, 1, 1) tensors on `device`."""
        if device not in self._constants:
            as_tensor = lambda v: torch.as_tensor(v, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
            self._constants[device] = (as_tensor(self.mean), as_tensor(self.std))
        return self._constants[device]

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        mean, std = self.constants(pixel_values.device)
        return pixel_values.to(torch.float32).sub_(mean).div_(std)

    def layout(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.channels_last and pixel_values.dim() == 4:
            return pixel_values.contiguous(memory_format=torch.channels_last)
        return pixel_values

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layout(self.normalize(pixel_values))


class EvalTransform(torch.nn.Module):
    """PIL image or uint8 (3, H, W) tensor -> exactly the checkpoint's image processor's resize and crop; then
    normalised (float32), or left uint8 for `BatchNormalizer` when `normalize=False`."""

    def __init__(self, cfg: PreprocessConfig, normalize: bool = True):
        super().__init__()
        self.cfg = cfg
        self.normalize = _Normalize(cfg) if normalize else None

    def forward(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        x = image if isinstance(image, torch.Tensor) else F.pil_to_tensor(to_rgb(image))
        x = eval_geometry(x, self.cfg)
        return self.normalize(x) if self.normalize is not None else x


def build_train_transform(
    cfg: PreprocessConfig, scale: Sequence[float] = (0.08, 1.0), flip: float = 0.5, auto_augment: str = "none",
    rand_augment_magnitude: int = 9, color_jitter: float = 0.0, rotation_degrees: float = 0.0,
    translate: float = 0.0, random_erasing: float = 0.0, normalize: bool = True,
) -> Callable[[Image.Image | torch.Tensor], torch.Tensor]:
    """RandomResizedCrop at the model's input size, optional flip and augmentations (each off at 0 / `none`),
    optional random erasing (the erased box takes the normalisation's mean colour: 0 once normalised), then the
    processor's normalisation, or uint8 out for `BatchNormalizer` when `normalize=False`."""
    steps: list = [
        _as_tensor,
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
    if random_erasing > 0 and not normalize:
        steps.append(v2.RandomErasing(p=random_erasing, value=mean_colour(cfg)))
    if normalize:
        steps.append(_Normalize(cfg))
        if random_erasing > 0:
            steps.append(v2.RandomErasing(p=random_erasing, value=0))
    return v2.Compose(steps)


def _as_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A decoded uint8 (3, H, W) tensor passes; a PIL image is made upright RGB first."""
    return image if isinstance(image, torch.Tensor) else F.pil_to_tensor(to_rgb(image))


def augmentation(data_args) -> dict:
    """`build_train_transform`'s keyword arguments from a recipe's `DataArguments`."""
    names = ("auto_augment", "rand_augment_magnitude", "color_jitter", "rotation_degrees", "translate",
             "random_erasing")
    return {"scale": data_args.random_resized_crop_scale, "flip": data_args.horizontal_flip,
            **{name: getattr(data_args, name) for name in names}}


def build_eval_transform(cfg: PreprocessConfig, normalize: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    return EvalTransform(cfg, normalize)


@dataclass(frozen=True)
class TrainDraft:
    """How much smaller a training JPEG may be decoded (`images.decode_tensor`'s `reduction`): the largest of 8, 4
    and 2 that keeps the smallest crop RandomResizedCrop can draw (`scale_min` of the area at aspect 3:4) at least
    `crop` pixels on each side, so no crop is upscaled that the full decode would have downscaled; the crop's
    relative position, scale and aspect are drawn as before. At scale 0.08 and crop 224, photos under 3.3 MP
    decode whole and a 12 MP phone photo at half size (2.8x faster here)."""

    crop: int
    scale_min: float

    def __call__(self, width: int, height: int) -> int:
        smallest_side = math.sqrt(0.75 * self.scale_min * width * height)
        return next((factor for factor in (8, 4, 2) if smallest_side / factor >= self.crop), 1)
