"""A model with its processor-exact eval transform: load it, preprocess files, predict the top-k with timing.

`Classifier` is what `hf-resnet predict`, the report's prediction grid and Grad-CAM, and `export` (which loads
the model through `Classifier.load` and checks the exported model against it) share: the model in eval mode, the
checkpoint's own preprocessing (`transforms.EvalTransform`, equal to the image processor's on real photos), and
`metrics.topk_stable` for the ranking, so a prediction here is the one the evaluation scored and the one
`pipeline("image-classification")` gives.

    classifier = Classifier.load("outputs/digits-smoke")
    for prediction in classifier.predict_files(["a.png", "b.png"], k=5):
        print(prediction.file, prediction.labels, prediction.scores, prediction.seconds)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from .configs import ModelArguments
from .constants import DEFAULT_MAX_PIXELS, label_names
from .data.images import ImageDecodeError, decode_tensor
from .data.transforms import (
    BatchNormalizer,
    PreprocessConfig,
    at_resolution,
    build_eval_transform,
    build_train_transform,
)
from .data.tta import TtaTransform, combine_views, view_weights
from .errors import ModelLoadError
from .training.alignment import Alignment
from .training.metrics import topk_stable
from .training.modeling import build_model, load_config, load_image_processor


@dataclass
class Prediction:
    """One image's top-k, or why it could not be read (`error`; then the lists are empty)."""

    file: str
    ids: list[int] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0  # decoding + preprocessing this image, plus its share of its batch's forward pass
    error: str | None = None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Classifier:
    """A classification model in eval mode with the eval transform of its image processor."""

    def __init__(self, model, preprocess: PreprocessConfig, device: torch.device | str | None = None,
                 tta: str = "none", tta_passes: int = 4):
        self.model = model.eval()
        self.preprocess = preprocess
        self.transform = build_eval_transform(preprocess, normalize=False)  # uint8, normalised on the device
        self.tta_weights = None
        if tta != "none":  # each file becomes (K, 3, H, W) views, averaged in `logits` (data/tta.py)
            # `augment`: the training augmentation's defaults (RandomResizedCrop 0.08-1, flip 0.5); a run's final
            # evaluation and `hf-resnet evaluate` use the recipe's (`inputs.build_tta_split`)
            augment = build_train_transform(preprocess, normalize=False) if tta == "augment" else None
            self.transform = TtaTransform(preprocess, tta, tta_passes, augment)
            self.tta_weights = view_weights(tta, tta_passes)
        self.normalizer = BatchNormalizer(preprocess)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        if next(model.parameters()).device != self.device:
            self.model.to(self.device)
        config = model.config
        self.labels = label_names(config)

    @classmethod
    def load(cls, name_or_path: str, device: torch.device | str | None = None, revision: str = "main",
             token: str | None = None, cache_dir: str | None = None, allow_pickle_weights: bool = False,
             tta: str = "none", tta_passes: int = 4, image_size: int | None = None,
             crop_pct: float | None = None) -> Classifier:
        """A local folder or a Hub id (from the cache when offline), with its image processor and its own head,
        loaded as training loads a checkpoint (safetensors only unless `allow_pickle_weights`; no remote code).
        `tta`: test-time augmentation (`data/tta.py`); `image_size` / `crop_pct`: another eval resolution."""
        args = ModelArguments(model_name_or_path=name_or_path, model_revision=revision, token=token,
                              cache_dir=cache_dir, allow_pickle_weights=allow_pickle_weights)
        config = load_config(args)  # a clear error when neither the folder nor the Hub (nor its cache) has it
        processor = load_image_processor(args)
        labels = label_names(config)
        model = build_model(args, labels, config, Alignment.whole(len(labels)))  # the head is kept
        try:
            preprocess = at_resolution(PreprocessConfig.from_processor(processor), image_size, crop_pct)
        except ValueError as err:
            raise ModelLoadError(f"{name_or_path!r}: {err}") from err
        return cls(model, preprocess, device if device is not None else default_device(), tta, tta_passes)

    # Tensors -----------------------------------------------------------------------------------------------------

    def logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """uint8 images (as `transform` gives) or normalised float inputs (B, 3, H, W) -> float32 logits; TTA views
        (B, K, 3, H, W) -> the log of their averaged probabilities (`tta.combine_views`), which rank as logits."""
        dtype = next(self.model.parameters()).dtype  # bf16_full_eval leaves the model in bfloat16
        with torch.inference_mode():
            inputs = self.normalizer(pixel_values.to(self.device)).to(dtype)
            if inputs.dim() == 5:
                batch, views = inputs.shape[:2]
                logits = self.model(pixel_values=inputs.flatten(0, 1)).logits.float()
                return combine_views(logits.view(batch, views, -1), self.tta_weights).cpu()
            return self.model(pixel_values=inputs).logits.float().cpu()

    def topk(self, pixel_values: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, k) class ids and probabilities, best first (ties to the lower id, as in the evaluation)."""
        return topk_stable(self.logits(pixel_values), k)

    def pixels_of(self, example: dict) -> torch.Tensor:
        """A dataset example's image as the model sees it (uint8), decoding it here if the workers left it to the
        GPU (`gpu_decode`: the example holds the JPEG's bytes)."""
        if "jpeg" in example:
            return self.transform(decode_tensor({"bytes": example["jpeg"], "path": None}, None))
        return example["pixel_values"]

    def warm_up(self) -> None:
        """One forward pass on a blank input: the first call pays for kernel selection and allocations (a few
        hundred ms on a CPU), which would otherwise land on the first image's time."""
        self.logits(torch.zeros(1, 3, *self.preprocess.crop_size, dtype=torch.uint8))

    def to_display(self, pixel_values: torch.Tensor) -> np.ndarray:
        """uint8 images or normalised model inputs (B, 3, H, W) -> the pictures the model saw, uint8 (B, H, W, 3)."""
        if pixel_values.dtype == torch.uint8:
            return pixel_values.detach().cpu().permute(0, 2, 3, 1).numpy()
        mean = torch.tensor(self.preprocess.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess.std).view(1, 3, 1, 1)
        pixels = (pixel_values.detach().float().cpu() * std + mean) / self.preprocess.rescale_factor
        return pixels.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    # Files -------------------------------------------------------------------------------------------------------

    def predict_files(self, files: Iterable[str], k: int = 5, batch_size: int = 16,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS,
                      on_batch: Callable[[int], None] | None = None) -> Iterator[Prediction]:
        """Predict image files in batches, in the order given; a file that cannot be read yields a Prediction
        with its `error` and does not stop the others. `on_batch(n)` is told after each n files (progress)."""
        k = min(k, len(self.labels))
        pending: list[tuple[str, torch.Tensor | None, float, str | None]] = []

        def flush() -> Iterator[Prediction]:
            readable = [item for item in pending if item[1] is not None]
            model_seconds = 0.0
            if readable:
                start = time.perf_counter()
                ids, probs = self.topk(torch.stack([item[1] for item in readable]), k)
                model_seconds = (time.perf_counter() - start) / len(readable)
            rows = iter(zip(ids.tolist(), probs.tolist())) if readable else iter(())
            for file, pixels, seconds, error in pending:
                if pixels is None:
                    yield Prediction(file=file, seconds=seconds, error=error)
                    continue
                row_ids, row_probs = next(rows)
                yield Prediction(file=file, ids=row_ids, labels=[self.labels[i] for i in row_ids], scores=row_probs,
                                 seconds=seconds + model_seconds)
            if on_batch is not None:
                on_batch(len(pending))
            pending.clear()

        for file in files:
            start = time.perf_counter()
            try:
                pixels, error = self.transform(decode_tensor(str(file), max_pixels)), None
            except ImageDecodeError as err:  # missing, unreadable, truncated, not an image, too large
                pixels, error = None, str(err)
            pending.append((str(file), pixels, time.perf_counter() - start, error))
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()
