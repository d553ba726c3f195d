"""`gpu_decode`: the workers read bytes and draw the crop; the device decodes, crops, resizes and normalises.

On this CPU-only machine the device is the CPU (torchvision's CPU decoder stands in for nvJPEG); the last test runs
the same comparison on a GPU where there is one.
"""

import json
import math

import pytest
import torch
from conftest import PHOTOS, finetune, make_image_folder, recipe_args
from PIL import Image
from torchvision.transforms.v2 import functional as F

from hf_resnet.bundled import resolve_asset
from hf_resnet.data import gpu_decode
from hf_resnet.data.gpu_decode import DeviceDecode, DeviceDecoder
from hf_resnet.data.images import available_jpeg_decoders, decode_tensor
from hf_resnet.data.inputs import ExampleTransform, collate
from hf_resnet.data.transforms import (
    BatchNormalizer,
    PreprocessConfig,
    build_eval_transform,
)
from hf_resnet.errors import ConfigError

PHOTO_FILES = sorted(PHOTOS.glob("*/*.jpg"))


def resnet50_cfg() -> PreprocessConfig:
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-50-processor"))
    return PreprocessConfig.from_processor(processor)


def batch_of(files, cfg, device_decode, seed=None) -> dict:
    blank = torch.zeros(3, *cfg.crop_size, dtype=torch.uint8)
    transform = ExampleTransform(build_eval_transform(cfg, normalize=False), "image", "label", crop_size=cfg.crop_size,
                                 blank=blank, seed=seed, device_decode=device_decode)
    return collate([transform({"image": {"path": str(f), "bytes": None}, "label": 0}, i) for i, f in enumerate(files)])


def on_device(batch: dict, cfg, device="cpu", decoder=None) -> torch.Tensor:
    inputs = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    return DeviceDecoder(cfg, BatchNormalizer(cfg), decoder=decoder)(inputs)["pixel_values"]


def test_eval_on_the_device_is_within_two_levels_of_the_processor_exact_path():
    cfg = resnet50_cfg()
    batch = batch_of(PHOTO_FILES, cfg, DeviceDecode(train=False))
    assert len(batch["jpeg_bytes"]) == len(PHOTO_FILES)  # the workers decoded nothing
    exact = BatchNormalizer(cfg)(torch.stack([build_eval_transform(cfg, False)(decode_tensor(str(f)))
                                              for f in PHOTO_FILES]))
    ours = on_device(batch, cfg)
    difference = (ours - exact).abs()
    # Pillow's two rounded passes in float32: within 2 levels (2 / 255 / std 0.225 = 0.035), ~0 on average
    assert difference.max() < 0.04 and difference.mean() < 1e-3, (difference.max(), difference.mean())


def test_the_train_plan_is_the_cpu_crop_and_flip_drawn_under_the_same_seed():
    cfg = resnet50_cfg()
    plan_maker = DeviceDecode(train=True, scale=(0.08, 1.0), flip=0.5)
    batch = batch_of(PHOTO_FILES, cfg, plan_maker, seed=7)
    again = batch_of(PHOTO_FILES, cfg, plan_maker, seed=7)
    assert batch["jpeg_plans"] == again["jpeg_plans"]  # a resumed run draws the same crops
    other = batch_of(PHOTO_FILES, cfg, plan_maker, seed=8)
    assert batch["jpeg_plans"] != other["jpeg_plans"]
    ours = on_device(batch, cfg)
    flips = 0
    for position, (plan, path) in enumerate(zip(batch["jpeg_plans"], PHOTO_FILES)):
        top, left, height, width, flip, train = plan
        image = decode_tensor(str(path))
        assert train == 1 and 0 <= top and top + height <= image.shape[1] and left + width <= image.shape[2]
        area = height * width / (image.shape[1] * image.shape[2])
        assert 0.08 * 0.9 <= area <= 1.0 and 3 / 4 * 0.9 <= width / height <= 4 / 3 * 1.1
        reference = F.resized_crop(image, top, left, height, width, list(cfg.crop_size),
                                   interpolation=cfg.interpolation, antialias=True)
        reference = reference.flip(-1) if flip else reference
        flips += flip
        difference = (ours[position] - BatchNormalizer(cfg)(reference[None])[0]).abs()
        # one float pass against the CPU's two rounded uint8 passes: ~a quarter level on average; a wrong box or
        # flip would be off by whole units
        assert difference.mean() < 0.01 and difference.max() < 0.25, (path, difference.mean(), difference.max())
    assert 0 < flips < len(PHOTO_FILES)


