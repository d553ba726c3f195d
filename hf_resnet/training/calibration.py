"""Temperature scaling (Guo et al. 2017): one scalar T fitted on the validation split after training, by the
lowest negative log-likelihood of softmax(logits / T), then folded into the classifier's last layer (weight and
bias divided by T) so the saved model gives calibrated probabilities to `pipeline()`, `hf-resnet predict`, the
demo and ONNX with nothing changed at run time. The top-1 (any ranking) is unchanged: T > 0 rescales the logits.

Memory: no logits are kept. Each pass over the split adds, for every candidate T of a grid, the sum over its
examples of logsumexp(z / T) - z_y / T on the device (grid x batch x classes floats at a time, chunked), so
ImageNet's 50,000 x 1,000 logits are never held. Two passes: 33 values of log T from 0.05 to 20 (steps of
about 20%), then 33 around the best (about 1.2%), the minimum refined by the parabola through its neighbours.
Each pass also fills the 15-bin ECE counters of T = 1 (`ece_before`). Under several processes, each sums its own
batches and the sums are added (`accelerator.reduce`), so every process folds the same T; accelerate may repeat
a few examples to even the last batches, which weigh in the fit like the others.

With `ema_decay`, the average is what is evaluated and saved (`ema.EmaTrainerMixin`): the fit runs on it and T is
folded into it (and into the raw weights, so both stay one model).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..constants import IGNORE_INDEX
from .metrics import calibration_bins, expected_calibration_error
from .modeling import head_linear

logger = logging.getLogger(__name__)

GRID = 33
LOW, HIGH = 0.05, 20.0
CHUNK_FLOATS = 2**24  # candidates x examples x classes per logsumexp call (64 MB of float32)


@dataclass
class Calibration:
    temperature: float
    ece_before: float  # on the split fitted on, at T = 1
    nll_before: float
    nll_after: float
    examples: int
    fitted_on: str = "validation"
    ece_after: float | None = None  # the final evaluation's, of the folded model

    def as_dict(self) -> dict:
        return {key: round(value, 6) if isinstance(value, float) else value for key, value in vars(self).items()}


def _batch_nll(logits: torch.Tensor, labels: torch.Tensor, temperatures: torch.Tensor) -> torch.Tensor:
    """(candidates,) sum over the batch of -log softmax(logits / T)[label], chunked over examples."""
    total = torch.zeros(len(temperatures), dtype=torch.float64, device=logits.device)
    step = max(1, CHUNK_FLOATS // (len(temperatures) * logits.shape[-1]))
    for start in range(0, len(labels), step):
        z, y = logits[start : start + step], labels[start : start + step]
        scaled = z[None] / temperatures[:, None, None]  # (candidates, chunk, classes)
        true = scaled.gather(-1, y.view(1, -1, 1).expand(len(temperatures), -1, 1))[..., 0]
        total += (torch.logsumexp(scaled, dim=-1) - true).sum(dim=1).double()
    return total


def nll_pass(trainer, dataset, temperatures: list[float]) -> tuple[np.ndarray, int, np.ndarray]:
    """One pass over `dataset` with the trainer's model in eval mode: summed NLL per candidate T, the number of
    examples scored, and the ECE counters at T = 1."""
    model = trainer.model
    device = trainer.args.device
    candidates = torch.tensor(temperatures, dtype=torch.float32, device=device)
    nll = torch.zeros(len(temperatures), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    bins = np.zeros((15, 3))
    was_training = model.training
    model.eval()
    try:
        for batch in trainer.get_eval_dataloader(dataset):
            inputs = trainer._prepare_inputs(batch)
            labels = inputs.pop("labels")
            with torch.no_grad(), trainer.compute_loss_context_manager():
                logits = model(**inputs).logits.float()
            keep = labels != IGNORE_INDEX
            logits, labels = logits[keep], labels[keep].to(logits.device)
            nll += _batch_nll(logits, labels, candidates)
            count += len(labels)
            confidence, top1 = torch.softmax(logits, dim=-1).max(dim=-1)
            bins += calibration_bins(confidence.cpu().numpy(), (top1 == labels).cpu().numpy())
    finally:
        model.train(was_training)
    if trainer.args.world_size > 1:
        nll, count = trainer.accelerator.reduce(nll, "sum"), trainer.accelerator.reduce(count, "sum")
        bins = trainer.accelerator.reduce(torch.as_tensor(bins, device=device), "sum").cpu().numpy()
    return nll.cpu().numpy(), int(count.item()), bins


def _refined(log_t: np.ndarray, nll: np.ndarray) -> float:
    """The grid's minimum, moved to the vertex of the parabola through it and its two neighbours."""
    best = int(np.argmin(nll))
    if 0 < best < len(nll) - 1:
        (x0, x1, x2), (y0, y1, y2) = log_t[best - 1 : best + 2], nll[best - 1 : best + 2]
        denominator = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denominator
        b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denominator
        if a > 0:
            return float(np.clip(-b / (2 * a), x0, x2))
    return float(log_t[best])


def fit_temperature(trainer, dataset) -> Calibration:
    """T of lowest NLL on `dataset`, in two passes (the module docstring); the model is not changed."""
    with trainer.evaluated_weights():
        coarse = np.linspace(math.log(LOW), math.log(HIGH), GRID)
        nll, count, bins = nll_pass(trainer, dataset, np.exp(coarse).tolist())
        if count == 0:
            raise ValueError("no labeled example to fit the temperature on")
        step = coarse[1] - coarse[0]
        centre = coarse[int(np.argmin(nll))]
        fine = np.linspace(max(centre - step, coarse[0]), min(centre + step, coarse[-1]), GRID)
        fine_nll, _, _ = nll_pass(trainer, dataset, [*np.exp(fine).tolist(), 1.0])
    log_t = _refined(fine, fine_nll[:-1])
    return Calibration(temperature=float(math.exp(log_t)), ece_before=expected_calibration_error(bins),
                       nll_before=float(fine_nll[-1] / count), nll_after=float(fine_nll[:-1].min() / count),
                       examples=count)


@torch.no_grad()
def fold_temperature(trainer, temperature: float) -> str:
    """Divide the classifier's last linear layer (weight and bias) by T, in the model and in its EMA; returns the
    layer's name."""
    name, linear = head_linear(trainer.model)
    linear.weight.div_(temperature)
    if linear.bias is not None:
        linear.bias.div_(temperature)
    if trainer.ema is not None:
        for key in (f"{name}.weight", f"{name}.bias"):
            if key in trainer.ema.shadow:
                trainer.ema.shadow[key].div_(temperature)
    return name


def calibrate(trainer, dataset) -> Calibration:
    """Fit T on `dataset` (the validation split) and fold it into the model; logged."""
    calibration = fit_temperature(trainer, dataset)
    layer = fold_temperature(trainer, calibration.temperature)
    if not LOW * 1.05 < calibration.temperature < HIGH / 1.05:
        logger.warning("Temperature scaling: T = %.4g is at the end of its range (%g-%g): the validation split is "
                       "%s, so T says little about new images.", calibration.temperature, LOW, HIGH,
                       "all but perfectly predicted" if calibration.temperature < 1 else "mostly wrong")
    logger.info("Temperature scaling: T = %.4f on %d validation images (NLL %.4f -> %.4f, ECE before %.4f), "
                "folded into %s", calibration.temperature, calibration.examples, calibration.nll_before,
                calibration.nll_after, calibration.ece_before, layer)
    return calibration
