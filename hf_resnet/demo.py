"""`hf-resnet demo`: a trained model as a web page (Gradio 6), the report's "Output" as a person sees it.

The page shows the model card's name, classes and headline metrics; takes an image (upload, paste, webcam); and
answers with the top-5 labels and probabilities (`gr.Label`), "Computation time on <CPU or GPU>: 0.283 s" as the
report says it, and the top class's Grad-CAM overlay (a toggle; `reports.gradcam` and the report's colours).
Examples come from `--examples DIR`, else from the model folder's evaluation report (mistakes marked).

Inference is `inference.Classifier`, loaded and warmed up once: the processor-exact transform that
`pipeline()` and the evaluation use, so the page's answer is theirs. Every request goes through Gradio's queue
with one forward pass at a time (concurrency 1): two passes never fight over the same CPU threads, and requests
are answered in the order they arrived. Uploads are read by `data.images` (the pixel limit, CMYK, 16-bit and
transparency handled as in training), never by Gradio's own decoder: a file that is not a usable image becomes
a readable message on the page, and the server keeps serving.

Offline: no request leaves the machine. Gradio's analytics and version check are off (GRADIO_ANALYTICS_ENABLED,
which Gradio reads at each call, is set before the page is built), the theme uses the system's fonts (no
web-font download), and the page and its scripts are served by this process.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import time
from pathlib import Path

import gradio as gr
import numpy as np
import torch
from PIL import Image

from .constants import DEFAULT_MAX_PIXELS, REPORT_DIR, TOP_K
from .data.folders import list_images
from .data.images import ImageDecodeError, decode_tensor, stored_mode
from .errors import first_line
from .hub import is_hub_id, is_offline
from .inference import Classifier
from .reports.gradcam import grad_cam
from .reports.plots import gradcam_overlay

logger = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
MAX_FILE_SIZE = "20mb"  # uploads over this are refused by Gradio before they reach the model
EXAMPLES = 8  # images in the examples gallery
QUEUE_SIZE = 64  # requests waiting at most; more are told the queue is full instead of piling up in memory
SMALL_SIDE = 16  # an image with a side under this many pixels gets a warning: its answer says little
SHOWN_CLASSES = 12
THEME_FONTS = {"font": ["ui-sans-serif", "system-ui", "sans-serif"],
               "font_mono": ["ui-monospace", "Consolas", "monospace"]}  # the system's: nothing downloaded
HEADLINE = (("accuracy", "Top-1 accuracy"), ("top5_accuracy", "Top-5 accuracy"), ("f1_macro", "Macro F1"))
_CONVERTED = {"CMYK": "stored as CMYK: converted to RGB", "I;16": "16-bit: scaled to 8 bits (not clipped)",
              "I": "32-bit integer: scaled to 8 bits", "F": "floating point: its range scaled to 8 bits",
              "RGBA": "transparent: composited on white", "LA": "transparent: composited on white"}


def device_name(device: torch.device) -> str:
    """The machine a forward pass runs on, as the report names it: the GPU's name, else the CPU's model name
    (/proc/cpuinfo on Linux, `platform.processor()` elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


# What the page says about the model ------------------------------------------------------------------------------


def model_folder(model: str, revision: str = "main", token: str | None = None) -> Path | None:
    """The folder holding the model's card, results and report: a local folder, or a Hub model's small files
    (the cache only when offline); None when they cannot be had (the page then shows less, the model still works)."""
    if not is_hub_id(model):
        return Path(model).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, token=token, local_files_only=is_offline(),
                                      allow_patterns=["README.md", "*.json", f"{REPORT_DIR}/*/*.csv"]))
    except Exception as err:  # offline and not cached, gated, gone: the header is not worth failing for
        logger.info("No model card or results for %s: %s", model, first_line(err))
        return None


def _card(folder: Path | None):
    if folder is None or not (folder / "README.md").is_file():
        return None
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(folder / "README.md").data
    except Exception as err:  # a hand-written card with odd YAML: the page goes on without it
        logger.info("Cannot read %s: %s", folder / "README.md", first_line(err))
        return None


def headline_metrics(folder: Path | None) -> str:
    """'on digits (validation split): Top-1 accuracy 0.9167 · ...': the card's model-index when it has one, else
    the run's results JSON (eval_results.json, all_results.json); empty when neither is there."""
    card = _card(folder)
    results = (getattr(card, "eval_results", None) or [])[: len(HEADLINE)]
    if results:
        where = f"on {results[0].dataset_name}" + (f" ({results[0].dataset_split} split)"
                                                   if results[0].dataset_split else "")
        return f"{where}: " + " · ".join(f"{r.metric_name or r.metric_type} {r.metric_value:.4g}" for r in results)
    for name in ("eval_results.json", "all_results.json"):
        path = folder / name if folder is not None else None
        if path is not None and path.is_file():
            values = json.loads(path.read_text())
            for prefix, split in (("eval", "validation"), ("test", "test")):
                found = [f"{text} {values[f'{prefix}_{key}']:.4g}" for key, text in HEADLINE
                         if isinstance(values.get(f"{prefix}_{key}"), (int, float))]
                if found:
                    return f"on the {split} split: " + " · ".join(found)
    return ""


