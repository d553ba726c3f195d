"""Broken image files never crash a run: skipped in every worker, map-style and streamed, listed, and limited."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import finetune, make_image, make_image_folder, recipe_args
from PIL import Image

from hf_resnet.errors import TooManySkippedImages


def add_bad_files(folder, prefix):
    """One of each kind of broken file, in the 'red' class."""
    good = folder / "red" / sorted(p.name for p in (folder / "red").iterdir())[0]
    jpeg = folder / "red" / f"{prefix}_truncated.jpg"
    Image.open(good).convert("RGB").save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[: len(jpeg.read_bytes()) // 2])
    (folder / "red" / f"{prefix}_empty.jpg").write_bytes(b"")
    (folder / "red" / f"{prefix}_text.jpg").write_text("this is not an image")
    # over max_image_pixels below
    Image.new("RGB", (300, 300), (200, 30, 30)).save(folder / "red" / f"{prefix}_huge.png")
    return {jpeg.name, f"{prefix}_empty.jpg", f"{prefix}_text.jpg", f"{prefix}_huge.png"}


@pytest.fixture(scope="module")
def broken_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    train = make_image_folder(root / "train", 40, seed=3)  # 120 good images
    validation = make_image_folder(root / "validation", 10, seed=4)  # 30 good images
    bad = {"train": add_bad_files(train, "tr"), "validation": add_bad_files(validation, "va")}
    return {"train": train, "validation": validation}, bad


@pytest.mark.slow
@pytest.mark.parametrize("streaming", ["false", "true"])
def test_bad_files_are_skipped_listed_and_not_scored(tmp_path, broken_folders, streaming):
    folders, bad = broken_folders
    out = tmp_path / "out"
    metrics = finetune(recipe_args(
        out, folders, streaming=streaming, dataloader_num_workers="2", num_train_epochs="2",
        max_image_pixels="50000", max_skipped_share="0.15",  # 4 of 34 validation images = 11.8%: tolerated
    ))
    report = json.loads((out / "skipped_images.json").read_text())
    for split in ("train", "validation"):
        files = {entry["file"].rsplit("/", 1)[-1] for entry in report[split]["files"]}
        assert files == bad[split], (split, files)
        assert report[split]["per_class"] == {"red": 4}
    assert report["validation"]["size"] == 34 and report["validation"]["skipped"] == 4
    reasons = {f["file"].rsplit("/", 1)[-1]: f["reason"] for f in report["validation"]["files"]}
    assert "pixel limit" in reasons["va_huge.png"] and "cannot identify" in reasons["va_text.jpg"]
    assert metrics["eval_samples"] == 30  # the 4 broken validation files are listed, not scored
    assert (out / "model.safetensors").is_file()
    with open(out / "report" / "validation" / "predictions_validation.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 34  # one row per image: a skipped image gets an empty row with the reason
    skipped = [r for r in rows if r["skipped"]]
    assert len(skipped) == 4 and all(r["predicted_label"] == r["true_label"] == "" for r in skipped)
    if streaming == "false":  # map-style rows know their files, and the skip report's reasons
        assert {r["file"].rsplit("/", 1)[-1] for r in skipped} == bad["validation"]
        assert any("pixel limit" in r["skipped"] for r in skipped)


@pytest.mark.slow
def test_too_many_bad_files_stop_the_run_and_name_them(tmp_path, broken_folders):
    folders, bad = broken_folders
    with pytest.raises(TooManySkippedImages, match="max_skipped_share") as info:
        finetune(recipe_args(tmp_path / "out", folders, num_train_epochs="1",
                                              max_image_pixels="50000", max_skipped_share="0.01"))
    assert any(name in str(info.value) for name in bad["train"])


@pytest.mark.slow
def test_unlabeled_test_images_that_fail_are_marked_in_predictions(tmp_path, colour_folders):
    test = tmp_path / "test"
    shutil.copytree(colour_folders["test"], test)
    (test / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    finetune(recipe_args(out, colour_folders, test_dir=test, num_train_epochs="1",
                                          max_skipped_share="0.5"))
    with open(out / "report" / "test" / "predictions_test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7
    broken = [r for r in rows if r["file"].endswith("broken.jpg")]
    assert len(broken) == 1 and broken[0]["predicted_label"] == "" and "cannot identify" in broken[0]["skipped"]
    assert all(r["predicted_label"] in {"red", "green", "blue"} for r in rows if r is not broken[0])


def test_odd_valid_images_train_like_any_other(tmp_path):
    """CMYK, palette, LA, 16-bit and EXIF-rotated files in a class folder: no skips, correct inputs."""
    folder = tmp_path / "odd"
    make_image_folder(folder, 4, seed=5)
    rng = np.random.default_rng(0)
    make_image((200, 30, 30), rng).convert("CMYK").save(folder / "red" / "cmyk.jpg")
    make_image((30, 180, 40), rng).convert("P").save(folder / "green" / "palette.png")
    make_image((30, 40, 200), rng).convert("LA").save(folder / "blue" / "la.png")
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(folder / "blue" / "gray16.png")
    from hf_resnet.configs import DataArguments
    from hf_resnet.data.inputs import ExampleTransform, attach
    from hf_resnet.data.loading import load_image_data
    data = load_image_data(DataArguments(train_dir=str(folder), validation_dir=str(folder)))
    records = []

    class Recorder:
        def record(self, *args):
            records.append(args)

    dataset = attach(data.train, ExampleTransform(lambda image: image, data.image_column, data.label_column,
                                                  recorder=Recorder()))
    pictures = [dataset[i]["pixel_values"] for i in range(len(dataset))]
    assert records == [] and len(pictures) == 16
    assert all(p.ndim == 3 and p.shape[0] == 3 and p.dtype == torch.uint8 for p in pictures)  # decoded (3, H, W)


@pytest.mark.slow
def test_all_bad_validation_stops_with_the_report_not_a_crash(tmp_path, colour_folders):
    validation = make_image_folder(tmp_path / "validation", 2, seed=6)
    for image in validation.rglob("*.png"):
        image.write_bytes(b"not an image")
    with pytest.raises(TooManySkippedImages, match="6 of 6 validation images"):
        finetune(recipe_args(tmp_path / "out", {**colour_folders, "validation": validation},
                                              num_train_epochs="1"))


@pytest.mark.slow
def test_a_fresh_run_does_not_inherit_the_previous_runs_skips(tmp_path, colour_folders):
    validation = tmp_path / "validation"
    shutil.copytree(colour_folders["validation"], validation)
    broken = validation / "red" / "broken.png"
    broken.write_bytes(b"")
    out = tmp_path / "out"
    finetune(recipe_args(out, {**colour_folders, "validation": validation}, num_train_epochs="1",
                                          max_skipped_share="1"))
    broken.unlink()  # fixed
    finetune(recipe_args(out, {**colour_folders, "validation": validation}, num_train_epochs="1",
                                          resume_from_checkpoint="false"))
    assert not (out / "skipped_images.jsonl").exists() and (out / "skipped_images.previous.jsonl").exists()
