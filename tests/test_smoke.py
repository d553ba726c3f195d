"""The offline smoke command (README): bundled digits + bundled small ResNet reach >= 90% validation accuracy."""

import json

import pytest
from conftest import finetune

from hf_resnet.bundled import digits_image_folder


def test_digits_folder_is_rendered_once_and_stratified(tmp_path):
    root = digits_image_folder(tmp_path)
    train = {d.name: len(list(d.glob("*.png"))) for d in (root / "train").iterdir()}
    validation = {d.name: len(list(d.glob("*.png"))) for d in (root / "validation").iterdir()}
    assert sorted(train) == sorted(validation) == [str(i) for i in range(10)]
    assert sum(train.values()) + sum(validation.values()) == 1797
    assert all(abs(validation[c] / (train[c] + validation[c]) - 0.15) < 0.02 for c in train)
    stamp = (root / "train" / "0").stat().st_mtime_ns
    assert digits_image_folder(tmp_path) == root and (root / "train" / "0").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_smoke_recipe_reaches_90_percent(tmp_path):
    out = tmp_path / "smoke"
    finetune(["--config", "smoke/digits_smoke", "--output_dir", str(out)])
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.90, results
    assert results["eval_samples"] == 270
