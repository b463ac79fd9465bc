"""Pooling and losses of RIB (paper Sec. 3.2, Eq. 3) and the fine-tuning ablations of Table 5(a).

Shapes: class maps are (N, C, h, w) raw (pre-ReLU) maps, logits and labels are (N, C); labels are multi-hot.
"""
import torch
import torch.nn.functional as F

GNDRP_NORMS = ("paper", "official")
MARGIN_MODES = ("paper", "official")
RIB_LOSSES = ("rib", "bce_sigmoid", "bce_tanh", "bce_softsign")


def gap_pool(class_maps):
    """Global average pooling of (N, C, h, w) maps -> (N, C). With a bias-free linear classifier this is the logit."""
    return class_maps.mean(dim=(2, 3))


def gndrp_keep_mask(class_maps, labels, tau, norm="paper"):
    """Locations GNDRP pools over, as a float mask (N, C, h, w), computed without gradient.

    For every true class the map is divided by its spatial max (Eq. 2's CAM); locations whose normalised score is
    above tau are dropped. The paper's set is U_tau = {u | CAM(u) <= tau}; the official code keeps CAM < tau.
    Classes that are not in the label keep every location (plain GAP), as in the official code.
    A true class whose max is <= 0 cannot be normalised (dividing by a non-positive max flips the order):
    norm='official' divides anyway, as the official code, so every location is dropped (x / max >= 1 > tau) and the
    class leaves the loss (logit 0, no gradient); norm='paper' keeps every location instead (plain GAP).
    """
    with torch.no_grad():
        peak = class_maps.amax(dim=(2, 3), keepdim=True)
        true_class = labels[:, :, None, None] > 0
        if norm == "official":
            keep = (class_maps / peak) < tau
            return torch.where(true_class, keep, torch.ones_like(keep)).to(class_maps.dtype)
        keep = (class_maps / peak.clamp_min(1e-5)) <= tau
        return torch.where(true_class & (peak > 0), keep, torch.ones_like(keep)).to(class_maps.dtype)


def gndrp_pool(class_maps, labels, tau, norm="paper"):
    """Global non-discriminative region pooling (Eq. 3) -> (N, C).

    norm='paper': mean over the kept locations U_tau (Eq. 3).
    norm='official': dropped locations are zeroed and the sum is divided by all h*w locations (gndp2d of the
    official code), which shrinks the logit by |U_tau| / |U|.
    """
    if norm not in GNDRP_NORMS:
        raise ValueError(f"--gndrp_norm must be one of {GNDRP_NORMS}, got {norm!r}")
    keep = gndrp_keep_mask(class_maps, labels, tau, norm)
    pooled_sum = (class_maps * keep).sum(dim=(2, 3))
    if norm == "paper":
        return pooled_sum / keep.sum(dim=(2, 3)).clamp_min(1.0)
    return pooled_sum / (class_maps.shape[2] * class_maps.shape[3])


def rib_loss(logits, labels, margin, mode="paper"):
    """L_RIB = -sum_c t_c * min(m, y_c), summed over the rows of the batch (the official code sums rows too, and
    the paper's lambda was tuned with that sum).

    mode='official': no clamp, -sum_c t_c * y_c; the official code stops fine-tuning once the target's summed
    logit exceeds its `stop_th` instead (the caller implements that early stop).
    """
    if mode not in MARGIN_MODES:
        raise ValueError(f"--rib_margin_mode must be one of {MARGIN_MODES}, got {mode!r}")
    if mode == "paper":
        logits = torch.clamp(logits, max=margin)
    return -(logits * labels).sum()


def saturating_probability(logits, activation):
    """Class probability through a double-sided saturating activation, rescaled to (0, 1) (Table 5(a))."""
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    if activation == "tanh":
        return (torch.tanh(logits) + 1) / 2
    if activation == "softsign":
        return (F.softsign(logits) + 1) / 2
    raise ValueError(f"unknown activation {activation!r}")


def bce_activation_loss(logits, labels, activation):
    """Binary cross-entropy on a saturating activation, summed like L_RIB so one lambda serves both."""
    if activation == "sigmoid":  # the numerically stable form
        return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    p = saturating_probability(logits, activation).clamp(1e-7, 1 - 1e-7)
    return F.binary_cross_entropy(p, labels, reduction="sum")


def finetune_loss(logits, labels, loss_name, margin, margin_mode="paper"):
    """Loss of one RIB step: `rib` (L_RIB) or one of the BCE ablations `bce_sigmoid|bce_tanh|bce_softsign`."""
    if loss_name == "rib":
        return rib_loss(logits, labels, margin, margin_mode)
    if loss_name.startswith("bce_") and loss_name in RIB_LOSSES:
        return bce_activation_loss(logits, labels, loss_name[len("bce_"):])
    raise ValueError(f"--rib_loss must be one of {RIB_LOSSES}, got {loss_name!r}")
