"""Export a model to ONNX (fp32, and int8 by static quantisation), checked against PyTorch before it is kept.

    hf-resnet export outputs/digits-smoke --onnx                                   # -> digits-smoke-onnx/
    hf-resnet export outputs/digits-smoke --onnx --int8 --eval-dir data/val        # + model_int8.onnx, top-1

The output folder describes itself: `model.onnx` (input `pixel_values`, float32 (batch, 3, H, W) normalised as
the image processor does; output `logits`; the batch size is free), `model_int8.onnx` with `--int8`, the
model's `config.json` (id2label) and `preprocessor_config.json`, and `export_report.json` with the figures
printed. The fp32 model is run with ONNX Runtime on images preprocessed by the project's eval transform (the
calibration or evaluation images when given, else random pictures) and its logits must equal PyTorch's within
`PARITY_ATOL`, or the export fails and nothing claims to be good. int8 is static QDQ quantisation (uint8
activations, int8 per-channel weights) calibrated on images: dynamic int8 was slower than fp32 on this CPU. Its
cost in accuracy is measured, never assumed: with `--eval-dir` (class sub-folders named as the model's labels)
the top-1 of fp32 and int8 and the share of images whose top-1 changed are printed.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .configs import ModelArguments
from .constants import DEFAULT_MAX_PIXELS
from .data.folders import list_images, read_folder
from .data.images import ImageDecodeError, decode_image
from .data.transforms import build_eval_transform
from .errors import DataError, ExportError, first_line
from .inference import Classifier
from .training.modeling import load_image_processor

ONNX_NAME, INT8_NAME, REPORT_NAME = "model.onnx", "model_int8.onnx", "export_report.json"
PARITY_ATOL = 1e-4  # max |logit difference| between ONNX Runtime fp32 and PyTorch
PARITY_IMAGES = 8  # images compared, at batch 1 and as one batch (the batch axis is dynamic)
INSTALL = 'pip install "hf-resnet[export]"'


@dataclass
class ExportReport:
    """What an export wrote and measured (also written to export_report.json)."""

    output: str
    onnx: str
    parity_max_abs_diff: float
    parity_images: int
    parity_source: str  # "images of DIR" or "random pictures"
    export_seconds: float
    int8: str | None = None
    int8_calibration_images: int = 0
    int8_max_abs_diff: float | None = None  # against fp32 on the parity images: information, not a bound
    top1: dict = field(default_factory=dict)  # eval_dir, images, fp32, int8, changed, changed_share


def require_runtime() -> None:
    """onnx, onnxscript (the exporter's) and onnxruntime are the optional `export` extra."""
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ExportError(f"exporting needs {', '.join(missing)}, which is not installed: {INSTALL}")


def session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session; `threads` intra-op threads (None: ONNX Runtime's choice, one per core)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(sess, pixel_values: np.ndarray | torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Logits (N, classes) for pixel values (N, 3, H, W), in batches."""
    pixels = pixel_values.numpy() if isinstance(pixel_values, torch.Tensor) else pixel_values
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    return np.concatenate([sess.run(["logits"], {"pixel_values": pixels[i : i + batch_size]})[0]
                           for i in range(0, len(pixels), batch_size)])


class _LogitsOnly(torch.nn.Module):
    """pixel_values -> logits: the graph's one input and one output, named as the model's."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values=pixel_values).logits


def export_onnx(model: torch.nn.Module, path: Path, crop_size: tuple[int, int]) -> None:
    """torch.onnx's dynamo exporter, the batch axis left free, written as one file (weights inside)."""
    import onnx

    example = torch.zeros(2, 3, *crop_size)  # 2, not 1: a batch of 1 would be specialised into the graph
    wrapped = _LogitsOnly(model.float().eval()).eval()
    try:
        program = torch.onnx.export(wrapped, (example,), input_names=["pixel_values"], output_names=["logits"],
                                    dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch")}},
                                    dynamo=True, verbose=False)
        program.save(str(path), external_data=False)
    except Exception as err:  # the exporter's errors have no common base class
        raise ExportError(f"torch.onnx.export failed for this model: {first_line(err, with_type=True)}") from err
    onnx.checker.check_model(str(path))


def load_pixels(files: list[Path], transform, max_pixels: int | None = DEFAULT_MAX_PIXELS
                ) -> tuple[torch.Tensor, list[int]]:
    """The files preprocessed as the evaluation does, stacked; and the positions of those that could be read."""
    pixels, kept = [], []
    for index, file in enumerate(files):
        try:
            pixels.append(transform(decode_image(str(file), max_pixels)))
        except ImageDecodeError:
            continue
        kept.append(index)
    if not pixels:
        return torch.empty(0), kept
    return torch.stack(pixels), kept


def random_pictures(transform, count: int, seed: int = 0) -> torch.Tensor:
    """Random RGB pictures (uint8 noise in varied sizes) through the eval transform: realistic input ranges."""
    rng = np.random.default_rng(seed)
    pictures = [Image.fromarray(rng.integers(0, 256, size=(int(rng.integers(64, 400)), int(rng.integers(64, 400)), 3),
                                             dtype=np.uint8)) for _ in range(count)]
    return torch.stack([transform(picture) for picture in pictures])


def spread(files: list[Path], count: int) -> list[Path]:
    """`count` files evenly spaced through a sorted list (every class of a class-sorted folder), all if fewer."""
    if len(files) <= count:
        return files
    return [files[int(i * len(files) / count)] for i in range(count)]


def check_parity(model: torch.nn.Module, sess, pixels: torch.Tensor, atol: float = PARITY_ATOL) -> float:
    """Max |logit difference| between ONNX Runtime and PyTorch, image by image and as one batch; an
    ExportError when it exceeds `atol`."""
    with torch.inference_mode():
        expected = model(pixel_values=pixels).logits.float().numpy()
    one_by_one = run_session(sess, pixels, batch_size=1)
    batched = run_session(sess, pixels, batch_size=len(pixels))
    worst = float(max(np.abs(one_by_one - expected).max(), np.abs(batched - expected).max()))
    if not worst <= atol:  # NaN fails too
        raise ExportError(f"the ONNX model's logits differ from PyTorch's by up to {worst:.3g} (allowed: {atol:g}); "
                          "the export is not kept. Report it with your torch, onnx and onnxruntime versions.")
    return worst


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: torch.Tensor) -> None:
    """Static QDQ quantisation: activations uint8, weights int8 per output channel, ranges (MinMax) from
    the calibration pixel values, after ONNX Runtime's own pre-processing (shape inference, fusions)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i : i + 1].numpy() for i in range(len(calibration)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"pixel_values": batch}

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def labelled_images(eval_dir: str, labels: list[str]) -> tuple[list[Path], list[int]]:
    """A labelled folder's images and their model label ids; its class sub-folders must be the model's labels
    (checked before any export work)."""
    split = read_folder(eval_dir, "--eval-dir")
    index = {label.lower(): i for i, label in enumerate(labels)}
    unknown = [c for c in split.classes if c.lower() not in index]
    if unknown:
        raise DataError(f"--eval-dir {eval_dir!r}: class folder(s) {', '.join(map(repr, unknown))} are not among the "
                        f"model's labels ({', '.join(labels[:10])}{' ...' if len(labels) > 10 else ''}); name each "
                        "class sub-folder as the label it holds (config.json's id2label).")
    return split.files, [index[label.lower()] for label in split.labels]


def top1_change(fp32, int8, files: list[Path], label_ids: list[int], transform) -> dict:
    """Top-1 of the fp32 and (when given) int8 sessions on labelled images, and how many images' top-1 changed
    between them."""
    pixels, kept = load_pixels(files, transform)
    if not kept:
        raise DataError("--eval-dir: none of its images could be read.")
    truth = np.array([label_ids[i] for i in kept])
    fp32_top1 = run_session(fp32, pixels).argmax(1)
    found = {"images": len(kept), "fp32": float((fp32_top1 == truth).mean())}
    if int8 is not None:
        int8_top1 = run_session(int8, pixels).argmax(1)
        changed = int((fp32_top1 != int8_top1).sum())
        found.update(int8=float((int8_top1 == truth).mean()), changed=changed, changed_share=changed / len(kept))
    return found


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


def export_model(name_or_path: str, output: str | Path, int8: bool = False, calibration: str | None = None,
                 eval_dir: str | None = None, calibration_images: int = 128, atol: float = PARITY_ATOL,
                 revision: str = "main", token: str | None = None, allow_pickle_weights: bool = False,
                 log: Callable[[str], None] = print) -> ExportReport:
    """Export `name_or_path` (a model folder or Hub id, loaded as `Classifier.load` does) into `output`.

    Kept whole: it is the export's steps in order (load, export, check, quantise, check, write the report), each a
    call of its own; split up, the report's figures would travel through half a dozen return values."""
    require_runtime()
    image_dir = calibration or eval_dir
    if int8 and image_dir is None:
        raise ExportError("--int8 calibrates on images: pass --calibration DIR (a few hundred images like the ones "
                          "the model will see) or --eval-dir DIR (a labelled folder, also scored).")
    for flag, folder in (("--calibration", calibration), ("--eval-dir", eval_dir)):
        if folder is not None and not Path(folder).is_dir():
            raise DataError(f"{flag} {folder!r} is not a folder; pass a folder of images.")
    classifier = Classifier.load(name_or_path, device="cpu", revision=revision, token=token,
                                 allow_pickle_weights=allow_pickle_weights)
    processor = load_image_processor(ModelArguments(model_name_or_path=name_or_path, model_revision=revision,
                                                    token=token))
    model = classifier.model.float()
    transform = build_eval_transform(classifier.preprocess)  # normalised float32: the exported graph's input
    labelled = labelled_images(eval_dir, classifier.labels) if eval_dir else None
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / INT8_NAME).unlink(missing_ok=True)  # an earlier export's int8 would not be this model's

    start = time.perf_counter()
    fp32_path = out / ONNX_NAME
    export_onnx(model, fp32_path, classifier.preprocess.crop_size)
    seconds = time.perf_counter() - start
    log(f"exported {fp32_path} ({_megabytes(fp32_path)}, batch axis free) in {seconds:.1f} s")

    files = spread(list_images(image_dir), calibration_images) if image_dir else []
    pixels = load_pixels(files, transform)[0] if files else torch.empty(0)
    source = f"images of {image_dir}" if len(pixels) else "random pictures"
    probe = pixels[:PARITY_IMAGES] if len(pixels) else random_pictures(transform, PARITY_IMAGES)
    fp32 = session(fp32_path)
    try:
        worst = check_parity(model, fp32, probe, atol)
    except ExportError:
        fp32_path.unlink()
        raise
    log(f"parity with PyTorch on {len(probe)} {source}, one by one and as a batch: max |logit difference| "
        f"{worst:.2e} <= {atol:.0e}")
    model.config.save_pretrained(out)
    processor.save_pretrained(out)
    report = ExportReport(str(out), str(fp32_path), worst, len(probe), source, round(seconds, 2))

    if int8:
        if not len(pixels):
            raise ExportError(f"no readable images in {image_dir!r} to calibrate on; pass --calibration DIR.")
        int8_path = out / INT8_NAME
        start = time.perf_counter()
        quantize_int8(fp32_path, int8_path, pixels)
        quantized = session(int8_path)
        report.int8, report.int8_calibration_images = str(int8_path), len(pixels)
        report.int8_max_abs_diff = float(np.abs(run_session(quantized, probe) - run_session(fp32, probe)).max())
        log(f"int8: {int8_path} ({_megabytes(int8_path)}), static QDQ calibrated on {len(pixels)} images of "
            f"{image_dir} in {time.perf_counter() - start:.1f} s; max |logit difference| to fp32 on the parity "
            f"images {report.int8_max_abs_diff:.3g}")
        if not eval_dir:
            log("int8's effect on accuracy was not measured: pass --eval-dir DIR (a labelled folder) to measure it")
    if eval_dir:
        report.top1 = t = {"eval_dir": eval_dir,
                           **top1_change(fp32, quantized if int8 else None, *labelled, transform)}
        line = f"top-1 on {eval_dir} ({t['images']} images): fp32 {t['fp32']:.4f}"
        if int8:
            line += (f", int8 {t['int8']:.4f}; top-1 changed on {t['changed']} of {t['images']} images "
                     f"({100 * t['changed_share']:.1f}%)")
        log(line)
    (out / REPORT_NAME).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
