"""Class imbalance: counts from labels (never decoded images), inverse-frequency weights on a skewed folder, and
a balanced sampler that draws each class equally often, the same way on every process and on a resume."""

from collections import Counter

import numpy as np
import pytest
import torch
from conftest import COLOURS, make_image_folder
from transformers import ResNetConfig, ResNetForImageClassification

from hf_resnet.configs import DataArguments, FinetuneTrainingArguments
from hf_resnet.data.loading import load_image_data
from hf_resnet.errors import ConfigError
from hf_resnet.strategy_config import StrategyArguments
from hf_resnet.training.balance import BalancedSampler, inverse_frequency, label_counts, read_labels
from hf_resnet.training.strategies import plan_strategy

SKEW = {"blue": 2, "green": 4, "red": 12}  # 18 images, 3 classes


@pytest.fixture(scope="module")
def skewed_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("skewed")
    for i, (name, count) in enumerate(SKEW.items()):
        make_image_folder(root / "train", count, seed=i, classes={name: COLOURS[name]})
        make_image_folder(root / "validation", 1, seed=10 + i, classes={name: COLOURS[name]})
    return root


def expected_weights():
    total, k = sum(SKEW.values()), len(SKEW)
    return [total / (k * SKEW[name]) for name in sorted(SKEW)]  # blue 3.0, green 1.5, red 0.5


@pytest.mark.parametrize("streaming", [False, True])
def test_class_weights_auto_are_inverse_frequency_on_a_skewed_folder(tmp_path, skewed_folder, streaming):
    data = load_image_data(DataArguments(train_dir=str(skewed_folder / "train"),
                                         validation_dir=str(skewed_folder / "validation"), streaming=streaming))
    counts, where = label_counts(data, str(skewed_folder / "train") if streaming else None)
    assert counts.tolist() == [SKEW[name] for name in data.labels]
    assert expected_weights() == [3.0, 1.5, 0.5]
    assert inverse_frequency(counts) == pytest.approx(expected_weights())

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1] * 4,
                                                      layer_type="basic", num_labels=3))
    args = FinetuneTrainingArguments(output_dir=str(tmp_path), report_to="none")
    strategy = plan_strategy(model, StrategyArguments(class_weights=["auto"]), args, data, steps_per_epoch=3)
    assert strategy.class_weights == pytest.approx(expected_weights())  # what the loss is built with


def test_a_stream_of_unknown_counts_is_counted_on_a_sample(skewed_folder):
    data = load_image_data(DataArguments(train_dir=str(skewed_folder / "train"),
                                         validation_dir=str(skewed_folder / "validation"), streaming=True))
    counts, where = label_counts(data, train_dir=None, sample=100)  # more than the stream holds: all of it
    assert counts.tolist() == [2, 4, 12] and "first 18 examples" in where
    counts, _ = label_counts(data, train_dir=None, sample=5)
    assert counts.sum() == 5


def test_balanced_sampler_draws_classes_equally_and_the_same_per_epoch():
    labels = np.array([0] * 1200 + [1] * 500 + [2] * 100)
    counts = np.bincount(labels)
    sampler = BalancedSampler(labels, counts, seed=3)
    first = list(sampler)
    assert len(first) == len(labels) and first == list(sampler)  # a function of (seed, epoch) alone
    shares = Counter(labels[first].tolist())
    assert all(abs(shares[c] / len(first) - 1 / 3) < 0.05 for c in range(3)), shares  # 1/3 each, not 2/3, 5/18, 1/18
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(BalancedSampler(labels, counts, seed=3)) == first  # another process draws the same indices


def test_balanced_sampler_reads_labels_without_images_and_refuses_streams(tmp_path, skewed_folder):
    data = load_image_data(DataArguments(train_dir=str(skewed_folder / "train"),
                                         validation_dir=str(skewed_folder / "validation")))
    assert sorted(read_labels(data.train, data.label_column).tolist()) == [0] * 2 + [1] * 4 + [2] * 12
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1] * 4,
                                                      layer_type="basic", num_labels=3))
    args = FinetuneTrainingArguments(output_dir=str(tmp_path), report_to="none")
    strategy = plan_strategy(model, StrategyArguments(balanced_sampler=True), args, data)
    assert isinstance(strategy.sampler, BalancedSampler) and strategy.class_weights is None
    red = torch.from_numpy(read_labels(data.train, data.label_column) == 2)
    assert torch.allclose(strategy.sampler.weights[red], torch.tensor(1 / 12, dtype=torch.float64))
    streamed = load_image_data(DataArguments(train_dir=str(skewed_folder / "train"),
                                             validation_dir=str(skewed_folder / "validation"), streaming=True))
    with pytest.raises(ConfigError, match="`balanced_sampler` needs map-style data"):
        plan_strategy(model, StrategyArguments(balanced_sampler=True), args, streamed, steps_per_epoch=3)
