"""Decode one image file into a correct RGB picture, or say exactly why it cannot be.

Datasets are read with the image column cast to `Image(decode=False)`, so decoding happens here, per example,
inside the DataLoader workers: one broken file costs one example, not the iterator (datasets #6470, #7612, #8165).

Odd but valid images become the RGB picture a person sees: EXIF rotation applied; transparency (RGBA, LA, P with
a transparent index) composited on white instead of exposing what lies under the alpha; 16-bit grayscale scaled
to 8 bits, not clipped; CMYK, palette, 1-bit and YCbCr converted by Pillow. The first frame of a GIF/WebP/TIFF is
used. Images over `max_pixels` (Pillow's decompression-bomb limit by default) are refused before decoding.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's warning threshold (~0.25 GB of RGBA)
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
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in _TRANSPARENT_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def describe(value) -> str:
    """A file name for messages: the path when known, else '<bytes>'."""
    if isinstance(value, dict):
        return value.get("path") or "<bytes>"
    if isinstance(value, str):
        return value
    return getattr(value, "filename", None) or "<image>"


def decode_image(value, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`{"bytes", "path"}` (a decode=False Image feature), a path, or a PIL image -> RGB PIL image.

    Raises ImageDecodeError with the reason when the file cannot be used.
    """
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
            if data is None and path is None:
                raise ImageDecodeError("the example holds neither image bytes nor a path")
            image = Image.open(io.BytesIO(data) if data is not None else path)
        elif isinstance(value, str):
            image = Image.open(value)
        else:
            raise ImageDecodeError(f"expected image bytes or a path, got {type(value).__name__}")
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageDecodeError(f"empty image ({width}x{height})")
        if max_pixels is not None and width * height > max_pixels:
            raise ImageDecodeError(
                f"{width}x{height} = {width * height:,} pixels is over the {max_pixels:,}-pixel limit "
                "(decompression-bomb guard; raise `max_image_pixels` if the file is genuine)"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()  # decode now: truncated files fail here, inside the guard
        return to_rgb(image)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            EOFError, MemoryError, TypeError) as err:  # Pillow's ways of saying "not a usable image"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageDecodeError(f"{type(err).__name__}: {reason}") from err
