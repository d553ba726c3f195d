"""Folders as people lay them out: one rule decides which files are images, for training and the audit alike;
classes are read as torchvision's ImageFolder reads them."""

import os

import pytest
from conftest import make_image, make_image_folder
from PIL import Image

from hf_resnet.configs import DataArguments
from hf_resnet.data.audit import audit_folder
from hf_resnet.data.folders import list_images, read_folder
from hf_resnet.data.loading import load_image_data
from hf_resnet.errors import DataError


def test_training_and_audit_count_the_same_files(tmp_path):
    train = make_image_folder(tmp_path / "train", 3, seed=0)
    for extra in ("red/.hidden.png", "red/._resource_fork.png", ".git/x.png", "__MACOSX/red/y.png",
                  "blue/UPPER.JPG", "blue/also.JPEG"):
        (train / extra).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (30, 40, 200)).save(train / extra, format="PNG" if extra.endswith("png") else "JPEG")
    (train / "green" / "notes.txt").write_text("not an image")

    listed = list_images(train)
    assert len(listed) == 9 + 2  # 3 per class, plus the two upper-case JPEGs; hidden and special ones left out
    data = load_image_data(DataArguments(train_dir=str(train), validation_dir=str(train)))
    assert data.sizes["validation"] == len(data.validation) == len(listed)  # what datasets reads, file for file
    report = audit_folder(train)
    assert report["splits"]["train"]["image_files"] == len(listed)
    assert report["splits"]["train"]["hidden_files"] == 4
    assert report["splits"]["train"]["non_image_files"] == 1
    assert set(report["splits"]["train"]["classes"]) == {"red", "green", "blue"}


def test_nested_folders_count_for_their_top_level_class_and_are_logged(tmp_path):
    train = make_image_folder(tmp_path / "train", 3, seed=0)
    (train / "red" / "nested" / "deeper").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(train / "red" / "nested" / "deeper" / "x.png")
    split = read_folder(str(train), "train_dir")
    assert split.classes == ["blue", "green", "red"] and split.labels.count("red") == 4
    assert any("1 image(s) are in folders nested inside a class folder" in note for note in split.notes)
    data = load_image_data(DataArguments(train_dir=str(train), validation_dir=str(train)))
    assert data.labels == ["blue", "green", "red"] and data.sizes["validation"] == 10


def test_an_empty_class_folder_is_left_out_and_said(tmp_path):
    train = make_image_folder(tmp_path / "train", 3, seed=0)
    (train / "wäsps x").mkdir()
    (train / "wäsps x" / "readme.txt").write_text("no images here")
    data = load_image_data(DataArguments(train_dir=str(train), validation_dir=str(train)))
    assert data.labels == ["blue", "green", "red"]
    assert any("`train_dir`: class folder 'wäsps x' holds no images: the class is left out" == n for n in data.notes)


def test_unicode_spaces_upper_case_symlinks_and_stray_files_work(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    train = tmp_path / "train"
    for name, colour in (("wäsps x", (200, 30, 30)), ("bees", (30, 40, 200))):
        (train / name).mkdir(parents=True)
        for i, suffix in enumerate((".JPG", ".JPEG", ".png")):
            make_image(colour, rng).save(train / name / f"img {i} é{suffix}", format="PNG" if i == 2 else "JPEG")
    (train / "bees" / ".DS_Store").write_bytes(b"\0\0")
    (train / "bees" / "notes.txt").write_text("stray")
    elsewhere = make_image_folder(tmp_path / "elsewhere", 2, seed=3, classes={"linked": (30, 180, 40)})
    os.symlink(elsewhere / "linked", train / "linked")  # a class folder that is a link
    os.symlink(train / "bees" / "img 0 é.JPG", train / "wäsps x" / "link.jpg")  # a file that is a link
    os.symlink(train, train / "bees" / "loop")  # a link back up the tree is read once, not forever
    data = load_image_data(DataArguments(train_dir=str(train), validation_dir=str(train)))
    assert data.labels == ["bees", "linked", "wäsps x"]
    assert data.sizes["train"] == len(data.validation) == 3 + 4 + 2
    assert sorted(data.validation["label"]) == [0, 0, 0, 1, 1, 2, 2, 2, 2]


def test_a_training_folder_needs_two_classes_with_images(tmp_path):
    train = make_image_folder(tmp_path / "train", 2, seed=0, classes={"red": (200, 30, 30)})
    (train / "empty").mkdir()
    with pytest.raises(DataError, match="1 class sub-folder with images.*at least 2 classes"):
        read_folder(str(train), "train_dir")
