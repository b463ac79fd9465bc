"""Toy images of Sec. 3.1 (MNIST '2'/'8' with an added circle/square), their region masks, gradient maps and HGR.

Regions, one label per pixel (`regions` arrays, uint8):
  R_D  (REGION_D)  the digit: every pixel whose original MNIST intensity is > 0;
  R_ND (REGION_ND) the added shape: exactly the pixels this module paints;
  R_BG (REGION_BG) everything else (intensity 0).
Overlap rule: a shape is placed, uniformly at random, among the positions where it keeps `gap` pixels away from
the digit. When an image has no such position, it goes where it touches the fewest digit pixels and is painted
only onto background pixels: the digit pixels under it stay untouched and stay R_D. So R_ND is always exactly
the set of changed pixels, and the three regions partition the image.
"""
import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

REGION_BG, REGION_D, REGION_ND = 0, 1, 2
REGION_KEYS = ("RD", "RND", "RBG")  # output order everywhere (JSON, tables, plots)
REGION_IDS = {"RD": REGION_D, "RND": REGION_ND, "RBG": REGION_BG}
SHAPES = ("circle", "square")
GRAD_NORMS = ("max", "none")


def shape_stamp(kind, size, thickness):
    """Boolean (size, size) outline of a circle or a square, `thickness` pixels wide."""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape {kind!r}, expected one of {SHAPES}")
    if size < 3 or not 1 <= thickness <= size // 2:
        raise ValueError(f"shape size {size} / thickness {thickness}: need size >= 3 and 1 <= thickness <= size/2")
    rows, cols = np.mgrid[0:size, 0:size]
    if kind == "square":
        # distance (in pixels) from the nearest side of the box
        edge = np.minimum(np.minimum(rows, cols), np.minimum(size - 1 - rows, size - 1 - cols))
        return edge < thickness
    centre = (size - 1) / 2.0
    dist = np.hypot(rows - centre, cols - centre)
    outer = size / 2.0  # the ring touches the middle of each side of the box, not its corners
    return (dist < outer) & (dist >= outer - thickness)


def _dilate(mask, radius):
    """Square (Chebyshev) dilation of a boolean mask by `radius` pixels."""
    if radius <= 0:
        return mask.copy()
    padded = np.pad(mask, radius)
    windows = sliding_window_view(padded, (2 * radius + 1, 2 * radius + 1))
    return windows.any(axis=(-1, -2))


def paint_shape(image, kind, rng, size=7, thickness=2, gap=1, value=1.0):
    """Paint one shape on a float image (H, W) in [0, 1]. Returns (painted image, regions, overlapped)."""
    digit = image > 0
    stamp = shape_stamp(kind, size, thickness)
    h, w = image.shape
    if size > h or size > w:
        raise ValueError(f"shape size {size} does not fit a {h}x{w} image")
    # number of stamp pixels that would land on the (gap-dilated) digit, for every top-left corner
    def hits(mask):
        return (sliding_window_view(mask, (size, size)) & stamp).sum(axis=(-1, -2))

    free = np.argwhere(hits(_dilate(digit, gap)) == 0)
    overlapped = len(free) == 0
    if overlapped:  # rare: no room; take the least overlapping places (see the module docstring)
        on_digit = hits(digit)
        free = np.argwhere(on_digit == on_digit.min())
    top, left = free[rng.integers(len(free))]
    shape_mask = np.zeros_like(digit)
    shape_mask[top:top + size, left:left + size] = stamp
    shape_mask &= ~digit  # paint background pixels only: digit pixels stay R_D
    painted = image.copy()
    painted[shape_mask] = value
    regions = np.full(image.shape, REGION_BG, dtype=np.uint8)
    regions[digit] = REGION_D
    regions[shape_mask] = REGION_ND
    return painted, regions, overlapped


