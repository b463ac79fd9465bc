"""Segmentation losses on the stride-8 logits: the paper's balanced cross-entropy ("as DSRG") and plain CE.

Labels: 0 background, 1..C classes, 255 ignored. Both losses are computed in float32 (the logits may be bf16).
"""
import torch.nn.functional as F

IGNORE = 255


def balanced_cross_entropy(logits, labels, ignore_index=IGNORE):
    """Per image: mean CE over its background pixels + mean CE over its foreground pixels (an empty set adds 0),
    then the mean over the batch (DSRG's BalancedSeedLoss: each term divided by max(count, 1e-4))."""
    ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="none")  # (N, h, w)
    labels = labels.long()
    bg = labels == 0
    fg = (labels > 0) & (labels != ignore_index)
    bg_mean = (ce * bg).flatten(1).sum(1) / bg.flatten(1).sum(1).clamp(min=1)
    fg_mean = (ce * fg).flatten(1).sum(1) / fg.flatten(1).sum(1).clamp(min=1)
    return (bg_mean + fg_mean).mean()


def cross_entropy(logits, labels, ignore_index=IGNORE):
    """Mean CE over the batch's labelled pixels (deeplab-pytorch's CrossEntropyLoss(ignore_index=255)); 0, not
    nan, for a batch without labelled pixels."""
    ce = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="sum")
    return ce / (labels != ignore_index).sum().clamp(min=1)


LOSSES = {"balanced": balanced_cross_entropy, "ce": cross_entropy}


def resize_labels(labels, size):
    """(N, H, W) labels -> (N, h, w), nearest (PIL NEAREST's pixel centres, as deeplab-pytorch resizes them)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(labels.dtype)


def msc_loss(outputs, labels, loss_fn):
    """Sum of the loss of each MSC output (every scale and the max), each against the labels resized to its grid."""
    return sum(loss_fn(out, resize_labels(labels, out.shape[-2:])) for out in outputs)
