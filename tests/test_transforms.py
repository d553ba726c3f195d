"""Eval preprocessing equals the checkpoint's image processor, tensor for tensor, on real photos."""

import numpy as np
import pytest
import torch
from conftest import PHOTOS
from PIL import Image
from transformers import AutoImageProcessor, BitImageProcessor, ViTImageProcessor

from hf_resnet.bundled import resolve_asset
from hf_resnet.data.images import to_rgb
from hf_resnet.data.inputs import collate
from hf_resnet.data.transforms import PreprocessConfig, build_eval_transform, build_train_transform

PHOTO_FILES = sorted(PHOTOS.glob("*/*.jpg"))  # ants and bees of many sizes and aspect ratios


def resnet50_processor():
    # microsoft/resnet-50's preprocessor_config.json, shipped in the package: shortest_edge 224, crop_pct 0.875
    return AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-50-processor"))


@pytest.mark.parametrize("make_processor", [resnet50_processor, ViTImageProcessor, BitImageProcessor])
def test_eval_transform_equals_processor_on_photos(make_processor):
    assert len(PHOTO_FILES) >= 12, f"expected the test photos under {PHOTOS}"
    processor = make_processor()
    transform = build_eval_transform(PreprocessConfig.from_processor(processor))
    sizes = set()
    for path in PHOTO_FILES:
        image = Image.open(path)
        sizes.add(image.size)
        ours = transform(image)
        theirs = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape, path
        assert torch.equal(ours, theirs), (path, (ours - theirs).abs().max())
    assert len(sizes) > 5  # the parity holds across sizes, not one lucky shape


def test_resnet50_config_reads_crop_pct():
    cfg = PreprocessConfig.from_processor(resnet50_processor())
    assert cfg.crop_size == (224, 224)
    assert cfg.resize_shortest_edge == 256  # int(224 / 0.875), not 224 as the HF example uses
    assert cfg.std == pytest.approx((0.229, 0.224, 0.225))  # the seed report's std (0.229 x3) was wrong


def test_train_transform_shape_and_randomness():
    cfg = PreprocessConfig.from_processor(resnet50_processor())
    transform = build_train_transform(cfg, scale=(0.08, 1.0), flip=0.5)
    image = Image.open(PHOTO_FILES[0])
    torch.manual_seed(0)
    a, b = transform(image), transform(image)
    assert a.shape == b.shape == (3, 224, 224) and a.dtype == torch.float32
    assert not torch.equal(a, b)  # random crops differ
    batch = collate([{"pixel_values": a, "labels": 1, "example_ids": 0},
                     {"pixel_values": b, "labels": 0, "example_ids": 1}])
    assert batch["pixel_values"].shape == (2, 3, 224, 224) and batch["labels"].tolist() == [1, 0]


@pytest.mark.parametrize("option", [
    {"auto_augment": "randaugment"}, {"auto_augment": "trivialaugment"}, {"auto_augment": "autoaugment"},
    {"color_jitter": 0.4}, {"rotation_degrees": 20.0}, {"translate": 0.2}, {"random_erasing": 1.0},
])
def test_each_augmentation_changes_the_image_and_is_a_function_of_the_seed(option):
    cfg = PreprocessConfig.from_processor(resnet50_processor())
    plain, augmented = build_train_transform(cfg, flip=0.0), build_train_transform(cfg, flip=0.0, **option)
    image = Image.open(PHOTO_FILES[1])
    differs = []
    for seed in range(4):  # a policy may draw its identity op for one seed
        outputs = []
        for transform in (plain, augmented, augmented):
            torch.manual_seed(seed)  # as inputs.py seeds each example: same seed, same crop
            outputs.append(transform(image))
        assert outputs[1].shape == (3, 224, 224) and outputs[1].dtype == torch.float32
        assert torch.equal(outputs[1], outputs[2])  # the same result for the same seed (exact resumes)
        differs.append(not torch.equal(outputs[0], outputs[1]))
    assert sum(differs) >= 2, differs  # the option changes the image


def test_to_rgb_composites_transparency_on_white():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red under a fully transparent alpha must not show
    rgba[:2, :, 3] = 255  # top half opaque red
    out = np.asarray(to_rgb(Image.fromarray(rgba, mode="RGBA")))
    assert out.shape == (4, 4, 3)
    assert (out[:2] == [255, 0, 0]).all() and (out[2:] == [255, 255, 255]).all()
    assert to_rgb(Image.new("L", (3, 3), 7)).mode == "RGB"


