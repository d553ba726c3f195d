"""`hf-resnet export MODEL --onnx [--int8]`: the ONNX model answers as PyTorch does (within 1e-4) at any batch
size, int8's top-1 change on a labelled folder is measured and printed, and bad input is one line with exit 2."""

import contextlib
import io
import json
import re
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import PHOTOS, save_checkpoint
from transformers import AutoImageProcessor, ResNetForImageClassification

from hf_resnet import cli, export
from hf_resnet.data.transforms import PreprocessConfig, build_eval_transform
from hf_resnet.errors import ExportError
from hf_resnet.inference import Classifier

NAMES = ["red", "green", "blue"]  # the colour folders' classes


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny", NAMES)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    """The fp32 export through the command line, with random pictures for the parity check (no folder given)."""
    out = tmp_path_factory.mktemp("export") / "onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["export", str(model), "--onnx", "--output", str(out)])
    return code, out, printed.getvalue()


def _photos(transform, count=5):
    files = sorted(PHOTOS.rglob("*.jpg"))[:count]
    return export.load_pixels(files, transform)[0]


def test_exported_model_equals_pytorch_on_real_photos_at_any_batch_size(model, exported):
    code, out, printed = exported
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export_report.json", "model.onnx",
                                                     "preprocessor_config.json"]
    assert re.search(r"parity with PyTorch on 8 random pictures, .*: max \|logit difference\| [0-9.e+-]+ <= 1e-04",
                     printed), printed
    classifier = Classifier.load(str(model), device="cpu")
    pixels = _photos(build_eval_transform(classifier.preprocess))
    with torch.inference_mode():
        expected = classifier.model(pixel_values=pixels).logits.numpy()
    sess = export.session(out / "model.onnx")
    assert sess.get_inputs()[0].name == "pixel_values" and sess.get_inputs()[0].shape[1:] == [3, 32, 32]
    for batch in (1, 2, 5):  # the batch axis is free, not fixed at the example's 2
        got = export.run_session(sess, pixels, batch_size=batch)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4
    assert not np.allclose(expected, expected[:1])  # the photos give different logits: the comparison means something


def test_export_folder_describes_itself(model, exported):
    _, out, _ = exported
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {str(i): n for i, n in enumerate(NAMES)}
    ours = PreprocessConfig.from_processor(AutoImageProcessor.from_pretrained(out))
    assert ours == PreprocessConfig.from_processor(AutoImageProcessor.from_pretrained(model))
    report = json.loads((out / "export_report.json").read_text())
    assert report["parity_max_abs_diff"] <= 1e-4 and report["parity_source"] == "random pictures"
    assert report["int8"] is None and report["top1"] == {}


def test_int8_export_measures_and_prints_the_top1_change(model, colour_folders, tmp_path, capsys):
    out = tmp_path / "onnx"
    validation = colour_folders["validation"]
    code = cli.main(["export", str(model), "--onnx", "--int8", "--calibration", str(colour_folders["train"]),
                     "--calibration-images", "30", "--eval-dir", str(validation), "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "static QDQ calibrated on 30 images of" in printed
    found = re.search(r"top-1 on \S+ \(24 images\): fp32 (?P<fp32>[0-9.]+), int8 (?P<int8>[0-9.]+); top-1 changed on "
                      r"(?P<changed>\d+) of 24 images \((?P<share>[0-9.]+)%\)", printed)
    assert found, printed
    op_types = {node.op_type for node in onnx.load(out / "model_int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types  # really quantised, not a copy of fp32

    # The printed figures, recomputed here from the two files.
    classifier = Classifier.load(str(model), device="cpu")
    files = sorted(validation.rglob("*.png"))
    truth = np.array([NAMES.index(f.parent.name) for f in files])
    pixels = export.load_pixels(files, build_eval_transform(classifier.preprocess))[0]
    fp32 = export.run_session(export.session(out / "model.onnx"), pixels).argmax(1)
    int8 = export.run_session(export.session(out / "model_int8.onnx"), pixels).argmax(1)
    assert int(found["changed"]) == int((fp32 != int8).sum())
    assert float(found["fp32"]) == pytest.approx((fp32 == truth).mean(), abs=1e-4)
    assert float(found["int8"]) == pytest.approx((int8 == truth).mean(), abs=1e-4)
    report = json.loads((out / "export_report.json").read_text())
    assert report["top1"]["changed"] == int(found["changed"]) and report["int8_calibration_images"] == 30


def test_a_parity_failure_fails_the_export_and_keeps_no_model(model, tmp_path, monkeypatch, capsys):
    other = ResNetForImageClassification.from_pretrained(model)
    with torch.no_grad():
        other.classifier[-1].bias.add_(1e-3)  # a graph that is off by 1e-3: ten times the tolerance
    real_export = export.export_onnx
    monkeypatch.setattr(export, "export_onnx", lambda _model, path, size: real_export(other, path, size))
    out = tmp_path / "onnx"
    assert cli.main(["export", str(model), "--onnx", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.match(r"hf-resnet export: the ONNX model's logits differ from PyTorch's by up to 0\.001", err), err
    assert not (out / "model.onnx").exists()


@pytest.mark.parametrize("argv, message", [
    (["{missing}", "--onnx"], "No model folder"),
    (["{model}"], "name the format: --onnx"),
    (["{model}", "--onnx", "--int8"], "--int8 calibrates on images: pass --calibration DIR"),
    (["{model}", "--onnx", "--eval-dir", "{missing}"], "is not a folder"),
    (["{model}", "--onnx", "--eval-dir", "{photos}"], "class folder(s) 'ants', 'bees' are not among the model's"),
])
def test_usage_errors_are_one_line_with_exit_2(model, tmp_path, capsys, argv, message):
    values = {"model": str(model), "missing": str(tmp_path / "missing"), "photos": str(PHOTOS)}
    argv = [a.format(**values) for a in argv]
    assert cli.main(["export", *argv, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hf-resnet export: ") and message in err and "Traceback" not in err, err


def test_without_onnxruntime_it_says_what_to_install(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ExportError, match=r'onnxruntime, which is not installed: pip install "hf-resnet\[export\]"'):
        export.require_runtime()
    assert cli.main(["export", str(model), "--onnx", "--output", str(tmp_path / "out")]) == 2
    assert 'pip install "hf-resnet[export]"' in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written before the check