def test_odd_files_are_decoded_by_the_workers_and_join_the_batch(tmp_path):
    cfg = resnet50_cfg()
    Image.open(PHOTO_FILES[0]).save(tmp_path / "photo.png")
    Image.open(PHOTO_FILES[1]).convert("CMYK").save(tmp_path / "cmyk.jpg")
    files = [PHOTO_FILES[2], tmp_path / "photo.png", tmp_path / "cmyk.jpg", PHOTO_FILES[3]]
    batch = batch_of(files, cfg, DeviceDecode(train=False))
    assert batch["jpeg_positions"] == [0, 3]
    exact = BatchNormalizer(cfg)(torch.stack([build_eval_transform(cfg, False)(decode_tensor(str(f))) for f in files]))
    ours = on_device(batch, cfg)
    assert torch.equal(ours[1:3], exact[1:3])  # decoded in the worker: the exact path
    assert (ours - exact).abs().max() < 0.04


def test_a_jpeg_the_device_cannot_decode_is_recorded_and_ignored(tmp_path):
    cfg = resnet50_cfg()
    data = PHOTO_FILES[0].read_bytes()
    broken = data[:600] + bytes(len(data) - 602) + b"\xff\xd9"  # header and end marker intact, the scan zeroed
    (tmp_path / "broken.jpg").write_bytes(broken)
    batch = batch_of([PHOTO_FILES[1], tmp_path / "broken.jpg"], cfg, DeviceDecode(train=False))
    assert batch["jpeg_positions"] == [0, 1]  # the header check lets it through
    failures = []
    decoder = DeviceDecoder(cfg, BatchNormalizer(cfg), on_failure=lambda *args: failures.append(args))
    out = decoder(dict(batch))
    if failures:  # libjpeg may also decode the zeroed scan as grey: then it is a (grey) picture, not a failure
        assert failures[0][1] == 1 and out["labels"].tolist() == [0, -100]
    else:
        assert out["labels"].tolist() == [0, 0]


def test_gpu_decode_refuses_augmentations_it_cannot_run():
    from hf_resnet.configs import DataArguments

    with pytest.raises(ConfigError, match="auto_augment.*gpu_decode: false"):
        DataArguments(dataset_name="bundled:digits", gpu_decode=True, auto_augment="randaugment")
    DataArguments(dataset_name="bundled:digits", gpu_decode=True)  # crop and flip: fine


def test_the_device_gets_a_decoder_that_decodes_there(monkeypatch):
    """A decoder that loads but cannot decode on the model's device (a build without nvJPEG for this CUDA) is
    passed over for the next; when none decodes there, the error says why each failed."""
    from hf_resnet.data import images

    working = next(iter(images.available_jpeg_decoders().values()))

    def without_nvjpeg(blobs, device):
        raise RuntimeError("nvjpeg: no CUDA runtime 13")

    monkeypatch.setattr(images, "_DECODERS", {"torchcodec": without_nvjpeg, "torchvision": working})
    monkeypatch.setattr(images, "JPEG_DECODER", "torchcodec")
    assert images.jpeg_decoder_for("cpu") == "torchvision"
    monkeypatch.setattr(images, "_DECODERS", {"torchcodec": without_nvjpeg})
    with pytest.raises(RuntimeError, match="no JPEG decoder decodes on cpu: torchcodec: RuntimeError: nvjpeg"):
        images.jpeg_decoder_for("cpu")