def header_markdown(model: str, labels: list[str], folder: Path | None) -> str:
    card = _card(folder)
    name = getattr(card, "model_name", None) or Path(model.rstrip("/")).name or model
    shown = ", ".join(labels[:SHOWN_CLASSES]) + (f", ... ({len(labels) - SHOWN_CLASSES} more)"
                                                 if len(labels) > SHOWN_CLASSES else "")
    lines = [f"# {name}", f"`{model}`: an image classifier, {len(labels)} classes: {shown}."]
    metrics = headline_metrics(folder)
    if metrics:
        lines.append(f"Measured {metrics}.")
    return "\n\n".join(lines)


# The examples gallery --------------------------------------------------------------------------------------------


def folder_examples(folder: str | Path, count: int = EXAMPLES) -> list[tuple[str, str]]:
    """(file, note) for up to `count` images of `folder`, spread over it (its class sub-folders show in the note)."""
    files = list_images(folder)
    step = max(1, len(files) // count)
    return [(str(f), f.relative_to(folder).as_posix()) for f in files[::step][:count]]


def report_examples(folder: Path | None, count: int = EXAMPLES) -> list[tuple[str, str]]:
    """(file, note) from the evaluation report's predictions CSV (report/<split>/predictions_<split>.csv): up
    to half mistakes (marked ✗), the rest correct, spread over the split; only files this machine has."""
    if folder is None:
        return []
    for table in sorted((folder / REPORT_DIR).glob("*/predictions_*.csv")):
        with table.open(newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if not r["skipped"] and r["file"] and Path(r["file"]).is_file()]
        wrong = [r for r in rows if r["true_label"] and r["true_label"] != r["predicted_label"]][: count // 2]
        others = [r for r in rows if r not in wrong]
        others = others[:: max(1, len(others) // (count - len(wrong)))][: count - len(wrong)]
        if wrong or others:
            return [(r["file"], _note(r, table.parent.name)) for r in wrong + others]
    return []


def _note(row: dict, split: str) -> str:
    guess = f"{row['predicted_label']} ({float(row['score']):.2f})"
    if not row["true_label"]:
        return f"{split}: predicted {guess}"
    if row["true_label"] == row["predicted_label"]:
        return f"✓ {split}: {guess}"
    return f"✗ {split}: true {row['true_label']}, predicted {guess}"


# The prediction --------------------------------------------------------------------------------------------------


class Predictor:
    """The page's one event: an uploaded file -> (top-k for gr.Label, Grad-CAM overlay or None, Markdown with the
    time and notes). A file that is not a usable image raises gr.Error with the reason (shown on the page)."""

    def __init__(self, classifier: Classifier, max_pixels: int | None = DEFAULT_MAX_PIXELS, k: int = TOP_K):
        self.classifier = classifier
        self.max_pixels = max_pixels
        self.k = min(k, len(classifier.labels))
        self.where = device_name(classifier.device)

    def __call__(self, image: dict | str | None, show_gradcam: bool = True):
        if not image:  # the image was cleared
            return None, None, ""
        path = image["path"] if isinstance(image, dict) else str(image)
        name = (image.get("orig_name") if isinstance(image, dict) else None) or Path(path).name
        try:
            data = Path(path).read_bytes()
            start = time.perf_counter()  # what `hf-resnet predict` times: decoding, preprocessing, forward pass
            decoded = decode_tensor({"bytes": data, "path": name}, self.max_pixels)
            pixels = self.classifier.transform(decoded)
            ids, probs = self.classifier.topk(pixels[None], self.k)
            seconds = time.perf_counter() - start
        except (ImageDecodeError, OSError, RuntimeError, ValueError) as err:
            reason = first_line(err).replace(str(path), name)
            raise gr.Error(f"{name} is not an image this model can read: {reason}", title="Cannot read the image",
                           print_exception=False) from None
        labels = [self.classifier.labels[i] for i in ids[0].tolist()]
        lines = [f"Computation time on {self.where}: {seconds:.3f} s"]
        for note in self.notes(data, decoded):
            gr.Warning(f"{name}: {note}")
            lines.append(f"Note: {note}.")
        overlay = None
        if show_gradcam:
            overlay, line = self.gradcam(pixels, ids[0, 0], labels[0])
            lines.append(line)
        return dict(zip(labels, probs[0].tolist())), overlay, "\n\n".join(lines)

    def notes(self, data: bytes, decoded: torch.Tensor) -> list[str]:
        """What was done to make the file the RGB picture the model saw, and whether it is too small to judge."""
        try:
            mode = stored_mode(data)
        except Exception:  # it decoded, so this cannot fail; a note is not worth an error
            mode = "RGB"
        notes = [text for key, text in _CONVERTED.items() if mode == key or (key == "I;16" and mode.startswith(key))]
        height, width = decoded.shape[-2:]
        if min(height, width) < SMALL_SIDE:
            crop = "x".join(map(str, self.classifier.preprocess.crop_size))
            notes.append(f"only {width}x{height} pixels, enlarged to {crop} for the model: its answer says little")
        return notes

    def gradcam(self, pixels: torch.Tensor, class_id: torch.Tensor, label: str) -> tuple[np.ndarray | None, str]:
        """The overlay of `label`'s Grad-CAM on the picture as the model saw it (at least 224 px a side)."""
        try:
            cam = grad_cam(self.classifier.model, self.classifier.normalizer(pixels[None]), class_id.view(1))
        except ValueError as err:  # a model without encoder stages
            return None, f"No Grad-CAM: {err}"
        picture = gradcam_overlay(self.classifier.to_display(pixels[None])[0], cam.maps[0].numpy())
        if min(picture.shape[:2]) < 224:
            scale = -(-224 // min(picture.shape[:2]))
            picture = np.asarray(Image.fromarray(picture).resize((picture.shape[1] * scale,
                                                                   picture.shape[0] * scale), Image.NEAREST))
        return picture, f"Grad-CAM of **{label}** on {cam.stage}: red is the evidence for it."


# The page --------------------------------------------------------------------------------------------------------


def build_app(model: str, examples: str | Path | None = None, device: str | None = None, revision: str = "main",
              token: str | None = None, allow_pickle_weights: bool = False,
              max_pixels: int | None = DEFAULT_MAX_PIXELS) -> gr.Blocks:
    """The page for `model` (a local folder or a Hub id, from the cache when offline), its model loaded and
    warmed up once; its queue lets one prediction run at a time. Launch it with `launch`."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check (Gradio reads it at each call)
    classifier = Classifier.load(model, device=torch.device(device) if device else None, revision=revision,
                                 token=token, allow_pickle_weights=allow_pickle_weights)
    classifier.warm_up()
    predictor = Predictor(classifier, max_pixels)
    folder = model_folder(model, revision, token)
    gallery = folder_examples(examples) if examples else report_examples(folder)
    with gr.Blocks(title=f"{Path(model.rstrip('/')).name} · hf-resnet demo", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:  # uploads and overlays: deleted after an hour
        gr.Markdown(header_markdown(model, classifier.labels, folder), elem_id="model-header")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", sources=["upload", "clipboard", "webcam"], label="Image",
                                 elem_id="image-input")
                show_gradcam = gr.Checkbox(value=True, label="Grad-CAM of the top class")
                note = gr.Textbox(label="Example", interactive=False, visible=bool(gallery), elem_id="example-note")
            with gr.Column():
                labels = gr.Label(num_top_classes=predictor.k, label=f"Top {predictor.k}", elem_id="top-labels")
                timing = gr.Markdown(elem_id="timing")
                overlay = gr.Image(label="Grad-CAM", interactive=False, elem_id="gradcam")
        if gallery:
            gr.Examples([[file, text] for file, text in gallery], inputs=[image, note],
                        label="Examples from the evaluation report" if not examples else "Examples")
        image.upload(None, None, note, js="() => ''")  # the user's own image: no example's note beside it
        # preprocess=False: the upload reaches Predictor as Gradio's file record (its path in Gradio's upload
        # folder, checked by Gradio) and is decoded by data.images, not by Gradio's own PIL.Image.open.
        gr.on([image.change, show_gradcam.change], predictor, inputs=[image, show_gradcam],
              outputs=[labels, overlay, timing], preprocess=False, concurrency_limit=1, concurrency_id="predict",
              api_name="predict")
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


SHARE_WARNING = ("--share true: Gradio opens a public https://*.gradio.live address through its tunnel servers. "
                 "Anyone who has the link can send images to this model and read its answers, its classes and its "
                 "metrics while this process runs; uploads travel through Gradio's servers. The model files and "
                 "this machine's other files are not served.")


def launch(app: gr.Blocks, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT, share: bool = False,
           max_file_size: str | int | None = MAX_FILE_SIZE, prevent_thread_lock: bool = False, quiet: bool = False):
    """Serve `app` on host:port (localhost unless told otherwise), uploads capped at `max_file_size`, with the
    system's fonts; returns what `gr.Blocks.launch` returns (its local URL second)."""
    if share:
        logger.warning(SHARE_WARNING)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("Serving on %s: every machine that can reach this one on port %s can use the page.", host,
                       port)
    return app.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size,
                      prevent_thread_lock=prevent_thread_lock, quiet=quiet, show_error=False, ssr_mode=False,
                      mcp_server=False, run_history=False, theme=gr.themes.Default(**THEME_FONTS))
