"""The training loss on hand-made inputs: soft targets, label smoothing, mixup, CutMix and class weights give the
numbers they should, and images that could not be decoded (label -100) count for nothing."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_resnet.training.losses import TrainingLoss, cutmix, draw_box, mixup, one_hot, soft_cross_entropy

LN = math.log


def test_soft_targets_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]; target 0.7 / 0.3 -> -(0.7 ln 1/4 + 0.3 ln 3/4)
    logits = torch.tensor([[0.0, LN(3)]])
    loss = soft_cross_entropy(logits, torch.tensor([[0.7, 0.3]]))
    assert loss.item() == pytest.approx(-(0.7 * LN(0.25) + 0.3 * LN(0.75)))


def test_label_smoothing_by_hand_and_equal_to_torch_and_skipped_rows_ignored():
    logits = torch.tensor([[0.0, LN(3)], [2.0, -1.0], [5.0, 5.0]])
    labels = torch.tensor([0, 1, -100])  # the third image could not be decoded
    loss = soft_cross_entropy(logits, one_hot(labels, 2), smoothing=0.1)
    # eps = 0.1 over 2 classes: the true class gets 0.95, the other 0.05
    p2 = F.softmax(logits[1], -1)
    by_hand = (-(0.95 * LN(0.25) + 0.05 * LN(0.75)) - (0.05 * p2[0].log() + 0.95 * p2[1].log()).item()) / 2
    assert loss.item() == pytest.approx(by_hand)
    torch_loss = F.cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.1)
    assert loss.item() == pytest.approx(torch_loss.item())


def test_class_weights_equal_torch_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 2, 2, 1, -100, 2])
    weights = torch.tensor([3.0, 1.5, 0.5])
    ours = soft_cross_entropy(logits, one_hot(labels, 3), class_weights=weights)
    theirs = F.cross_entropy(logits, labels, weight=weights, ignore_index=-100)
    assert ours.item() == pytest.approx(theirs.item())


def test_every_image_skipped_is_nan_for_the_guard_to_drop():
    loss = soft_cross_entropy(torch.randn(2, 3), one_hot(torch.tensor([-100, -100]), 3))
    assert torch.isnan(loss)  # 0/0: compute_loss sees an all-skipped batch and adds nothing


def test_mixup_by_hand():
    pixels = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 5.0)])
    targets = one_hot(torch.tensor([0, 1]), 2)
    mixed, soft = mixup(pixels, targets, lam=0.75)
    assert torch.equal(mixed[0], torch.full((1, 2, 2), 0.75 * 1 + 0.25 * 5))  # row 0 with its partner, row 1
    assert torch.equal(mixed[1], torch.full((1, 2, 2), 0.75 * 5 + 0.25 * 1))
    assert torch.equal(soft, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    # the loss of a mixed target is the mix of the two losses
    logits = torch.tensor([[0.0, LN(3)], [0.0, LN(3)]])
    loss = soft_cross_entropy(logits, soft)
    first, second = -(0.75 * LN(0.25) + 0.25 * LN(0.75)), -(0.25 * LN(0.25) + 0.75 * LN(0.75))
    assert loss.item() == pytest.approx((first + second) / 2)


def test_cutmix_by_hand():
    pixels = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    mixed, soft = cutmix(pixels, one_hot(torch.tensor([0, 1]), 2), box=(1, 0, 2, 2))  # 4 of 16 pixels
    expected = torch.zeros(1, 4, 4)
    expected[:, 1:3, 0:2] = 1.0
    assert torch.equal(mixed[0], expected)
    assert torch.equal(mixed[1], 1.0 - expected)
    assert torch.equal(soft, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))  # labels by area
    torch.manual_seed(0)
    for lam in (0.1, 0.5, 0.9):
        top, left, height, width = draw_box(32, 32, lam)
        assert 0 <= top and top + height <= 32 and 0 <= left and left + width <= 32
        assert height * width <= (1 - lam) * 32 * 32 + 1e-9  # clipped at the border, never larger


def test_mixing_leaves_skipped_images_out():
    """A blank image (label -100) is neither mixed into a real one nor given a target."""
    loss = TrainingLoss(3, mixup_alpha=1.0)
    pixels = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 0.0, 3.0)])  # row 1: a blank stand-in
    labels = torch.tensor([0, -100, 2])
    torch.manual_seed(0)
    mixed, targets = loss.mix(pixels, labels)
    assert torch.equal(mixed[1], pixels[1]) and torch.equal(targets[1], torch.zeros(3))
    lam = targets[0, 0].item()
    assert torch.allclose(mixed[0], lam * pixels[0] + (1 - lam) * pixels[2])  # paired with the other real image
    assert torch.allclose(targets[:, 1], torch.zeros(3))  # class 1 nowhere: the blank row contributed nothing
    assert torch.allclose(targets.sum(-1), torch.tensor([1.0, 0.0, 1.0]))


def test_the_loss_is_off_when_nothing_asks_for_it():
    assert not TrainingLoss(3).active
    assert TrainingLoss(3, label_smoothing=0.1).active and TrainingLoss(3, class_weights=[1, 2, 3]).active
    assert TrainingLoss(3, cutmix_alpha=1.0).active


def reference_mix(loss: TrainingLoss, pixels, labels):
    """The pairing as first written (the valid rows gathered, rolled by one, put back), which read how many rows
    were valid on the host: a sync per step on a GPU."""
    targets = one_hot(labels, loss.num_classes)
    rows = (labels != -100).nonzero().squeeze(-1)
    use = [name for name, alpha in (("mixup", loss.mixup_alpha), ("cutmix", loss.cutmix_alpha)) if alpha > 0]
    kind = use[int(torch.randint(len(use), ()))] if len(use) > 1 else use[0]
    if kind == "mixup":
        mixed, mixed_targets = mixup(pixels[rows], targets[rows], loss._draw_lam(loss.mixup_alpha))
    else:
        box = draw_box(pixels.shape[-2], pixels.shape[-1], loss._draw_lam(loss.cutmix_alpha))
        mixed, mixed_targets = cutmix(pixels[rows], targets[rows], box)
    pixels, targets = pixels.clone(), targets.clone()
    pixels[rows], targets[rows] = mixed, mixed_targets
    return pixels, targets


@pytest.mark.parametrize("labels", [[0, 1, 2, 0, 1, 2], [0, -100, 2, -100, 1, 2], [-100, 1, 2, 0, 1, -100],
                                    [-100, -100, 2, -100, 1, -100]])
@pytest.mark.parametrize("alphas", [(1.0, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_pairing_on_the_device_equals_the_gathered_pairing_bit_for_bit(labels, alphas):
    loss = TrainingLoss(3, mixup_alpha=alphas[0], cutmix_alpha=alphas[1])
    pixels, labels = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(labels)
    for seed in range(5):
        torch.manual_seed(seed)
        ours = loss.mix(pixels, labels)
        torch.manual_seed(seed)
        theirs = reference_mix(loss, pixels, labels)
        assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


@pytest.mark.parametrize("labels", [[-100, -100, -100], [-100, 2, -100]])
def test_fewer_than_two_real_images_are_left_unmixed(labels):
    loss = TrainingLoss(3, mixup_alpha=1.0, cutmix_alpha=1.0)
    pixels, labels = torch.randn(3, 3, 4, 4), torch.tensor(labels)
    mixed, targets = loss.mix(pixels, labels)
    assert torch.equal(mixed, pixels) and torch.equal(targets, one_hot(labels, 3))


def test_a_label_outside_the_classes_is_an_error_not_a_class():
    """-100 marks a skipped image; any other label outside 0..K-1 is a bug upstream, never trained as class 0."""
    with pytest.raises(RuntimeError):
        one_hot(torch.tensor([0, -1]), 3)
    with pytest.raises(RuntimeError):
        one_hot(torch.tensor([0, 3]), 3)
