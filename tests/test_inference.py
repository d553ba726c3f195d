"""`Classifier` and `hf-resnet predict`: the same top-k as pipeline(), k labels per image with probabilities, a
time per image, and one clear line (never a traceback) for a file that cannot be read."""

import csv
import re
import shutil

import pytest
from conftest import PHOTOS, save_checkpoint
from transformers import pipeline

from hf_resnet import cli
from hf_resnet.inference import Classifier

NAMES = ["ants", "bees", "wasps", "flies", "moths", "beetles"]
BLOCK = re.compile(r"^(?P<file>\S+)  computation time (?P<ms>[0-9.]+) ms\n(?P<rows>(?:  .+\n)+)", re.MULTILINE)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny", NAMES)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(PHOTOS, folder)  # 12 real JPEGs of several sizes, in ants/ and bees/
    (folder / "ants" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (folder / "notes.txt").write_text("not an image: not listed")
    return folder


def test_predict_prints_top_k_with_probabilities_and_the_same_top1_as_pipeline(model, images, tmp_path, capsys):
    table = tmp_path / "predictions.csv"
    code = cli.main(["predict", str(model), str(images), "--top_k", "3", "--batch_size", "5", "--output", str(table)])
    out, err = capsys.readouterr()
    assert code == 1  # one file could not be read; the others are predicted
    assert "Traceback" not in out + err
    assert re.search(r"^\S+broken\.jpg: cannot read it \(UnidentifiedImageError: ", out, re.MULTILINE), out
    blocks = {m["file"]: m for m in BLOCK.finditer(out)}
    photos = sorted(str(p) for p in images.rglob("*.jpg") if p.name != "broken.jpg")
    assert sorted(blocks) == photos
    classifier = pipeline("image-classification", model=str(model), device="cpu")
    for file, block in blocks.items():
        rows = [line.split() for line in block["rows"].splitlines()]
        labels, scores = [r[0] for r in rows], [float(r[1]) for r in rows]
        assert len(labels) == 3 and set(labels) <= set(NAMES) and len(set(labels)) == 3
        assert all(0.0 <= s <= 1.0 for s in scores) and scores == sorted(scores, reverse=True)
        assert float(block["ms"]) > 0
        expected = classifier(file, top_k=3)
        assert labels[0] == expected[0]["label"], file
        assert scores == pytest.approx([e["score"] for e in expected], abs=1e-3)
    assert re.search(r"^12 image\(s\) in [0-9.]+ s: [0-9.]+ ms per image .*; 1 could not be read", out, re.MULTILINE)

    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 13 and [r["file"] for r in rows if r["skipped"]] == [str(images / "ants" / "broken.jpg")]
    assert all(r["predicted_label"] == r["top3_labels"].split("|")[0] for r in rows if not r["skipped"])


def test_predict_a_single_file_and_a_missing_path(model, capsys):
    photo = sorted(PHOTOS.rglob("*.jpg"))[0]
    assert cli.main(["predict", str(model), str(photo), "--top_k", "10"]) == 0
    out = capsys.readouterr().out
    assert len(BLOCK.search(out)["rows"].splitlines()) == len(NAMES)  # k is capped at the number of classes
    assert cli.main(["predict", str(model), str(photo), "missing.png"]) == 1
    assert "missing.png: no such file or folder" in capsys.readouterr().err


def test_predict_usage_errors_are_one_line_with_exit_2(tmp_path, capsys):
    photo = str(sorted(PHOTOS.rglob("*.jpg"))[0])
    assert cli.main(["predict", str(tmp_path / "no-model"), photo]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-resnet predict: ") and "Traceback" not in err
    assert cli.main(["predict", str(tmp_path / "no-model"), str(tmp_path / "empty")]) == 2
    assert "no image to predict" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["predict", str(tmp_path), photo, "--top_k", "0"])
    assert info.value.code == 2


def test_classifier_display_undoes_the_normalisation(model):
    import numpy as np
    import torch

    from hf_resnet.data.images import decode_tensor
    from hf_resnet.data.transforms import BatchNormalizer

    classifier = Classifier.load(str(model), device="cpu")
    pixels = classifier.transform(decode_tensor(str(sorted(PHOTOS.rglob("*.jpg"))[0])))  # uint8, as the model sees
    shown = classifier.to_display(pixels[None])[0]
    assert shown.shape == (32, 32, 3) and shown.dtype == np.uint8
    assert np.array_equal(shown, pixels.permute(1, 2, 0).numpy())
    normalised = BatchNormalizer(classifier.preprocess)(pixels[None])
    assert normalised.dtype == torch.float32 and normalised.abs().max() > 1  # really normalised
    assert np.array_equal(classifier.to_display(normalised)[0], shown)  # normalised inputs display the same picture
    assert torch.equal(classifier.logits(pixels[None]), classifier.logits(normalised))
