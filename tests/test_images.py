"""decode_image: broken files raise ImageDecodeError with a reason; odd but valid ones become the RGB a person sees.

Every file is written by the test into tmp_path; each bad file is tried both by path and as a
datasets `Image(decode=False)` value, `{"bytes": ..., "path": None}`.
"""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_resnet.bundled import resolve_asset
from hf_resnet.data import images as images_module
from hf_resnet.data.images import ImageDecodeError, decode_image
from hf_resnet.data.transforms import PreprocessConfig, build_eval_transform

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def close(actual, expected, tol=2) -> bool:
    return bool(np.all(np.abs(np.asarray(actual, int) - np.asarray(expected, int)) <= tol))


def two_colour(width=10, height=6) -> np.ndarray:
    """Left half one colour, right half another, so a wrong orientation or palette would show."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (200, 30, 30)
    array[:, width // 2 :] = (30, 40, 200)
    return array


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# ---------------------------------------------------------------- undecodable -> ImageDecodeError with a reason

BAD_FILES = {
    "truncated.jpg": (lambda: jpeg_bytes()[: int(len(jpeg_bytes()) * 0.6)], "truncated"),
    "empty.jpg": (lambda: b"", "cannot identify"),
    "text.jpg": (lambda: b"this is a caption, not a picture\n", "cannot identify"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_undecodable_file_raises_with_reason(tmp_path, name, as_bytes):
    make, reason = BAD_FILES[name]
    data = make()
    path = tmp_path / name
    path.write_bytes(data)
    value = {"bytes": data, "path": None} if as_bytes else str(path)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(value)
    assert reason in str(info.value).lower()


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_over_pixel_limit_is_refused_and_none_lifts_it(tmp_path, as_bytes):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100), (10, 20, 30)).save(path)
    value = {"bytes": path.read_bytes(), "path": None} if as_bytes else str(path)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(value, max_pixels=5000)
    message = str(info.value)
    assert "5,000-pixel limit" in message and "10,000" in message and "decompression-bomb" in message
    image = decode_image(value, max_pixels=None)
    assert image.size == (100, 100)
    assert close(pixels(image), (10, 20, 30), tol=0)


def test_neither_bytes_nor_path_raises():
    with pytest.raises(ImageDecodeError, match="neither image bytes nor a path"):
        decode_image({"bytes": None, "path": None})


def test_bytes_win_over_a_missing_path(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (0, 200, 0)).save(buffer, "PNG")
    image = decode_image({"bytes": buffer.getvalue(), "path": str(tmp_path / "gone.png")})
    assert image.size == (3, 2) and close(pixels(image), (0, 200, 0), tol=0)


# ---------------------------------------------------------------- odd but valid -> the RGB a person sees


@pytest.mark.parametrize("suffix", ["jpg", "tiff"])
def test_cmyk_cyan_becomes_rgb_cyan(tmp_path, suffix):
    path = tmp_path / f"cyan.{suffix}"
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(path)
    assert Image.open(path).mode == "CMYK"
    image = decode_image(str(path))
    assert image.size == (8, 8)
    assert close(pixels(image), (0, 255, 255), tol=3)


def palette_image(transparent: bool) -> Image.Image:
    image = Image.new("P", (4, 2))
    image.putpalette([*RED, *BLUE] + [0] * (256 * 3 - 6))
    image.putdata([0, 0, 1, 1] * 2)  # left two columns index 0 (red), right two index 1 (blue)
    if transparent:
        image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("suffix", ["png", "gif"])
@pytest.mark.parametrize("transparent", [False, True], ids=["opaque", "transparent-index"])
def test_palette_image(tmp_path, suffix, transparent):
    path = tmp_path / f"palette.{suffix}"
    palette_image(transparent).save(path)
    assert Image.open(path).mode == "P"
    got = pixels(decode_image(str(path)))
    assert got.shape == (2, 4, 3)
    assert close(got[:, :2], WHITE if transparent else RED, tol=0)  # the transparent index shows white
    assert close(got[:, 2:], BLUE, tol=0)  # opaque pixels keep their colour


def test_rgba_composites_on_white(tmp_path):
    array = np.zeros((2, 4, 4), np.uint8)
    array[..., 0] = 255  # pure red underneath everything
    array[..., 3] = [0, 0, 128, 255]  # transparent, transparent, half, opaque
    path = tmp_path / "rgba.png"
    Image.fromarray(array, "RGBA").save(path)
    got = pixels(decode_image(str(path)))
    assert close(got[:, :2], WHITE, tol=0)  # not the red hidden under alpha 0
    assert close(got[:, 2], (255, 127, 127), tol=2)  # half red over white
    assert close(got[:, 3], RED, tol=0)


def test_la_composites_on_white(tmp_path):
    array = np.zeros((2, 3, 2), np.uint8)  # black under alpha 0, 128, 255
    array[..., 1] = [0, 128, 255]
    path = tmp_path / "la.png"
    Image.fromarray(array, "LA").save(path)
    assert Image.open(path).mode == "LA"
    got = pixels(decode_image(str(path)))
    assert close(got[:, 0], WHITE, tol=0)
    assert close(got[:, 1], (127, 127, 127), tol=2)
    assert close(got[:, 2], (0, 0, 0), tol=0)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "gray16.png"
    Image.fromarray(np.array([[0, 32896, 65535]], np.uint16)).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    got = pixels(decode_image(str(path)))
    assert got.shape == (1, 3, 3)
    assert close(got[0], [[0] * 3, [128] * 3, [255] * 3], tol=1)


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))  # left half red
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    assert Image.open(path).size == (40, 20)
    got = decode_image(str(path))
    assert got.size == (20, 40)
    array = pixels(got)
    assert close(array[5:15, 5:15], RED, tol=12)  # the stored left half is on top once turned clockwise
    assert close(array[25:35, 5:15], BLUE, tol=12)


@pytest.mark.parametrize("fmt", ["gif", "webp", "bmp", "tiff"])
def test_format_round_trip(tmp_path, fmt):
    source = two_colour()
    path = tmp_path / f"small.{fmt}"
    Image.fromarray(source).save(path, **({"lossless": True} if fmt == "webp" else {}))
    image = decode_image(str(path))
    assert image.size == (10, 6)
    assert close(pixels(image), source, tol=4 if fmt == "gif" else 0)


@pytest.mark.parametrize("size", [(1, 1), (4000, 3)])
def test_tiny_and_extreme_aspect_sizes_are_kept(tmp_path, size):
    path = tmp_path / "odd.png"
    Image.new("RGB", size, (10, 200, 30)).save(path)
    image = decode_image({"bytes": path.read_bytes(), "path": None})
    assert image.size == size
    assert close(pixels(image), (10, 200, 30), tol=0)


def test_open_pil_image_is_converted():
    array = np.zeros((2, 2, 4), np.uint8)
    array[..., 0] = 255
    array[0, :, 3] = 255  # top row opaque red, bottom row transparent
    got = pixels(decode_image(Image.fromarray(array, "RGBA")))
    assert close(got[0], RED, tol=0) and close(got[1], WHITE, tol=0)
    gray = decode_image(Image.new("L", (3, 2), 77))
    assert gray.mode == "RGB" and gray.size == (3, 2) and close(pixels(gray), (77, 77, 77), tol=0)


# ---------------------------------------------------------------- eval transform copes with the odd sizes


@pytest.mark.parametrize("size", [(1, 1), (4000, 3), (3, 4000)])
def test_eval_transform_on_tiny_and_extreme_aspect(size):
    processor = AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-50-processor"))
    transform = build_eval_transform(PreprocessConfig.from_processor(processor))
    colour = (10, 200, 30)
    x = transform(decode_image(Image.new("RGB", size, colour)))
    assert x.shape == (3, 224, 224)
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    expected = (torch.tensor(colour) / 255.0 - mean) / std  # a flat colour stays flat through resize + crop
    assert torch.allclose(x, expected[:, None, None].expand_as(x), atol=1e-4)


def test_palette_with_transparency_in_the_palette_is_composited_on_white():
    rgba = np.zeros((2, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, fully transparent
    palette_image = Image.fromarray(rgba, "RGBA").quantize()  # alpha lives in the palette, not in info
    assert decode_image(palette_image).getpixel((0, 0)) == (255, 255, 255)


def test_max_pixels_is_the_only_size_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (100, 100), 9).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would refuse 10,000 pixels by itself
    assert decode_image(str(path), max_pixels=None).size == (100, 100)
    assert decode_image(str(path), max_pixels=20_000).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's own setting is left as it was
    with pytest.raises(ImageDecodeError, match="10,000 pixels"):
        decode_image(str(path), max_pixels=5_000)


def test_undecodable_bytes_message_names_the_file():
    with pytest.raises(ImageDecodeError) as info:
        decode_image({"bytes": b"not an image", "path": "photos/cat.jpg"})
    assert "photos/cat.jpg" in str(info.value) and "BytesIO" not in str(info.value)


# Every JPEG decoder this install loads (torchcodec and torchvision with `.[dev]`), and none (Pillow alone).
DECODERS = [*images_module.available_jpeg_decoders(), "pillow"]


@pytest.fixture(params=DECODERS)
def jpeg_decoder(request, monkeypatch):
    """Decode through one backend; yields the files it decoded (the fast path), so a test can check it ran."""
    decoded: list[int] = []
    decode = images_module.available_jpeg_decoders().get(request.param)

    def spy(blobs, device):
        decoded.extend(len(blob) for blob in blobs)
        return decode(blobs, device)

    monkeypatch.setattr(images_module, "JPEG_DECODER", request.param)
    monkeypatch.setattr(images_module, "_decode_jpegs", spy if decode is not None else None)
    yield decoded


def test_the_best_jpeg_decoder_is_chosen_and_a_wrong_choice_is_refused(monkeypatch):
    assert DECODERS[0] == "torchcodec" or "torchcodec" not in DECODERS  # TorchCodec first where it loads
    monkeypatch.delenv("HF_RESNET_JPEG_DECODER", raising=False)
    assert images_module._chosen_decoder() == (DECODERS[0], None)
    monkeypatch.setenv("HF_RESNET_JPEG_DECODER", "Pillow")
    assert images_module._chosen_decoder() == ("pillow", None)
    monkeypatch.setenv("HF_RESNET_JPEG_DECODER", "nvjpeg")  # the best instead, and the problem for the CLI to report
    chosen, problem = images_module._chosen_decoder()
    assert chosen == DECODERS[0] and "HF_RESNET_JPEG_DECODER='nvjpeg'" in problem and "use one of" in problem


def test_decode_tensor_gives_pillows_pixels_for_every_kind_of_file(tmp_path, jpeg_decoder):
    """The fast path (libjpeg-turbo into a tensor, by each decoder that loads) and the Pillow path agree pixel for
    pixel: real photos, a grayscale and a CMYK JPEG, an EXIF-rotated one, and a PNG."""
    from conftest import PHOTOS
    from torchvision.transforms.v2.functional import pil_to_tensor

    from hf_resnet.data.images import decode_tensor, plain_jpeg

    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    picture.convert("L").save(tmp_path / "gray.jpg")
    picture.convert("CMYK").save(tmp_path / "cmyk.jpg")
    picture.save(tmp_path / "picture.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show
    picture.save(tmp_path / "rotated.jpg", exif=exif)
    files = sorted(PHOTOS.rglob("*.jpg")) + sorted(tmp_path.iterdir())
    for path in files:
        ours = decode_tensor(str(path))
        assert ours.dtype == torch.uint8 and ours.shape[0] == 3
        assert torch.equal(ours, pil_to_tensor(decode_image(str(path)))), path
    assert all(plain_jpeg(str(p)) is not None for p in PHOTOS.rglob("*.jpg"))  # photos: the fast path
    assert plain_jpeg(str(tmp_path / "gray.jpg")) is not None
    for odd in ("cmyk.jpg", "rotated.jpg", "picture.png"):  # ... and these went through Pillow
        assert plain_jpeg(str(tmp_path / odd)) is None
    assert decode_tensor(str(tmp_path / "rotated.jpg")).shape[1:] == (50, 30)  # upright
    photos = len(list(PHOTOS.rglob("*.jpg")))
    fast = 0 if images_module.JPEG_DECODER == "pillow" else photos + 1  # the photos and gray.jpg, nothing else
    assert len(jpeg_decoder) == fast


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_decode_tensor_refuses_what_decode_image_refuses_with_the_same_reason(tmp_path, name, jpeg_decoder):
    from hf_resnet.data.images import decode_tensor

    make, _ = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageDecodeError) as pillow:
        decode_image(str(path))
    with pytest.raises(ImageDecodeError) as ours:
        decode_tensor(str(path))
    assert str(ours.value) == str(pillow.value)
