"""Segmentation losses on the stride-8 logits: the paper's balanced cross-entropy ("as DSRG") and plain CE.

Labels: 0 background, 1..C classes, 255 ignored. Both losses are computed in float32 (the logits may be bf16).
"""
import functools

import torch.nn.functional as F

from misc.fileio import DataError

IGNORE = 255


def pixel_nll(logits, labels, ignore_index=IGNORE, smoothing=0.0):
    """-log p(label) per pixel (N, h, w), 0 on ignored pixels. smoothing 0: the exact log-softmax; s > 0: DSRG's
    SoftmaxLayer (pylayers.py L23-52), p = softmax + s renormalised to sum 1, so that p >= s / (1 + C s)."""
    logits, labels = logits.float(), labels.long()
    if not smoothing:
        return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none")
    p = logits.softmax(1) + smoothing
    p = p / p.sum(1, keepdim=True)
    ignored = labels == ignore_index
    nll = -p.gather(1, labels.masked_fill(ignored, 0)[:, None])[:, 0].log()
    return nll.masked_fill(ignored, 0.0)


def balanced_cross_entropy(logits, labels, ignore_index=IGNORE, smoothing=0.0):
    """Per image: mean CE over its background pixels + mean CE over its foreground pixels (an empty set adds 0),
    then the mean over the batch (DSRG's BalancedSeedLoss: each term divided by max(count, 1e-4)). smoothing:
    see pixel_nll (--seg_loss_smoothing; DSRG feeds this loss its smoothed softmax, 1e-4)."""
    ce = pixel_nll(logits, labels, ignore_index, smoothing)  # (N, h, w)
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


def make_loss(name, smoothing=0.0):
    """The loss of --seg_loss NAME with --seg_loss_smoothing (the balanced loss only)."""
    if not smoothing:
        return LOSSES[name]
    if name != "balanced":
        raise DataError(f"--seg_loss_smoothing {smoothing:g} smooths the softmax of the balanced loss (DSRG), but "
                        f"--seg_loss is {name}: pass --seg_loss balanced or --seg_loss_smoothing 0")
    return functools.partial(balanced_cross_entropy, smoothing=smoothing)


def resize_labels(labels, size):
    """(N, H, W) labels -> (N, h, w), nearest (PIL NEAREST's pixel centres, as deeplab-pytorch resizes them)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0].to(labels.dtype)


def msc_loss(outputs, labels, loss_fn):
    """Sum of the loss of each MSC output (every scale and the max), each against the labels resized to its grid."""
    return sum(loss_fn(out, resize_labels(labels, out.shape[-2:])) for out in outputs)