def test_gpu_decode_names_the_fix_when_no_jpeg_decoder_loads(monkeypatch):
    from hf_resnet.configs import DataArguments
    from hf_resnet.data import images
    from hf_resnet.errors import ConfigError

    monkeypatch.setattr(images, "JPEG_DECODER", "pillow")
    monkeypatch.delenv("HF_RESNET_JPEG_DECODER", raising=False)
    with pytest.raises(ConfigError, match="pip install torchcodec"):
        DataArguments(dataset_name="bundled:digits", gpu_decode=True)
    monkeypatch.setenv("HF_RESNET_JPEG_DECODER", "pillow")  # Pillow asked for: the fix is to unset it
    with pytest.raises(ConfigError, match="HF_RESNET_JPEG_DECODER=pillow asks for Pillow: unset it"):
        DataArguments(dataset_name="bundled:digits", gpu_decode=True)
    DataArguments(dataset_name="bundled:digits")  # without gpu_decode Pillow decodes: fine


@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["false", "true"])
def test_training_with_gpu_decode_learns_and_reports(tmp_path, streaming):
    folders = {split: make_image_folder(tmp_path / split, count, seed=seed, fmt="jpeg")
               for split, count, seed in (("train", 24, 0), ("validation", 8, 1))}
    first = sorted(folders["train"].rglob("*.jpeg"))[0]
    Image.open(first).save(first.with_suffix(".png"))  # one file the workers decode
    first.unlink()
    out = tmp_path / "out"
    metrics = finetune(recipe_args(out, folders, gpu_decode="true", streaming=streaming, num_train_epochs="3"))
    assert metrics["eval_accuracy"] > 0.6
    report = json.loads((out / "report" / "validation" / "eval_report.json").read_text())
    assert report["scored"] == 24
    assert (out / "report" / "validation" / "predictions_grid.png").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for nvJPEG (run on the GPU machine)")
@pytest.mark.parametrize("decoder", list(available_jpeg_decoders()))
def test_nvjpeg_eval_stays_within_the_stated_bound_of_the_processor(decoder):
    cfg = resnet50_cfg()
    batch = batch_of(PHOTO_FILES, cfg, DeviceDecode(train=False))
    exact = BatchNormalizer(cfg)(torch.stack([build_eval_transform(cfg, False)(decode_tensor(str(f)))
                                              for f in PHOTO_FILES]))
    difference = (on_device(batch, cfg, "cuda", decoder).cpu() - exact).abs()
    print(f"nvJPEG ({decoder}) eval vs processor: max {difference.max():.4f}, mean {difference.mean():.5f}")
    assert difference.mean() < 1e-2 and difference.max() < 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for nvJPEG (run on the GPU machine)")
