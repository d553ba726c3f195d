"""`gpu_decode`: JPEGs decoded on the GPU in batches (nvJPEG), resized, cropped, flipped and normalised there.

A 16-core machine decodes about 2,500 photos/s with Pillow; one H200 trains a compiled ResNet-50 on 6,600 images/s
and nvJPEG decodes and resizes over 10,000. So with `gpu_decode: true` the DataLoader workers only read each file,
check its header, and draw the example's random crop and flip (under the same per-example seed as the CPU path, so
a resumed run draws the same); the model's device does the rest:

    worker: bytes + header -> plan [top, left, height, width, flip, train]   (`DeviceDecode.plan`)
    device: batched decodes of at most MAX_CALL_BYTES of JPEG each (`decode_jpegs`, `call_groups`)
            -> per image crop + resize (float32, antialiased) -> flip -> normalise
            -> the batch, channels-last when the model is                      (`DeviceDecoder.__call__`)

Train draws torchvision's RandomResizedCrop (scale, ratio) and the flip; other augmentations (RandAugment, colour
jitter, rotation, erasing) need the CPU path. Eval repeats the processor's resize + center crop (`transforms`) in
float32, each of its two resize passes rounded to whole levels as the CPU's uint8 resize is (`_resize_in_levels`):
within the bound measured on the GPU, not bit-exact (nvJPEG's IDCT differs from libjpeg-turbo's by a level here
and there).

Files the fast path cannot take (PNG, CMYK, EXIF-rotated, no end marker, over the pixel limit) are decoded and
transformed in the worker as without `gpu_decode` and join the same batch as uint8; a file nvJPEG rejects is
decoded again on the CPU, and if that fails too it is recorded and skipped like any other bad image, never
silently. The decoder is the one `HF_RESNET_JPEG_DECODER` or the best install picks (`images.JPEG_DECODER`) if it
decodes a probe on the model's device at start-up, else the next that does (`images.jpeg_decoder_for`); none is a
configuration error. On a machine without CUDA the same code runs with the CPU decoder (what the tests exercise).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as F

from ..constants import IGNORE_INDEX
from ..errors import ConfigError
from .images import ImageDecodeError, decode_tensor, jpeg_decoder, jpeg_decoder_for
from .skips import SkipRecorder
from .transforms import BatchNormalizer, PreprocessConfig, eval_geometry

logger = logging.getLogger(__name__)

# One nvJPEG call decodes all its images at once: a batch of 256 phone photos (12 MP) would hold 9 GB of pixels.
# A call takes files up to this many encoded bytes (photos compress about 10x: some 300 MB of pixels); a batch of
# ImageNet-sized JPEGs (~110 KB) still goes in one call.
MAX_CALL_BYTES = 32 * 2**20


@dataclass(frozen=True)
class DeviceDecode:
    """`gpu_decode`'s worker side (`DeviceDecoder` below is the device side): for a JPEG left undecoded, the train
    transform's random crop and flip drawn from the header's size, or the eval marker."""

    train: bool
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5

    def plan(self, width: int, height: int) -> torch.Tensor:
        """[top, left, height, width, flip, train], drawn from torch's CPU generator (seeded per example by the
        caller): torchvision's RandomResizedCrop sampling, 10 tries then the center crop at the closest valid
        ratio, then the flip. Eval plans are the whole image, unflipped."""
        if not self.train:
            return torch.tensor([0, 0, height, width, 0, 0], dtype=torch.int32)
        top, left, crop_h, crop_w = _random_resized_crop(height, width, self.scale, self.ratio)
        flip = int(self.flip > 0 and torch.rand(1).item() < self.flip)
        return torch.tensor([top, left, crop_h, crop_w, flip, 1], dtype=torch.int32)


def _random_resized_crop(height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    # torchvision.transforms.v2.RandomResizedCrop.make_params, on a size instead of an image
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,)).item())
            left = int(torch.randint(0, width - w + 1, size=(1,)).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def call_groups(blobs: list[bytes], limit: int | None = None) -> list[range]:
    """Consecutive runs of `blobs`, each within `limit` (MAX_CALL_BYTES) bytes in all, or a single file over it."""
    limit = MAX_CALL_BYTES if limit is None else limit
    groups, start, size = [], 0, 0
    for index, blob in enumerate(blobs):
        if index > start and size + len(blob) > limit:
            groups.append(range(start, index))
            start, size = index, 0
        size += len(blob)
    return groups + [range(start, len(blobs))]


_DECODE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def decode_jpegs(blobs: list[bytes], device, decoder: str | None = None) -> list[torch.Tensor]:
    """JPEG bytes -> uint8 RGB (3, H, W) tensors on `device`, one batched call (nvJPEG on a GPU).

    nvJPEG can write the decoded images before the work queued on the current stream has run: torchvision's
    wrapper decodes on a private stream that does not wait for the caller's (pytorch/vision#9606), and nvJPEG's
    hardware engine writes at call time whatever the stream (meta-pytorch/torchcodec#1634). The outputs are blocks
    from torch's caching allocator, which hands a block out again as soon as it is freed on the stream that owns it:
    memory that kernels still queued there (the last step's optimizer, after `zero_grad` freed the gradients) may
    yet read. A device-side wait does not stop a write made at call time; only a host-side check does.

    So the images are allocated while a stream of our own is current: its pool only ever holds decoded images, and
    each is marked as used by the caller's stream (`record_stream`), so the allocator reuses its block only once it
    has seen, on the host, that the caller's work with it is done. Both wrappers finish the decode before returning;
    the caller's stream also waits for ours. The decode still overlaps the work queued before it, as a host-wide
    synchronize would not. On a CPU device, a plain batched decode."""
    decode = jpeg_decoder(decoder)
    device = torch.device(device)
    if device.type != "cuda":
        return list(decode(blobs, device))
    caller = torch.cuda.current_stream(device)
    own = _DECODE_STREAMS.get(device)
    if own is None:
        own = _DECODE_STREAMS[device] = torch.cuda.Stream(device)
    try:
        with torch.cuda.stream(own):
            decoded = list(decode(blobs, device))
    except Exception:
        own.synchronize()  # nothing half-written is handed out again
        raise
    caller.wait_stream(own)
    for image in decoded:
        image.record_stream(caller)
    return decoded


class DeviceDecoder:
    """Finishes a batch on the model's device: decodes the workers' undecoded JPEGs in one call, resizes, crops and
    flips each, and normalises the whole batch (the uint8 images the workers decoded themselves included)."""

    def __init__(self, cfg: PreprocessConfig, normalizer: BatchNormalizer,
                 on_failure: Callable[[str | None, int, str], None] | None = None, decoder: str | None = None):
        self.cfg = cfg
        self.normalizer = normalizer
        self.on_failure = on_failure  # (split, example id, reason): a file neither nvJPEG nor Pillow could read
        self.decoder = decoder  # `images.jpeg_decoder_for(device)`: one that decodes on the model's device

    def __call__(self, inputs: dict) -> dict:
        """`inputs` as collated (`inputs.collate`) and moved to the device; `jpeg_bytes` is a list of bytes."""
        encoded = inputs.pop("jpeg_bytes", None)
        positions = inputs.pop("jpeg_positions", None)
        plans = inputs.pop("jpeg_plans", None)
        split = inputs.pop("jpeg_split", None)
        pixel_values = inputs["pixel_values"]
        device = pixel_values.device
        batch = self.normalizer.normalize(pixel_values)
        if not encoded:
            inputs["pixel_values"] = self.normalizer.layout(batch)
            return inputs
        mean, std = self.normalizer.constants(device)
        for group in call_groups(encoded):  # each call's pixels are transformed and dropped before the next
            for slot, image in zip(group, self._decode([encoded[slot] for slot in group], device)):
                position = positions[slot]
                if isinstance(image, str):  # unreadable: a blank input whose label is ignored, and recorded
                    batch[position] = 0.0
                    if "labels" in inputs:
                        inputs["labels"][position] = IGNORE_INDEX
                    if self.on_failure is not None:
                        example = int(inputs["example_ids"][position]) if "example_ids" in inputs else position
                        self.on_failure(split, example, image)
                    continue
                batch[position] = (self._transform(image, plans[slot]) - mean[0]) / std[0]
        inputs["pixel_values"] = self.normalizer.layout(batch)
        return inputs

    def _decode(self, blobs: list[bytes], device: torch.device) -> list[torch.Tensor | str]:
        """One batched decode; if nvJPEG refuses the batch, each file alone, then Pillow for the ones it refuses.
        A file none can read gives the reason instead of an image."""
        try:
            return decode_jpegs(blobs, device, self.decoder)
        except RuntimeError:
            pass
        images: list[torch.Tensor | str] = []
        for data in blobs:
            try:
                images.append(decode_jpegs([data], device, self.decoder)[0])
                continue
            except RuntimeError:
                pass
            try:
                images.append(decode_tensor({"bytes": data, "path": None}, None).to(device))
            except ImageDecodeError as err:
                images.append(str(err))
        return images

    def _transform(self, image: torch.Tensor, plan: list[int]) -> torch.Tensor:
        """uint8 (3, H, W) on the device -> float32 (3, crop) in 0..255 with the worker's `plan` applied."""
        cfg = self.cfg
        top, left, height, width, flip, train = plan
        x = image.float()
        if train:  # one float pass: nothing to match exactly
            x = within_resize_limit(x[..., top : top + height, left : left + width], cfg.crop_size)
            x = F.resize(x, list(cfg.crop_size), interpolation=cfg.interpolation, antialias=True).clamp_(0, 255)
            return x.flip(-1) if flip else x
        return eval_geometry(x, cfg, _resize_in_levels)


# CUDA's antialiased resize holds each output pixel's filter in shared memory: past about 47x smaller per axis
# (bicubic; 94x bilinear) it raises "Too much shared memory required" (a 12 MP photo for a 32-pixel model, or a huge
# image with `max_image_pixels` raised). Images shrunk more than this are first averaged by a whole factor.
MAX_RESIZE_RATIO = 16


def within_resize_limit(x: torch.Tensor, size) -> torch.Tensor:
    """`x` (C, H, W), area-averaged by whole factors where it is over MAX_RESIZE_RATIO times `size` (h, w) on an
    axis, so the resize to `size` stays within what every device's kernel takes; unchanged otherwise."""
    factors = [max(1, math.ceil(have / want / MAX_RESIZE_RATIO)) for have, want in zip(x.shape[-2:], size)]
    if factors == [1, 1]:
        return x
    return torch.nn.functional.avg_pool2d(x[None], kernel_size=factors)[0]


def _resize_in_levels(x: torch.Tensor, size, interpolation) -> torch.Tensor:
    """The CPU's uint8 resize (Pillow's algorithm: a horizontal pass, then a vertical one, each rounded to whole
    levels) in float32 on the device: within 2 levels of it, a few thousandths of a level on average (tested).
    An image over MAX_RESIZE_RATIO times the size is area-averaged first (`within_resize_limit`)."""
    x = within_resize_limit(x, size)
    height, width = x.shape[-2:]
    if width != size[1]:
        x = F.resize(x, [height, size[1]], interpolation=interpolation, antialias=True).round_().clamp_(0, 255)
    if height != size[0]:
        x = F.resize(x, list(size), interpolation=interpolation, antialias=True).round_().clamp_(0, 255)
    return x

def record_device_skip(output_dir: str | None, split: str | None, example_id: int, reason: str) -> None:
    """A file that passed the worker's header check but neither nvJPEG nor Pillow could decode: into the same
    skipped-images list as the workers' skips (`skips.SkipRecorder`)."""
    SkipRecorder(output_dir, split or "train").record(example_id, f"index {example_id}", None, reason)


def device_decoder_for(pre: PreprocessConfig, normalizer: BatchNormalizer, device: torch.device,
                       output_dir: str | None) -> DeviceDecoder:
    """`gpu_decode: true`: the decoder that finishes each batch on `device`, with the first JPEG decoder that
    decodes there; none is a ConfigError that says why each failed."""
    if device.type != "cuda":
        logger.warning("`gpu_decode: true` without a CUDA device: JPEGs are decoded in the main process on the "
                       "CPU, slower than in the DataLoader workers. Set `gpu_decode: false` here.")
    try:
        decoder = jpeg_decoder_for(device)
    except RuntimeError as err:
        raise ConfigError(f"`gpu_decode: true`: {err}. Install a torchcodec or torchvision built for this "
                          "CUDA, or set `gpu_decode: false`.") from err
    logger.info("gpu_decode: JPEGs decoded on %s by %s", device, decoder)
    return DeviceDecoder(pre, normalizer, decoder=decoder,
                         on_failure=functools.partial(record_device_skip, output_dir))
