"""ImageNet as users hold it, evaluated with the pretrained head unchanged.

The checkpoint stands in for microsoft/resnet-50: a 1000-class head named as ImageNet names its classes, on a
random tiny backbone, with the rows of 12 classes solved in closed form (least squares on the pooled features of
the very images evaluated here, through the package's own eval preprocessing). So an evaluation that aligns the
data's classes with the right rows scores ~1.0, and one that aligns them wrongly scores ~0: each layout's test
can fail.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PHOTOS, make_image
from datasets import ClassLabel, Dataset, Features
from datasets import Image as ImageFeature
from transformers import AutoImageProcessor, ResNetConfig, ResNetForImageClassification

from hf_resnet.bundled import resolve_asset
from hf_resnet.cli import main
from hf_resnet.data.imagenet import imagenet_classes, imagenet_synsets, is_imagenet_head
from hf_resnet.inference import Classifier

NAMES = [names for _, names in imagenet_classes()]
SYNSETS = imagenet_synsets()
# Ten classes by the name a person would give the folder (rows 0-9), and the two of the real photos.
COMMON = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray", "stingray", "cock",
          "hen", "ostrich"]
PHOTO_ROWS = {"ants": 310, "bees": 309}  # n02219486 "ant, emmet, pismire", n02206856 "bee"
PER_CLASS = 2


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """-> (checkpoint folder, {row: [image files]}): the images are JPEGs, written once and reused by every layout."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    images: dict[int, list[Path]] = {}
    for row in range(len(COMMON)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        images[row] = []
        for i in range(PER_CLASS):
            path = root / "pool" / f"{row}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            make_image(colour, rng).save(path, quality=95)
            images[row].append(path)
    for folder, row in PHOTO_ROWS.items():
        images[row] = sorted((PHOTOS / folder).glob("*.jpg"))[:3]
    return fit_checkpoint(root / "checkpoint", images), images


def fit_checkpoint(folder: Path, images: dict[int, list[Path]]) -> Path:
    """A 1000-class tiny ResNet whose rows `images` names are solved so each of its images scores its row first."""
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=1000, id2label=dict(enumerate(NAMES)), label2id={})
    torch.manual_seed(0)
    model = ResNetForImageClassification(config).eval()
    AutoImageProcessor.from_pretrained(resolve_asset("bundled:resnet-smoke")).save_pretrained(folder)
    model.save_pretrained(folder)
    classifier = Classifier.load(str(folder), device="cpu")
    files = [path for paths in images.values() for path in paths]
    rows = [row for row, paths in images.items() for _ in paths]
    features = []
    hook = classifier.model.classifier[1].register_forward_hook(lambda m, inputs, out: features.append(inputs[0]))
    list(classifier.predict_files([str(f) for f in files], k=1, batch_size=64))
    hook.remove()
    x = torch.cat(features).double()
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)  # the bias as a last feature
    fitted = sorted(images)
    targets = -torch.ones(len(files), len(fitted), dtype=x.dtype)
    targets[torch.arange(len(files)), torch.tensor([fitted.index(r) for r in rows])] = 1.0
    solution = torch.linalg.lstsq(x, targets).solution  # (features + 1, fitted rows): exact, as n < features
    linear = model.classifier[1]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(-2.0)  # the 988 classes not fitted never come first
        linear.weight[fitted] = solution[:-1].T.float()
        linear.bias[fitted] = solution[-1].float()
    model.save_pretrained(folder)
    return folder


def place(images: dict[int, list[Path]], root: Path, name_of) -> Path:
    """Copy each row's images into root/<name_of(row)>/ (a class-folder layout)."""
    for row, paths in images.items():
        (root / name_of(row)).mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, root / name_of(row) / path.name)
    return root


def evaluate(checkpoint: Path, out: Path, *args: str) -> dict:
    assert main(["evaluate", str(checkpoint), "--output_dir", str(out), "--report_to", "none", *args]) == 0
    return json.loads((out / "eval_results.json").read_text())


def test_the_shipped_classes_are_imagenets_order():
    assert len(SYNSETS) == 1000 and SYNSETS == sorted(SYNSETS) and SYNSETS[0] == "n01440764"
    assert NAMES.count("crane") == 2 and is_imagenet_head(NAMES)
    assert is_imagenet_head([n.split(",")[0] for n in NAMES])  # torchvision's short names
    assert not is_imagenet_head(NAMES[1:] + NAMES[:1])


def test_synset_folders_map_to_the_heads_rows_and_stream_the_same(imagenet, tmp_path):
    checkpoint, images = imagenet
    val = place(images, tmp_path / "val", lambda row: SYNSETS[row])
    results = evaluate(checkpoint, tmp_path / "eval", "--validation_dir", str(val))
    assert results["eval_accuracy"] >= 0.99 and results["eval_all_classes_accuracy"] >= 0.99
    assert results["eval_samples"] == sum(len(p) for p in images.values())
    report = json.loads((tmp_path / "eval/report/validation/eval_report.json").read_text())
    assert "12 classes" in report["scored_among"] and "1000-class head" in report["scored_among"]
    assert {row["class"] for row in report["per_class"]} >= {"tench, Tinca tinca", "ant, emmet, pismire"}
    streamed = evaluate(checkpoint, tmp_path / "streamed", "--validation_dir", str(val), "--streaming", "true")
    for key in ("eval_accuracy", "eval_top5_accuracy", "eval_all_classes_accuracy", "eval_f1_macro"):
        assert streamed[key] == pytest.approx(results[key]), key


