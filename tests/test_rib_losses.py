"""GNDRP (Eq. 3) and the fine-tuning losses, against numbers computed by hand."""
import math

import pytest
import torch

from net.rib_loss import (bce_activation_loss, finetune_loss, gap_pool, gndrp_keep_mask, gndrp_pool,
                          rib_loss)

# One image, three classes, 3x3 maps.
#   class 0 (in the label): 1..8 and a peak of 10. Normalised by the max: 0.1 .. 0.8 and 1.0.
#   class 1 (in the label): every value <= 0, so the max-normalisation is undefined (paper: guarded, plain GAP;
#   official: divided by the max of 0, see the test below).
#   class 2 (not in the label): plain GAP whatever tau.
MAPS = torch.tensor([[[[1., 2., 3.], [4., 5., 6.], [7., 8., 10.]],
                      [[-1., -2., -3.], [-4., 0., -6.], [-7., -8., -9.]],
                      [[9., 0., 0.], [0., 0., 0.], [0., 0., 0.]]]])
LABELS = torch.tensor([[1., 1., 0.]])


def test_gndrp_paper_norm_by_hand():
    # tau 0.4: U_tau = {u | CAM(u) <= 0.4} = the values 1, 2, 3, 4 (4/10 = 0.4 is kept, Eq. 3 uses <=)
    out = gndrp_pool(MAPS, LABELS, tau=0.4, norm="paper")
    assert out[0, 0].item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert out[0, 1].item() == pytest.approx(-40 / 9)  # max <= 0: every location kept = GAP
    assert out[0, 2].item() == pytest.approx(1.0)  # not a label: GAP (9 / 9)


def test_gndrp_official_norm_by_hand():
    # official gndp2d: keeps CAM < tau (4 is dropped) and divides the kept sum by all 9 locations
    out = gndrp_pool(MAPS, LABELS, tau=0.4, norm="official")
    assert out[0, 0].item() == pytest.approx((1 + 2 + 3) / 9)
    assert out[0, 1].item() == pytest.approx(-40 / 9)
    assert out[0, 2].item() == pytest.approx(1.0)


def test_gndrp_official_norm_true_class_with_non_positive_max_leaves_the_loss():
    # official gndp2d divides by the max even when it is negative: x / max >= 1 > tau everywhere, so every
    # location is dropped, the logit is 0 and no gradient flows; the paper norm keeps the documented GAP guard.
    negative = torch.tensor([[[[-1., -2.], [-3., -6.]]]], requires_grad=True)
    label = torch.tensor([[1.]])
    out = gndrp_pool(negative, label, 0.4, "official")
    assert out.item() == 0.0
    out.sum().backward()
    assert negative.grad.abs().sum().item() == 0
    assert gndrp_pool(negative, label, 0.4, "paper").item() == pytest.approx(-12 / 4)
    # a max of exactly 0: 0/0 is nan (dropped) and negative/0 is -inf (< tau, kept), as the official division
    zero_max = torch.tensor([[[[0., -2.], [-4., 0.]]]])
    assert gndrp_pool(zero_max, label, 0.4, "official").item() == pytest.approx(-6 / 4)
    assert gndrp_keep_mask(zero_max, label, 0.4, "official")[0, 0].tolist() == [[0, 1], [1, 0]]


def test_gndrp_keep_mask_and_gradient_only_through_kept_locations():
    keep = gndrp_keep_mask(MAPS, LABELS, 0.4, "paper")
    assert keep[0, 0].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert keep[0, 1].sum().item() == 9 and keep[0, 2].sum().item() == 9
    maps = MAPS.clone().requires_grad_(True)
    gndrp_pool(maps, LABELS, 0.4, "paper")[0, 0].backward()
    assert maps.grad[0, 0].tolist() == [[0.25, 0.25, 0.25], [0.25, 0, 0], [0, 0, 0]]
    assert maps.grad[0, 1:].abs().sum().item() == 0


def test_gndrp_per_row_labels_and_gap():
    # the same maps pooled for a row without class 0 in its label: GAP for class 0
    two = MAPS.repeat(2, 1, 1, 1)
    out = gndrp_pool(two, torch.tensor([[1., 0., 0.], [0., 0., 0.]]), 0.4, "paper")
    assert out[0, 0].item() == pytest.approx(2.5)
    assert out[1, 0].item() == pytest.approx(46 / 9)
    assert torch.equal(out[1], gap_pool(two)[1])
    with pytest.raises(ValueError, match="gndrp_norm"):
        gndrp_pool(MAPS, LABELS, 0.4, "bogus")


def test_rib_loss_paper_clamps_at_margin_official_does_not():
    logits = torch.tensor([[700., 100., -5.], [3., 2000., 1.]])
    labels = torch.tensor([[1., 1., 0.], [0., 1., 1.]])
    # paper: -sum_c t_c min(m, y_c), summed over rows: -(600 + 100) - (600 + 1)
    assert rib_loss(logits, labels, 600, "paper").item() == pytest.approx(-1301)
    # official: no clamp (the margin is an early stop in the caller)
    assert rib_loss(logits, labels, 600, "official").item() == pytest.approx(-2801)
    assert finetune_loss(logits, labels, "rib", 600, "paper").item() == pytest.approx(-1301)
    # the clamp stops the gradient of the logits above m
    x = logits.clone().requires_grad_(True)
    rib_loss(x, labels, 600, "paper").backward()
    assert x.grad.tolist() == [[0., -1., 0.], [0., 0., -1.]]
    with pytest.raises(ValueError, match="rib_margin_mode"):
        rib_loss(logits, labels, 600, "bogus")


@pytest.mark.parametrize("name, positive, negative", [
    # label 1 at logit 1: -log p;  label 0 at logit 1: -log(1 - p)
    ("bce_sigmoid", math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))),   # p = sigmoid(1)
    ("bce_tanh", -math.log((math.tanh(1) + 1) / 2), -math.log(1 - (math.tanh(1) + 1) / 2)),
    ("bce_softsign", -math.log(0.75), -math.log(0.25)),  # softsign(1) = 0.5 -> p = 0.75
])
def test_bce_variants_at_a_known_point(name, positive, negative):
    logits = torch.tensor([[1., 1.]])
    labels = torch.tensor([[1., 0.]])
    loss = finetune_loss(logits, labels, name, margin=600)
    assert loss.item() == pytest.approx(positive + negative, rel=1e-5)
    assert bce_activation_loss(logits, labels, name[4:]).item() == pytest.approx(positive + negative, rel=1e-5)


def test_bce_numbers_by_hand():
    # sigmoid(1) = 0.731059: -log 0.731059 = 0.313262, -log 0.268941 = 1.313262; tanh: (tanh 1 + 1)/2 = 0.880797
    assert finetune_loss(torch.tensor([[1.]]), torch.tensor([[1.]]), "bce_sigmoid", 600).item() == \
        pytest.approx(0.313262, abs=1e-6)
    assert finetune_loss(torch.tensor([[1.]]), torch.tensor([[0.]]), "bce_tanh", 600).item() == \
        pytest.approx(2.126928, abs=1e-6)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="rib_loss"):
        finetune_loss(torch.zeros(1, 2), torch.zeros(1, 2), "bce_relu", 600)