@pytest.mark.parametrize("make_processor", [resnet50_processor, ViTImageProcessor, BitImageProcessor])
def test_the_training_data_path_equals_the_processor_bit_for_bit(make_processor):
    """What the Trainer feeds the model in evaluation: files decoded to uint8 by `decode_tensor`, resized and cropped
    in the worker, batched as uint8 and normalised by `BatchNormalizer`: the processor's tensors exactly."""
    from hf_resnet.data.images import decode_tensor
    from hf_resnet.data.transforms import BatchNormalizer

    processor = make_processor()
    cfg = PreprocessConfig.from_processor(processor)
    transform = build_eval_transform(cfg, normalize=False)
    batch = torch.stack([transform(decode_tensor(str(path))) for path in PHOTO_FILES])
    assert batch.dtype == torch.uint8
    ours = BatchNormalizer(cfg, channels_last=True)(batch)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    theirs = processor([Image.open(p).convert("RGB") for p in PHOTO_FILES], return_tensors="pt")["pixel_values"]
    assert torch.equal(ours, theirs), (ours - theirs).abs().max()


def test_uint8_train_batches_normalised_later_equal_normalising_in_the_worker():
    from hf_resnet.data.transforms import BatchNormalizer

    cfg = PreprocessConfig.from_processor(resnet50_processor())
    image = Image.open(PHOTO_FILES[0])
    options = dict(auto_augment="randaugment", color_jitter=0.3, random_erasing=0.0)
    torch.manual_seed(3)
    in_worker = build_train_transform(cfg, **options)(image)
    torch.manual_seed(3)
    raw = build_train_transform(cfg, **options, normalize=False)(image)
    assert raw.dtype == torch.uint8
    assert torch.equal(BatchNormalizer(cfg)(raw[None])[0], in_worker)


def test_random_erasing_on_uint8_fills_the_mean_colour():
    from hf_resnet.data.transforms import BatchNormalizer, mean_colour

    cfg = PreprocessConfig.from_processor(resnet50_processor())
    torch.manual_seed(0)
    raw = build_train_transform(cfg, random_erasing=1.0, normalize=False)(Image.open(PHOTO_FILES[1]))
    colour = torch.tensor(mean_colour(cfg), dtype=torch.uint8).view(3, 1, 1)
    erased = (raw == colour).all(dim=0)
    assert 0.01 < erased.float().mean() < 0.5  # a box was erased (p=1), not the whole picture
    assert BatchNormalizer(cfg)(raw[None])[0][:, erased].abs().max() < 0.01  # ~0 once normalised, as before


def test_train_draft_decodes_large_jpegs_smaller_but_never_below_the_smallest_crop(tmp_path):
    from hf_resnet.data.images import decode_tensor
    from hf_resnet.data.transforms import TrainDraft

    draft = TrainDraft(224, 0.08)
    assert draft(500, 375) == 1 and draft(1600, 1200) == 1  # ImageNet-sized photos: decoded whole
    assert draft(4032, 3024) == 2  # 12 MP: half size, whose smallest crop (sqrt(0.75 * 0.08) * 1.5 MP) >= 224
    assert TrainDraft(224, 1.0)(4032, 3024) == 8  # crops of the whole image: an eighth (504x378) is enough
    big = tmp_path / "big.jpg"
    Image.open(PHOTO_FILES[0]).convert("RGB").resize((4032, 3024)).save(big, quality=90)
    whole = decode_tensor(str(big))
    half = decode_tensor(str(big), reduction=draft)
    assert whole.shape == (3, 3024, 4032) and half.shape == (3, 1512, 2016)
    shrunk = torch.nn.functional.interpolate(whole[None].float(), size=(1512, 2016), mode="area")[0]
    assert (half.float() - shrunk).abs().mean() < 3  # the same picture, within a few levels on average
    cfg = PreprocessConfig.from_processor(resnet50_processor())
    transform = build_train_transform(cfg, normalize=False)
    torch.manual_seed(0)
    crop = transform(half)
    assert crop.shape == (3, 224, 224) and crop.dtype == torch.uint8
