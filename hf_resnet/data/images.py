"""Decode one image file into a correct RGB picture, or say exactly why it cannot be.

Datasets are read with the image column cast to `Image(decode=False)`, so decoding happens here, per example,
inside the DataLoader workers: one broken file costs one example, not the iterator (datasets #6470, #7612, #8165).

Odd but valid images become the RGB picture a person sees: EXIF rotation applied; transparency (RGBA, LA, P with
a transparent index) composited on white instead of exposing what lies under the alpha; 16-bit grayscale scaled
to 8 bits, not clipped; CMYK, palette, 1-bit and YCbCr converted by Pillow. The first frame of a GIF/WebP/TIFF is
used. Images over `max_pixels` (Pillow's decompression-bomb limit by default) are refused before decoding.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2.functional import pil_to_tensor

from ..constants import DEFAULT_MAX_PIXELS
from ..errors import first_line

_TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageDecodeError(ValueError):
    """The file is not a usable image; the message says why (truncated, not an image, too large...)."""


def _scale_to_uint8(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit L, keeping the range instead of clipping it at 255."""
    array = np.asarray(image)
    if image.mode == "F":
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    elif image.mode.startswith("I;16") or array.max(initial=0) > 255:
        scaled = array.astype(np.float64) / 257.0  # 16-bit range 0..65535 -> 0..255
    else:
        scaled = array
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF-upright RGB; transparent pixels are composited on white instead of keeping what lies under them."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _scale_to_uint8(image).convert("RGB")
    if image.mode == "P" and (image.has_transparency_data or "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in _TRANSPARENT_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def describe(value) -> str:
    """A file name for messages: the path when known, else '<bytes>'."""
    if isinstance(value, dict):
        if value.get("path"):
            return value["path"]
        data = value.get("bytes") or b""
        return f"<bytes sha1:{hashlib.sha1(data).hexdigest()[:12]}>"  # stable across workers, unlike an index
    if isinstance(value, str):
        return value
    return getattr(value, "filename", None) or "<image>"


def decode_image(value, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`{"bytes", "path"}` (a decode=False Image feature), a path, or a PIL image -> RGB PIL image.

    Raises ImageDecodeError with the reason when the file cannot be used.
    """
    try:
        if isinstance(value, Image.Image):
            return _checked(value, max_pixels)
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path is None:
                raise ImageDecodeError("the example holds neither image bytes nor a path")
            source = io.BytesIO(data) if data is not None else path
        elif isinstance(value, str):
            source = value
        else:
            raise ImageDecodeError(f"expected image bytes or a path, got {type(value).__name__}")
        with _own_size_limit(), Image.open(source) as image:  # closes the file, also on errors
            return _checked(image, max_pixels)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError, MemoryError, TypeError) as err:
        reason = first_line(err)
        reason = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", describe(value), reason)
        raise ImageDecodeError(f"{type(err).__name__}: {reason}") from err


def decode_tensor(value, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                  reduction: Callable[[int, int], int] | None = None) -> torch.Tensor:
    """`decode_image`, as a uint8 (3, H, W) tensor. Upright RGB or grayscale JPEGs (most photo datasets) are
    decoded by libjpeg-turbo (`JPEG_DECODER`) straight into the tensor, skipping Pillow's image object and the copy
    out of it (the pixels are Pillow's: tests compare them); every other file, and any error, goes through
    `decode_image`, so odd images get the same RGB and broken ones the same reason.

    `reduction(width, height)` -> 2, 4 or 8 decodes such a JPEG that many times smaller in each side, in libjpeg's
    DCT domain (Pillow's `draft`: 12 MP photos decode ~3x faster at half size); 1 (or None) decodes it whole."""
    data = _file_bytes(value)
    size = _plain_jpeg_size(data, max_pixels) if data is not None and _decode_jpegs is not None else None
    if size is not None:
        factor = reduction(*size) if reduction is not None else 1
        try:
            return _reduced_decode(data, *size, factor) if factor > 1 else jpeg_to_tensor(data)
        except (RuntimeError, OSError, ValueError):
            pass  # corrupt: Pillow names the reason below
    if data is not None and isinstance(value, (str, dict)):  # the file is read once: Pillow gets its bytes
        path = value if isinstance(value, str) else value.get("path")
        try:
            return pil_to_tensor(decode_image({"bytes": data, "path": path}, max_pixels))
        except ImageDecodeError:
            pass  # the reason worded as for the original value, below
    return pil_to_tensor(decode_image(value, max_pixels))


def _reduced_decode(data: bytes, width: int, height: int, factor: int) -> torch.Tensor:
    with _own_size_limit(), Image.open(io.BytesIO(data)) as image:
        image.draft(image.mode, (width // factor, height // factor))
        return pil_to_tensor(image.convert("RGB"))


def _torchcodec_jpegs(blobs: list[bytes], device) -> list[torch.Tensor]:
    from torchcodec.decoders import decode_jpeg

    return decode_jpeg(blobs, mode="RGB", device=device)


def _torchvision_jpegs(blobs: list[bytes], device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    encoded = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs]
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's; they still work
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


def _probe_jpeg() -> bytes:
    probe = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 90)).save(probe, "JPEG")
    return probe.getvalue()


def _decodes(decode: Callable, device) -> str | None:
    """None if `decode` turns a probe JPEG into an 8x8 RGB tensor on `device`; else why not."""
    try:
        decoded = decode([_probe_jpeg()], device)[0]
    except Exception as err:  # not installed, built without image decoding or nvJPEG, built for another torch...
        return first_line(err, with_type=True)
    return None if tuple(decoded.shape) == (3, 8, 8) else f"decoded to shape {tuple(decoded.shape)}"


def available_jpeg_decoders() -> dict[str, Callable]:
    """The libjpeg-turbo (CPU) / nvJPEG (CUDA) batch decoders this install can load, best first: TorchCodec's
    (>= 0.16, the successor of torchvision's image decoders), then torchvision's (deprecated since 0.29, to be
    removed). Empty when neither loads; Pillow then decodes every file."""
    candidates = (("torchcodec", _torchcodec_jpegs), ("torchvision", _torchvision_jpegs))
    return {name: decode for name, decode in candidates if _decodes(decode, "cpu") is None}


def jpeg_decoder_for(device) -> str:
    """The batch decoder to use on `device` (`gpu_decode`): `JPEG_DECODER` if it decodes there, else the next one
    that does (a TorchCodec or torchvision build may decode on the CPU but lack nvJPEG for this CUDA). Raises
    RuntimeError saying why each one failed."""
    order = [JPEG_DECODER, *(name for name in _DECODERS if name != JPEG_DECODER)]
    failures = []
    for name in (name for name in order if name in _DECODERS):
        reason = _decodes(_DECODERS[name], device)
        if reason is None:
            return name
        failures.append(f"{name}: {reason}")
    raise RuntimeError(f"no JPEG decoder decodes on {device}: {'; '.join(failures) or 'none loads'}")


def _chosen_decoder() -> tuple[str, str | None]:
    """(decoder, problem): HF_RESNET_JPEG_DECODER=torchcodec|torchvision|pillow picks one (tests, benchmarks), else
    the best that loads here. A name that does not load gives the best instead, and the problem to report: the
    command line stops on it with the fix (`decoder_choice_problem`), where an import-time error would be a
    traceback."""
    best = next(iter(_DECODERS), "pillow")
    name = os.environ.get("HF_RESNET_JPEG_DECODER", "").strip().lower()
    if not name:
        return best, None
    if name != "pillow" and name not in _DECODERS:
        return best, (f"HF_RESNET_JPEG_DECODER={name!r}: not a JPEG decoder that loads here; use one of "
                      f"{', '.join([*_DECODERS, 'pillow'])}, or unset it.")
    return name, None


_DECODERS = available_jpeg_decoders()
JPEG_DECODER, _CHOICE_PROBLEM = _chosen_decoder()  # once per process
_decode_jpegs = _DECODERS.get(JPEG_DECODER)


def decoder_choice_problem() -> str | None:
    """Why HF_RESNET_JPEG_DECODER could not be followed, if it could not."""
    return _CHOICE_PROBLEM


def jpeg_decoder(decoder: str | None = None) -> Callable:
    """The batch decoder `decoder` names (default `JPEG_DECODER`): blobs, device -> uint8 RGB (3, H, W) tensors.
    Raises RuntimeError when it does not load here (callers then decode with Pillow)."""
    decode = _decode_jpegs if decoder is None else _DECODERS.get(decoder)
    if decode is None:
        available = ", ".join(_DECODERS) or "none"
        raise RuntimeError(f"no JPEG decoder: {decoder or JPEG_DECODER!r} (available: {available})")
    return decode


def jpeg_to_tensor(data: bytes | list[bytes], decoder: str | None = None):
    """JPEG bytes (or a list of them, one batched call) -> uint8 RGB (3, H, W) tensors on the CPU, by `decoder`
    (default `JPEG_DECODER`). Raises RuntimeError on a corrupt file, or when no JPEG decoder loads. On a GPU,
    `gpu_decode.decode_jpegs` decodes (it keeps nvJPEG's writes away from memory queued kernels still read)."""
    single = isinstance(data, (bytes, bytearray))
    blobs = [bytes(data)] if single else [bytes(item) for item in data]
    decoded = jpeg_decoder(decoder)(blobs, "cpu")
    return decoded[0] if single else list(decoded)


def plain_jpeg(value, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[bytes, int, int] | None:
    """(bytes, width, height) when the file's header says a JPEG that needs nothing but decoding: RGB (YCbCr) or
    grayscale, no EXIF rotation, within `max_pixels`, ending in the end-of-image marker (a cut file does not).
    None for anything else (other formats, CMYK, rotated, too large, unreadable): `decode_image` handles those."""
    data = _file_bytes(value)
    size = _plain_jpeg_size(data, max_pixels) if data is not None else None
    return (data, *size) if size is not None else None


def _file_bytes(value) -> bytes | None:
    """The bytes of a {"bytes", "path"} value or a path; None when there are none or the file cannot be read."""
    try:
        if isinstance(value, dict):
            data = value.get("bytes")
            if data is None and value.get("path"):
                with open(value["path"], "rb") as file:
                    data = file.read()
            return data
        if isinstance(value, str):
            with open(value, "rb") as file:
                return file.read()
    except OSError:
        pass
    return None


def _plain_jpeg_size(data: bytes, max_pixels: int | None) -> tuple[int, int] | None:
    try:
        if not data or data[:3] != b"\xff\xd8\xff" or data.rstrip(b"\0\r\n")[-2:] != b"\xff\xd9":
            return None
        with _own_size_limit(), Image.open(io.BytesIO(data)) as header:
            width, height = header.size
            if header.format != "JPEG" or header.mode not in ("RGB", "L") or width < 1 or height < 1:
                return None
            if max_pixels is not None and width * height > max_pixels:
                return None
            if "exif" in header.info and header.getexif().get(0x0112, 1) not in (0, 1):
                return None
        return width, height
    except Exception:  # anything odd: decode_image decides, and names the reason
        return None


@contextmanager
def _own_size_limit():
    """Pillow refuses images over 2x MAX_IMAGE_PIXELS inside `Image.open`, before `max_pixels` is consulted:
    switch its guard off while opening, so `max_pixels` (None = no limit) is the only one."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def stored_mode(data: bytes) -> str:
    """The mode the file stores (before `to_rgb`), read from its header alone."""
    with _own_size_limit(), Image.open(io.BytesIO(data)) as header:
        return header.mode


def _checked(image: Image.Image, max_pixels: int | None) -> Image.Image:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"empty image ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"{width}x{height} = {width * height:,} pixels is over the {max_pixels:,}-pixel limit "
            "(decompression-bomb guard; raise `max_image_pixels` if the file is genuine)"
        )
    image.load()  # decode now: truncated files fail here, inside the guard
    return to_rgb(image)