@pytest.mark.parametrize("decoder", list(available_jpeg_decoders()))
def test_nvjpeg_never_writes_into_memory_that_queued_work_still_reads(decoder):
    """pytorch/vision#9606's hazard: a block freed while kernels queued on the current stream still read it must not
    receive decoded pixels. Each round queues a long kernel, then sums behind it, frees what they read, decodes,
    and checks every sum. Two kinds of freed memory: tensors the training stream made (the last step's gradients)
    and the last decode's own images (the previous chunk of a batch). The bare decoder is run the same way and its
    counts printed: they show whether this GPU has the hazard that hf-resnet's decode avoids."""
    from hf_resnet.data import images

    blobs = [f.read_bytes() for f in PHOTO_FILES]
    decoded = gpu_decode.decode_jpegs(blobs, "cuda", decoder)
    shapes = [tuple(image.shape) for image in decoded]
    expected_sums = [int(image.sum(dtype=torch.int64)) for image in decoded]
    del decoded

    def wrong_sums(decode, reuse_decoded: bool) -> int:
        torch.cuda.synchronize()
        wrong = 0
        for _ in range(30):
            if reuse_decoded:
                read, expected = list(decode()), expected_sums
            else:
                read = [torch.full(shape, k + 1, dtype=torch.uint8, device="cuda") for k, shape in enumerate(shapes)]
                expected = [(k + 1) * math.prod(shape) for k, shape in enumerate(shapes)]
            torch.cuda.synchronize()
            torch.cuda._sleep(20_000_000)  # ~10 ms of GPU time: the sums below are still queued during the decode
            sums = [t.sum(dtype=torch.int64) for t in read]
            del read  # their blocks go back to the allocator while the sums are queued
            decode()
            torch.cuda.synchronize()
            wrong += sum(int(total) != value for total, value in zip(sums, expected))
        return wrong

    def bare():
        return images._DECODERS[decoder](blobs, "cuda")

    def ours():
        return gpu_decode.decode_jpegs(blobs, "cuda", decoder)

    counts = {(name, reuse): wrong_sums(decode, reuse) for name, decode in (("bare", bare), ("ours", ours))
              for reuse in (False, True)}
    print(f"{decoder}: sums overwritten of 360 (freed tensors / freed decoded images): "
          f"bare {counts['bare', False]} / {counts['bare', True]}, "
          f"hf-resnet {counts['ours', False]} / {counts['ours', True]}")
    assert counts["ours", False] == counts["ours", True] == 0


def test_large_shrinks_are_area_averaged_first_and_stay_close_to_a_direct_resize():
    """CUDA's antialiased resize refuses shrinks past ~47x per axis (a 12 MP photo for a 32-pixel model): such
    images are averaged by whole factors first. On a smooth picture the result stays within a level of the direct
    resize (which the CPU can still do)."""
    from torchvision.transforms import InterpolationMode

    from hf_resnet.data.gpu_decode import within_resize_limit

    rows, cols = torch.meshgrid(torch.linspace(0, 6, 2400), torch.linspace(0, 4, 1800), indexing="ij")
    picture = torch.stack([torch.sin(rows), torch.cos(cols), torch.sin(rows + cols)]) * 100 + 128
    assert within_resize_limit(picture, (224, 224)) is picture  # 10.7x: left as it is
    assert within_resize_limit(picture, (140, 140)).shape == (3, 1200, 1800)  # 17x and 12.9x: rows averaged by 2
    shrunk = within_resize_limit(picture, (32, 32))  # 75x and 56x: averaged over 5 rows and 4 columns
    assert shrunk.shape == (3, 480, 450)
    bicubic = dict(interpolation=InterpolationMode.BICUBIC, antialias=True)
    difference = (F.resize(shrunk, [32, 32], **bicubic) - F.resize(picture, [32, 32], **bicubic)).abs()
    assert difference.max() < 1.0


def test_a_batch_is_decoded_in_calls_of_bounded_size_with_the_same_result(monkeypatch):
    """One nvJPEG call holds all its images' pixels at once: big files go in several calls, which change nothing."""
    from hf_resnet.data import gpu_decode as device_decode
    from hf_resnet.data.gpu_decode import call_groups

    assert call_groups([b"x" * 10] * 5, limit=25) == [range(0, 2), range(2, 4), range(4, 5)]
    assert call_groups([b"x" * 30, b"x" * 5], limit=25) == [range(0, 1), range(1, 2)]  # one file over: alone
    assert call_groups([b"x"] * 3) == [range(0, 3)]
    cfg = resnet50_cfg()
    batch = batch_of(PHOTO_FILES, cfg, DeviceDecode(train=False))
    whole = on_device(batch, cfg)
    monkeypatch.setattr(device_decode, "MAX_CALL_BYTES", 1)  # every file its own call
    assert torch.equal(on_device(batch_of(PHOTO_FILES, cfg, DeviceDecode(train=False)), cfg), whole)