def make_toy_set(images, labels, shape_for_label, fraction, rng, size=7, thickness=2, gap=1):
    """Add shapes to a random `fraction` of the images (exactly round(fraction * N) of them).

    images: float (N, H, W) in [0, 1]; labels: the digits (N,); shape_for_label: {digit: 'circle'|'square'}.
    Returns a dict: images (N, H, W) float32, regions (N, H, W) uint8, has_shape (N,) bool, n_overlapped int.
    """
    n = len(images)
    chosen = rng.choice(n, size=int(round(fraction * n)), replace=False)
    out = np.asarray(images, dtype=np.float32).copy()
    regions = np.where(out > 0, REGION_D, REGION_BG).astype(np.uint8)
    has_shape = np.zeros(n, dtype=bool)
    n_overlapped = 0
    for i in np.sort(chosen):  # sorted: the draw order of positions does not depend on choice()'s order
        out[i], regions[i], overlapped = paint_shape(out[i], shape_for_label[int(labels[i])], rng, size,
                                                      thickness, gap)
        has_shape[i] = True
        n_overlapped += int(overlapped)
    return {"images": out, "regions": regions, "has_shape": has_shape, "n_overlapped": n_overlapped}


def normalise_gradients(maps, mode="max"):
    """|G| per map; mode 'max' divides each (H, W) map by its own max so that maps of different layers (whose raw
    scales differ by orders of magnitude) share the 0.3 threshold; 'none' keeps the raw magnitudes."""
    if mode not in GRAD_NORMS:
        raise ValueError(f"--grad_norm must be one of {GRAD_NORMS}, got {mode!r}")
    mag = np.abs(np.asarray(maps, dtype=np.float64))
    if mode == "none":
        return mag
    peak = mag.max(axis=(-1, -2), keepdims=True)
    return np.divide(mag, peak, out=np.zeros_like(mag), where=peak > 0)  # an all-zero map stays zero


def hgr(norm_maps, regions, thresh=0.3):
    """High gradient ratio: share of each region's pixels whose (normalised) gradient is above `thresh`.

    norm_maps (..., H, W) from normalise_gradients, regions (..., H, W) (broadcastable; e.g. maps (N, L, H, W)
    with regions (N, 1, H, W)). Returns (..., 3) in REGION_KEYS order; NaN where a region has no pixels.
    """
    high = np.asarray(norm_maps) > thresh
    regions = np.asarray(regions)
    out = []
    for key in REGION_KEYS:
        in_region = regions == REGION_IDS[key]
        count = in_region.sum(axis=(-1, -2))
        hits = (high & in_region).sum(axis=(-1, -2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(count > 0, hits / np.maximum(count, 1), np.nan))
    return np.stack(out, axis=-1)


def region_mean(norm_maps, regions):
    """Mean (normalised) gradient of each region, (..., 3) in REGION_KEYS order; NaN for an empty region.
    A threshold-free companion of HGR: it shows a fall of a region's gradient that stays on one side of 0.3."""
    maps = np.asarray(norm_maps, dtype=np.float64)
    regions = np.asarray(regions)
    out = []
    for key in REGION_KEYS:
        in_region = regions == REGION_IDS[key]
        count = in_region.sum(axis=(-1, -2))
        total = np.where(in_region, maps, 0.0).sum(axis=(-1, -2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(count > 0, total / np.maximum(count, 1), np.nan))
    return np.stack(out, axis=-1)


def gradient_maps(model, x, classes):
    """G_1..G_6 of Sec. 3.1 for every image: (N, 6, H, W) raw (signed) gradients with respect to the input.

    G_l = d/dx sum_{u,v} T_l(u, v) (u: spatial, v: channel index) for l = 1..5, with T_l from
    model.forward_features (the conv output after its ReLU); G_6 = d/dx y^c with c = classes[n].
    One backward pass per layer on the batch sum: the toy model has no cross-sample layers (no batch norm), so the
    gradient of the sum with respect to image n is image n's own gradient.
    """
    x = x.detach().clone().requires_grad_(True)
    feats, logits = model.forward_features(x)
    targets = [f.sum() for f in feats] + [logits.gather(1, classes.view(-1, 1)).sum()]
    maps = []
    for i, target in enumerate(targets):
        (grad,) = torch.autograd.grad(target, x, retain_graph=i < len(targets) - 1)
        maps.append(grad.sum(dim=1))  # (N, 1, H, W) -> (N, H, W)
    return torch.stack(maps, dim=1)


def logit_gradient_map(model, x, classes):
    """G_6 = d y^c / d x alone, (N, H, W): what the RIB analysis (Fig. 2) tracks at every iteration."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), x)
    return grad.sum(dim=1)