def test_kaggle_flat_val_is_labelled_by_its_csv(imagenet, tmp_path):
    checkpoint, images = imagenet
    root = tmp_path / "imagenet-object-localization-challenge"
    val = root / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    val.mkdir(parents=True)
    rows = []
    for number, (row, path) in enumerate(((r, p) for r, paths in images.items() for p in paths), 1):
        image_id = f"ILSVRC2012_val_{number:08d}"
        shutil.copy(path, val / f"{image_id}.JPEG")
        rows.append((image_id, f"{SYNSETS[row]} 10 20 30 40 {SYNSETS[row]} 1 2 3 4"))
    (root / "LOC_synset_mapping.txt").write_text("\n".join(f"{s} {n}" for s, n in imagenet_classes()) + "\n")
    write_solution(root / "LOC_val_solution.csv", rows)
    results = evaluate(checkpoint, tmp_path / "eval", "--validation_dir", str(val))
    assert results["eval_accuracy"] >= 0.99 and results["eval_samples"] == len(rows)

    write_solution(root / "LOC_val_solution.csv", rows[: len(rows) // 2])  # half the files have no label
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(checkpoint), "--validation_dir", str(val), "--output_dir", str(tmp_path / "x")])
    assert info.value.code == 2
    write_solution(root / "LOC_val_solution.csv", [(rows[0][0], "n99999999 1 2 3 4"), *rows[1:]])
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(checkpoint), "--validation_dir", str(val), "--output_dir", str(tmp_path / "x")])
    assert info.value.code == 2


def write_solution(path: Path, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "PredictionString"])
        writer.writerows(rows)


def test_ten_classes_by_common_name_and_a_shuffled_map_scores_chance(imagenet, tmp_path):
    checkpoint, images = imagenet
    ten = {row: paths for row, paths in images.items() if row < len(COMMON)}
    val = place(ten, tmp_path / "val", lambda row: COMMON[row])
    results = evaluate(checkpoint, tmp_path / "eval", "--validation_dir", str(val))
    assert results["eval_accuracy"] >= 0.99 and results["eval_top5_accuracy"] >= 0.99
    shuffled = {name: (row + 1) % len(COMMON) for row, name in enumerate(COMMON)}  # every class on a wrong row
    wrong = evaluate(checkpoint, tmp_path / "wrong", "--validation_dir", str(val), "--class_map", json.dumps(shuffled))
    assert wrong["eval_accuracy"] <= 0.2


def test_two_classes_by_class_map(imagenet, tmp_path, capsys):
    checkpoint, images = imagenet
    photos = {row: paths for row, paths in images.items() if row in PHOTO_ROWS.values()}
    folder_of = {row: name for name, row in PHOTO_ROWS.items()}
    val = place(photos, tmp_path / "val", folder_of.get)
    with pytest.raises(SystemExit) as info:  # "ants" is no class of the checkpoint ("ant, emmet, pismire" is)
        main(["evaluate", str(checkpoint), "--validation_dir", str(val), "--output_dir", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "'ants'" in err and "class_map" in err
    results = evaluate(checkpoint, tmp_path / "eval", "--validation_dir", str(val),
                       "--class_map", "{ants: 310, bees: n02206856}")
    assert results["eval_accuracy"] >= 0.99


@pytest.mark.parametrize(("class_map", "message"), [
    ("{wasps: 1, ants: 310}", "not classes of the data"),
    ("{ants: crane, bees: bee}", "names 2 checkpoint classes: 134 n02012849"),
    ("{ants: 309, bees: bee}", "on one checkpoint class"),
    ("{ants: 1000, bees: bee}", "rows 0..999"),
    ("[1, 2]", "must map each dataset class"),
])
def test_a_bad_class_map_is_one_line_before_any_weights(imagenet, tmp_path, capsys, class_map, message):
    checkpoint, images = imagenet
    val = place({309: images[309], 310: images[310]}, tmp_path / "val", {310: "ants", 309: "bees"}.get)
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(checkpoint), "--validation_dir", str(val), "--output_dir", str(tmp_path / "x"),
              "--class_map", class_map])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and message in err and len(err.splitlines()) == 1


def test_a_hub_dataset_with_imagenets_names_is_matched_by_position(imagenet, tmp_path):
    """The Hub's ILSVRC/imagenet-1k: a ClassLabel of the 1000 names (unique, as `datasets` requires: the second
    "crane" spelled otherwise); by position, the whole head is kept, where a name lookup would find one crane."""
    checkpoint, images = imagenet
    files = [(row, str(p)) for row, paths in images.items() for p in paths]
    names = [f"{n} ({SYNSETS[i]})" if NAMES.count(n) > 1 and i != NAMES.index(n) else n for i, n in enumerate(NAMES)]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    data = Dataset.from_dict({"image": [f for _, f in files], "label": [r for r, _ in files]}, features=features)
    (tmp_path / "hub" / "data").mkdir(parents=True)
    data.to_parquet(str(tmp_path / "hub" / "data" / "validation-00000-of-00001.parquet"))
    results = evaluate(checkpoint, tmp_path / "eval", "--dataset_name", str(tmp_path / "hub"))
    assert results["eval_accuracy"] >= 0.99 and "eval_all_classes_accuracy" not in results  # among all 1000
