"""hf-resnet audit: one folder holding every problem, each asserted in `audit_folder`'s report; the CLI end to end.

Every file is drawn by the test into tmp_path (no network, no shared data); the three CLI runs go in parallel.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make_image, make_image_folder
from PIL import Image

from hf_resnet.cli import main
from hf_resnet.data.audit import AuditError, audit_folder, format_report


def noisy_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def problem_folder(tmp_path_factory):
    """train/{red,green,blue} with 3 good PNGs each plus one of every problem; validation/ with a leak and a class
    (purple) that train lacks."""
    root = tmp_path_factory.mktemp("problems")
    train = make_image_folder(root / "train", 3, seed=0)
    validation = make_image_folder(root / "validation", 2, seed=1)
    rng = np.random.default_rng(5)
    jpeg = noisy_jpeg()
    (train / "red" / "truncated.jpg").write_bytes(jpeg[: int(len(jpeg) * 0.6)])
    (train / "green" / "caption.jpg").write_text("a caption, not a picture\n")
    shutil.copy(train / "blue" / "blue_000.png", train / "blue" / "blue_000_copy.png")  # duplicate inside train
    shutil.copy(train / "red" / "red_000.png", validation / "red" / "leak.png")  # the same file in two splits
    make_image((200, 30, 30), rng).convert("CMYK").save(train / "red" / "cmyk.jpg")
    make_image((30, 180, 40), rng).convert("P").save(train / "green" / "palette.png")
    Image.new("RGB", (4000, 3), (30, 40, 200)).save(train / "blue" / "wide.png")
    (train / "red" / "notes.txt").write_text("not an image\n")
    (train / "red" / "._red_000.png").write_bytes(b"\0\5\26\7")  # macOS metadata: hidden, skipped as datasets does
    make_image_folder(validation, 2, seed=2, classes={"purple": (120, 30, 160)})  # not a training class
    return root


def test_audit_reports_each_problem(problem_folder):
    report = audit_folder(problem_folder)
    train, validation = report["splits"]["train"], report["splits"]["validation"]
    assert report["layout"] == "splits" and set(report["splits"]) == {"train", "validation"}

    reasons = {u["file"]: u["reason"] for u in train["undecodable"]}
    assert set(reasons) == {"train/red/truncated.jpg", "train/green/caption.jpg"}
    assert "truncated" in reasons["train/red/truncated.jpg"].lower()
    assert "cannot identify" in reasons["train/green/caption.jpg"].lower()
    assert validation["undecodable"] == []

    # counts of decodable images per class; undecodable files are not counted
    assert train["classes"] == {"blue": 5, "green": 4, "red": 4}
    assert train["imbalance_ratio"] == 1.25 and train["image_files"] == 15 and train["decodable"] == 13
    assert validation["classes"] == {"blue": 2, "green": 2, "purple": 2, "red": 3}
    assert validation["missing_from_train"] == ["purple"]

    assert train["modes"] == {"RGB": 11, "CMYK": 1, "P": 1} and validation["modes"] == {"RGB": 9}
    assert {(o["file"], o["mode"]) for o in train["not_rgb"]} == {("train/red/cmyk.jpg", "CMYK"),
                                                                  ("train/green/palette.png", "P")}
    assert "train/green/palette.png: P 40x40" in format_report(report)  # named, not only counted
    assert train["extreme_aspect"] == [{"file": "train/blue/wide.png", "size": [4000, 3]}]
    assert train["width"] == {"min": 40, "median": 40, "max": 4000} and train["height"]["min"] == 3

    within, across = report["duplicates"]["within_splits"], report["duplicates"]["across_splits"]
    assert [g["files"] for g in within] == [["train/blue/blue_000.png", "train/blue/blue_000_copy.png"]]
    assert [(g["files"], g["splits"]) for g in across] == [
        (["train/red/red_000.png", "validation/red/leak.png"], ["train", "validation"])
    ]
    assert report["non_image_files"] == 1 and train["non_image_files"] == 1 and train["hidden_files"] == 1

    problems = "\n".join(report["problems"])
    assert not report["ok"] and len(report["problems"]) == 3
    assert "2 undecodable" in problems and "missing from train: purple" in problems and "leak.png" in problems
    json.dumps(report)  # JSON-ready as returned

    text = format_report(report)
    for expected in ("truncated.jpg", "caption.jpg", "purple", "leak.png", "4000x3", "CMYK 1", "3 problem(s)"):
        assert expected in text


def test_class_tree_small_class_unlabeled_and_pixel_limit(tmp_path):
    """A bare class tree is the split "train"; a 1-image class is a problem; loose files are unlabeled."""
    make_image_folder(tmp_path, 2, seed=0, classes={"a": (200, 30, 30)})
    make_image_folder(tmp_path, 1, seed=1, classes={"b": (30, 40, 200)})
    Image.new("RGB", (100, 100)).save(tmp_path / "loose.png")
    report = audit_folder(tmp_path, max_pixels=5000)
    train = report["splits"]["train"]
    assert list(report["splits"]) == ["train"] and train["folder"] == "."
    assert train["small_classes"] == ["b"] and train["unlabeled"] == 1
    assert "10,000 pixels is over the 5,000-pixel limit" in train["undecodable"][0]["reason"]
    assert any("fewer than 2 images: b" in p for p in report["problems"])
    assert any("1 file(s) directly in the split folder" in p for p in report["problems"])  # training refuses it
    nested = tmp_path / "a" / "sub"
    nested.mkdir()
    Image.new("RGB", (8, 8)).save(nested / "deep.png")
    assert any("below a class sub-folder (e.g. a/sub/deep.png)" in p for p in audit_folder(tmp_path)["problems"])


def test_bad_usage_raises(tmp_path):
    with pytest.raises(AuditError, match="does not exist"):
        audit_folder(tmp_path / "missing")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(AuditError, match="not a folder"):
        audit_folder(tmp_path / "a.txt")
    with pytest.raises(AuditError, match="holds no images"):
        audit_folder(tmp_path)


def test_cli_exit_codes_and_json(problem_folder, tmp_path):
    clean = tmp_path / "clean"
    make_image_folder(clean / "train", 2, seed=3)
    make_image_folder(clean / "val", 2, seed=4)
    cases = {"problems": (problem_folder, 1), "clean": (clean, 0), "missing": (tmp_path / "nowhere", 2)}
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "hf_resnet.cli", "audit", str(folder), "--json", str(tmp_path / f"{name}.json")],
            cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for name, (folder, _) in cases.items()
    }
    results = {name: (run.wait(timeout=120), *run.communicate()) for name, run in runs.items()}
    for name, (_, code) in cases.items():
        assert results[name][0] == code, (name, results[name])
    assert json.loads((tmp_path / "problems.json").read_text())["ok"] is False
    assert "3 problem(s)" in results["problems"][1] and "leak.png" in results["problems"][1]
    assert json.loads((tmp_path / "clean.json").read_text())["ok"] is True
    assert "OK: no problems" in results["clean"][1]
    assert not (tmp_path / "missing.json").exists()
    assert "does not exist" in results["missing"][2] and len(results["missing"][2].strip().splitlines()) == 1


def test_cli_json_goes_to_the_current_folder_never_into_the_data(tmp_path, monkeypatch, capsys):
    data = make_image_folder(tmp_path / "data", 2, seed=0)
    data.chmod(0o555)  # a read-only dataset audits fine: nothing is written into it
    monkeypatch.chdir(tmp_path)
    try:
        assert main(["audit", str(data)]) == 0
        assert json.loads((tmp_path / "audit.json").read_text())["ok"] is True
        assert sorted(p.name for p in data.rglob("*.json")) == []
        monkeypatch.chdir(data)  # from inside the data, the default would be inside it: refused, nothing written
        assert main(["audit", str(data)]) == 2
        assert "never writes into the data" in capsys.readouterr().err
    finally:
        data.chmod(0o755)
    assert main(["audit", str(data), "--json", str(tmp_path / "missing" / "a.json")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "missing").exists()
    assert main(["audit", str(data), "--json", "-"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["ok"] is True and "OK: no problems" in out.err
