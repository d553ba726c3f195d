"""compute_metrics against scikit-learn on the same predictions; the logit reduction keeps memory small."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, top_k_accuracy_score
from transformers import EvalPrediction

from hf_resnet.training.metrics import ComputeMetrics, classification_metrics, reduce_logits, topk_stable


def score(logits: np.ndarray, labels: np.ndarray) -> dict:
    ids, probs, truth = reduce_logits(torch.from_numpy(logits), torch.from_numpy(labels))
    predictions = (ids.numpy(), probs.numpy(), truth.numpy())
    return ComputeMetrics(logits.shape[1])(EvalPrediction(predictions=predictions, label_ids=labels))


def test_matches_sklearn_on_random_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 12)).astype(np.float32)
    labels = rng.integers(0, 12, size=500)
    logits[np.arange(250), labels[:250]] += 2.0  # half the examples lean to the right class
    got = score(logits, labels)
    predictions = logits.argmax(axis=1)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert got["top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, logits, k=5, labels=range(12)))
    precision = precision_score(labels, predictions, average="macro", zero_division=0)
    assert got["precision_macro"] == pytest.approx(precision)
    assert got["recall_macro"] == pytest.approx(recall_score(labels, predictions, average="macro", zero_division=0))
    assert got["f1_macro"] == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0))
    assert got["samples"] == 500


def test_class_never_predicted_counts_with_zero_precision():
    labels = np.array([0, 0, 1, 1, 2, 2])
    logits = np.full((6, 3), -1.0, dtype=np.float32)
    logits[np.arange(6), [0, 0, 1, 1, 0, 1]] = 1.0  # class 2 is never predicted
    got = score(logits, labels)
    predictions = np.array([0, 0, 1, 1, 0, 1])
    precision = precision_score(labels, predictions, average="macro", zero_division=0)
    assert got["precision_macro"] == pytest.approx(precision)
    assert got["recall_macro"] == pytest.approx(2 / 3)
    assert got["f1_macro"] == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0))
    assert "top5_accuracy" not in got  # 3 classes: top-5 is always 1 and is left out


def test_ties_go_to_the_lower_class_id_like_argmax():
    logits = np.zeros((3, 8), dtype=np.float32)
    logits[0, [1, 6]] = 5.0  # tie for first: argmax says 1
    logits[1, [0, 1, 2, 3, 4, 5, 6, 7]] = 1.0  # all equal: top-5 is 0..4
    logits[2, :] = [9, 8, 7, 6, 5, 5, 5, 0]  # tie at the 5th place: 4 ranks before 5 and 6
    ids, _ = topk_stable(torch.from_numpy(logits), 5)
    assert ids[0, 0] == 1 == logits[0].argmax()
    assert ids[1].tolist() == [0, 1, 2, 3, 4]
    assert ids[2].tolist() == [0, 1, 2, 3, 4]
    labels = np.array([6, 5, 5])
    got = score(logits, labels)
    assert got["accuracy"] == 0.0
    assert got["top5_accuracy"] == pytest.approx(1 / 3)  # only row 0 (6 is 2nd); rows 1 and 2 lose the tie for 5th
    # sklearn breaks ties the other way (higher id first); reversing the class order turns its rule into ours
    reversed_score = top_k_accuracy_score(7 - labels, logits[:, ::-1], k=5, labels=range(8))
    assert got["top5_accuracy"] == pytest.approx(reversed_score)


def test_reduction_keeps_k_per_example_not_all_logits():
    logits = torch.randn(64, 1000)
    labels = torch.randint(0, 1000, (64,))
    ids, probs, truth = reduce_logits(logits, labels)
    assert ids.shape == probs.shape == (64, 5) and truth.shape == (64,)
    assert torch.allclose(truth, torch.softmax(logits, dim=1)[torch.arange(64), labels])
    assert torch.equal(ids[:, 0], logits.argmax(dim=1))
    assert torch.allclose(probs, torch.softmax(logits, dim=1).gather(1, ids))
    assert (probs[:, :-1] >= probs[:, 1:]).all()
    assert reduce_logits(torch.randn(4, 3))[0].shape == (4, 3)  # fewer classes than k


def test_accepts_plain_top1_predictions():
    got = classification_metrics(np.array([0, 1, 1]), np.array([0, 1, 0]), num_classes=2)
    assert got["accuracy"] == pytest.approx(2 / 3)


def test_skipped_examples_are_not_scored():
    ids = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    labels = np.array([0, 1, -100, -100])  # the last two images could not be decoded
    got = classification_metrics(ids, labels, num_classes=2)
    assert got["samples"] == 2 and got["accuracy"] == 1.0


def test_confusion_counts_agree_with_the_reported_metrics():
    """The report's table and the headline numbers are one computation: totals = support, diagonal / total =
    accuracy, per-class F1 averaged over the classes present = macro F1 (and scikit-learn agrees)."""
    from sklearn.metrics import confusion_matrix, f1_score

    from hf_resnet.training.metrics import confusion_counts, per_class_metrics

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 9, size=400)  # class 9 of 10 never appears as a label ...
    predictions = np.where(rng.random(400) < 0.6, labels, rng.integers(0, 10, size=400))  # ... but is predicted
    labels[:7] = -100  # undecodable images: not scored
    counts = confusion_counts(labels, predictions, 10)
    got = classification_metrics(predictions, labels, num_classes=10)
    scored = labels != -100
    assert counts.shape == (10, 10) and counts.dtype == np.int64
    assert counts.sum() == got["samples"] == scored.sum()
    assert np.array_equal(counts, confusion_matrix(labels[scored], predictions[scored], labels=range(10)))
    assert np.array_equal(counts.sum(axis=1), np.bincount(labels[scored], minlength=10))  # rows: support
    assert np.trace(counts) / counts.sum() == pytest.approx(got["accuracy"])
    table = per_class_metrics(counts)
    assert table["present"].sum() == 10 and table["support"][9] == 0 and table["recall"][9] == 0
    assert table["f1"][table["present"]].mean() == pytest.approx(got["f1_macro"])
    assert got["f1_macro"] == pytest.approx(f1_score(labels[scored], predictions[scored], average="macro",
                                                     zero_division=0))
    assert table["f1"] == pytest.approx(f1_score(labels[scored], predictions[scored], average=None,
                                                 labels=range(10), zero_division=0))


def test_confusion_counts_never_hold_examples_by_classes():
    import tracemalloc

    from hf_resnet.training.metrics import confusion_counts

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 1000, size=50_000)
    topk = rng.integers(0, 1000, size=(50_000, 5))
    tracemalloc.start()
    counts = confusion_counts(labels, topk[:, 0], 1000)
    classification_metrics(topk, labels, num_classes=1000)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert counts.sum() == 50_000
    assert peak < 40 * 2**20, peak  # 1000 x 1000 counts are 8 MB; 50,000 x 1000 float32 logits would be 200 MB
