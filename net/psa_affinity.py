"""PSA (AffinityNet; Ahn & Kwak, CVPR 2018): affinity labels from CAMs, the affinity loss, and the random walk.

PSA refines seeds in three steps (docs/psa.md maps each to the official code, jiwoon-ahn/psa):
1. Affinity labels. The CAM of the image's classes gets a background score (1 - max_c CAM_c)^alpha and a dense
   CRF. A low alpha (4) gives a large background score, so the CRF's foreground is confident; a high alpha (32)
   gives a tiny one, so its background is confident. Label: the class where the low-alpha CRF says foreground,
   0 where the high-alpha CRF says background (this wins), 255 (no pair label) elsewhere.
2. AffinityNet. Features f at stride 8; the affinity of two pixels within radius 5 is exp(-mean_c |f_i - f_j|).
   Pairs are labelled from the stride-8 label (bg-pos, fg-pos, neg) and trained with
   L = bg/4 + fg/4 + neg/2, each the mean cross-entropy over its pairs.
3. Random walk. A = affinity^beta over the radius-5 pairs (self-affinity 1), T = A with columns normalised,
   x = [background (1 - max CAM)^alpha, CAMs] averaged over 8x8 blocks, walk = x T^(2^logt), upsampled x8,
   argmax.

The official walk builds T as a dense (hw)^2 matrix; `random_walk_lean` computes the same product as 2^logt
stencil steps (69 neighbours per pixel at radius 5), and `random_walk_dense` keeps the official construction as
the reference of the tests.

The pairs are the official ones: each pair is stored once, from a source pixel towards a destination in the lower
half-plane (net/irn_affinity.search_directions), and only pixels with every destination inside the grid are sources
(rows [0, h - r + 1), columns [r - 1, w - r + 1)). Two pixels that are both in the left, right or bottom band
are therefore not paired in the walk (IRN later padded the grid to fix this; PSA's behaviour is kept here).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance

from net.irn_affinity import search_directions, shift, stencil_walk

RADIUS = 5  # pair radius of training and of the walk (official: 5, fixed in train_aff.py and resnet38_aff.py)
FEATURE_STRIDE = 8  # AffinityNet's output stride; labels are reduced and CAMs pooled by this factor
IGNORE = 255


# --- 1. affinity labels -------------------------------------------------------------------------------------------


def background_score(cams, alpha):
    """(1 - max over classes)^alpha of a (n, H, W) CAM in [0, 1] (PSA's background; clamped at 0 so that a
    fractional alpha never meets a negative base)."""
    if isinstance(cams, torch.Tensor):
        return (1 - cams.amax(dim=0, keepdim=True)).clamp(min=0).pow(alpha)
    return np.power(np.clip(1 - cams.max(axis=0, keepdims=True), 0, None), alpha)


def crf_label(img, cams, alpha):
    """argmax of PSA's dense CRF on [background score, CAMs]: 0 = background, i = the i-th map of `cams`.

    PSA's CRF (tool/imutils.crf_inference): unary -log(score) with the scores as given (not normalised),
    Gaussian sxy 3 / compat 3, bilateral sxy 80 / srgb 13 / compat 10, 10 iterations."""
    from misc.crf import crf_inference_softmax
    scores = np.concatenate([background_score(cams, alpha), cams]).astype(np.float32)
    marginals = crf_inference_softmax(img, scores, t=10, pos_xy=3, pos_w=3, bi_xy=80, bi_rgb=13, bi_w=10)
    return marginals.argmax(axis=0)


def combine_labels(low_alpha_label, high_alpha_label, keys):
    """PSA's affinity-training label from the two CRF label maps (0 = background, i = keys[i - 1] + 1):
    the low-alpha map's class where it says foreground, 255 where it says background, and 0 wherever the
    high-alpha map says background (even where the low-alpha map says foreground, as the official code).
    Returns uint8 (H, W): 0 background, 1..C classes, 255 unsure."""
    class_of = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    label = class_of[low_alpha_label]
    label[low_alpha_label == 0] = IGNORE
    label[high_alpha_label == 0] = 0
    return label.astype(np.uint8)


def psa_label(img, record, low_alpha, high_alpha, crf=crf_label):
    """The affinity-training label (uint8 H x W) of one image from its CAM record (`high_res`, `keys`)."""
    keys, cams = record["keys"], record["high_res"]
    if len(keys) == 0:  # no class: everything is confidently background
        return np.zeros(img.shape[:2], dtype=np.uint8)
    return combine_labels(crf(img, cams, low_alpha), crf(img, cams, high_alpha), keys)


def reduce_label(label, valid, stride=FEATURE_STRIDE):
    """Stride-`stride` label of a crop by a per-block majority vote over its valid pixels.

    PSA averages the two CRF score maps over each 8x8 block, takes each map's argmax, then combines them; the
    label here is combined per pixel first (it is stored as one PNG), so a block takes the most frequent of
    {0, 1..C, 255} among its valid pixels. Padding outside the image (valid == 0) is not counted, as in PSA where
    it has no score; a block of padding only is 255. Ties go to the smallest value (background first).
    label uint8 (H, W), valid bool/uint8 (H, W) -> uint8 (ceil(H / stride), ceil(W / stride)).
    """
    h, w = label.shape
    bh, bw = math.ceil(h / stride), math.ceil(w / stride)
    pad = ((0, bh * stride - h), (0, bw * stride - w))
    label = np.pad(np.asarray(label, dtype=np.int64), pad, constant_values=IGNORE)
    valid = np.pad(np.asarray(valid, dtype=bool), pad, constant_values=False)
    values, codes = np.unique(label, return_inverse=True)  # few distinct values: vote over their codes
    codes = codes.reshape(label.shape)
    blocks = np.arange(bh * bw).reshape(bh, bw).repeat(stride, axis=0).repeat(stride, axis=1)
    counts = np.bincount((blocks * len(values) + codes)[valid], minlength=bh * bw * len(values))
    counts = counts.reshape(bh * bw, len(values))
    reduced = values[counts.argmax(axis=1)]
    reduced[counts.sum(axis=1) == 0] = IGNORE
    return reduced.reshape(bh, bw).astype(np.uint8)


def color_jitter(img, rng, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1):
    """Colour augmentation of PSA's training (torchvision ColorJitter(0.3, 0.3, 0.3, 0.1), written with PIL:
    torchvision cannot be imported here). Brightness, contrast and saturation factors are drawn uniformly from
    [1 - v, 1 + v], the hue shift from [-hue, hue] of a turn; the four are applied in a random order.
    uint8 (H, W, 3) RGB -> uint8 (H, W, 3)."""
    pil = Image.fromarray(np.ascontiguousarray(img))
    ops = []
    for enhancer, amount in ((ImageEnhance.Brightness, brightness), (ImageEnhance.Contrast, contrast),
                             (ImageEnhance.Color, saturation)):
        if amount > 0:
            factor = rng.uniform(max(0.0, 1 - amount), 1 + amount)
            ops.append(lambda im, e=enhancer, f=factor: e(im).enhance(f))
    if hue > 0:
        ops.append(lambda im, s=rng.uniform(-hue, hue): _shift_hue(im, s))
    for i in rng.permutation(len(ops)):
        pil = ops[i](pil)
    return np.asarray(pil, dtype=np.uint8).copy()


def _shift_hue(pil, turns):
    """Rotate the hue channel of an RGB image by `turns` of the colour wheel (uint8 hue wraps around)."""
    h, s, v = pil.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.int64) + int(turns * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(shifted.astype(np.uint8), "L"), s, v)).convert("RGB")


# --- 2. pairs and the affinity loss -------------------------------------------------------------------------------


def source_box(radius, size):
    """(rows, cols) slices of the source pixels of a (h, w) grid: those whose every destination is inside."""
    rf = int(radius) - 1
    h, w = size
    return slice(0, max(0, h - rf)), slice(rf, max(rf, w - rf))


def pair_indices(radius, size):
    """Flat indices of the pairs of a (h, w) grid in the official order: src int64 (n_src,), dst int64
    (n_dirs, n_src) with dst[k] = src + direction k (directions as net/irn_affinity.search_directions)."""
    h, w = size
    rows, cols = source_box(radius, size)
    flat = np.arange(h * w, dtype=np.int64).reshape(h, w)
    src = flat[rows, cols]
    dst = [flat[rows.start + dy:rows.stop + dy, cols.start + dx:cols.stop + dx].reshape(-1)
           for dy, dx in search_directions(int(radius))]
    return src.reshape(-1), np.stack(dst)


def pair_affinity(features, radius=RADIUS):
    """Affinities exp(-mean_c |f_src - f_dst|) of all pairs: features (N, C, h, w) -> (N, n_dirs, n_src), in the
    order of `pair_indices` (computed with shifted views: no gather of a (C, n_dirs * n_src) copy)."""
    h, w = features.shape[-2:]
    rows, cols = source_box(radius, (h, w))
    src = features[:, :, rows, cols]
    out = []
    for dy, dx in search_directions(int(radius)):
        dst = features[:, :, rows.start + dy:rows.stop + dy, cols.start + dx:cols.stop + dx]
        out.append(torch.exp(-(src - dst).abs().mean(dim=1)).flatten(1))
    return torch.stack(out, dim=1)


def affinity_loss(aff, bg_pos, fg_pos, neg, eps=1e-5):
    """PSA's loss: cross-entropy of the affinities of background-positive, foreground-positive (-log aff) and
    negative (-log(1 - aff)) pairs, each averaged over its pairs of the whole batch, then bg/4 + fg/4 + neg/2.
    Returns the total and its parts (tensors) and the pair counts."""
    pos_term = -torch.log(aff + eps)
    neg_term = -torch.log(1.0 + eps - aff)
    counts = {"bg_cnt": bg_pos.sum() + eps, "fg_cnt": fg_pos.sum() + eps, "neg_cnt": neg.sum() + eps}
    bg = (bg_pos * pos_term).sum() / counts["bg_cnt"]
    fg = (fg_pos * pos_term).sum() / counts["fg_cnt"]
    ng = (neg * neg_term).sum() / counts["neg_cnt"]
    return {"loss": bg / 4 + fg / 4 + ng / 2, "bg_pos": bg, "fg_pos": fg, "neg": ng, **counts}


# --- 3. random walk -----------------------------------------------------------------------------------------------


def cam_with_background(high_res, alpha, stride=FEATURE_STRIDE):
    """[background (1 - max CAM)^alpha, CAMs] of a (n, H, W) full-resolution CAM, zero-padded at the bottom and
    right to multiples of `stride` and averaged over stride x stride blocks -> (n + 1, ceil(H/s), ceil(W/s))."""
    h, w = high_res.shape[-2:]
    scores = torch.cat([background_score(high_res, alpha), high_res])
    scores = F.pad(scores, (0, -w % stride, 0, -h % stride))
    return F.avg_pool2d(scores[None], stride, stride)[0]


def dense_affinity(features, radius=RADIUS):
    """The official dense (h*w, h*w) affinity of features (C, h, w): the pairs of `pair_indices` in both
    directions and 1 on the diagonal, 0 elsewhere."""
    c, h, w = features.shape
    src, dst = (torch.from_numpy(a).to(features.device) for a in pair_indices(radius, (h, w)))
    flat = features.reshape(c, -1)
    aff = torch.exp(-(flat[:, src][:, None, :] - flat[:, dst]).abs().mean(dim=0))  # (n_dirs, n_src)
    n = h * w
    src = src.expand_as(dst).reshape(-1)
    dst, aff = dst.reshape(-1), aff.reshape(-1)
    diag = torch.arange(n, device=features.device)
    indices = torch.cat([torch.stack([src, dst]), torch.stack([diag, diag]), torch.stack([dst, src])], dim=1)
    values = torch.cat([aff, torch.ones(n, dtype=aff.dtype, device=aff.device), aff])
    return torch.sparse_coo_tensor(indices, values, (n, n), check_invariants=False).to_dense()


def random_walk_dense(x, features, radius=RADIUS, beta=8.0, logt=8):
    """The official walk (infer_aff.py): x (K, h, w) scores, features (C, h, w) -> x T^(2^logt) (K, h, w), with
    T the column-normalised affinity^beta squared logt times. Memory: several dense (hw)^2 matrices."""
    k, h, w = x.shape
    aff = dense_affinity(features, radius).pow(beta)
    trans = aff / aff.sum(dim=0, keepdim=True)
    for _ in range(logt):
        trans = trans @ trans
    return (x.reshape(k, -1).to(trans.dtype) @ trans).view(k, h, w)


def affinity_stencil(features, radius=RADIUS):
    """The affinities of `dense_affinity` as a stencil: (offsets, aff) with offsets (0, 0), the search directions
    d, then -d, and aff (K, h, w) with aff[k, y, x] = A[(y, x), (y, x) + offsets[k]] (0 for absent pairs)."""
    c, h, w = features.shape
    rows, cols = source_box(radius, (h, w))
    is_source = torch.zeros(h, w, dtype=features.dtype, device=features.device)
    is_source[rows, cols] = 1
    directions = search_directions(int(radius))
    forward = []
    for dy, dx in directions:
        # shift(f, -dy, -dx)[p] = f[p + d]; p + d is inside the grid for every source p
        diff = (features - shift(features, -dy, -dx)).abs().mean(dim=0)
        forward.append(torch.exp(-diff) * is_source)
    forward = torch.stack(forward)
    # A is symmetric: A[q, q - d] = A[q - d, q] is the forward value of the source q - d, moved to q
    backward = torch.stack([shift(f, dy, dx) for f, (dy, dx) in zip(forward, directions)])
    offsets = [(0, 0)] + directions + [(-dy, -dx) for dy, dx in directions]
    return offsets, torch.cat([torch.ones_like(forward[:1]), forward, backward])


def random_walk_lean(x, features, radius=RADIUS, beta=8.0, logt=8, dtype=torch.float64):
    """Same result as `random_walk_dense` without a dense matrix: x T^n = (D^-1 A)^n x with A symmetric and D its
    row sums = column sums, applied n = 2^logt times as a 69-offset stencil (radius 5). Memory: K + 2 grids
    per score map; accumulated in float64 (256 float32 steps drift more than the dense float32 squaring)."""
    offsets, aff = affinity_stencil(features.float(), radius)
    weights = aff.to(dtype).pow(beta)
    weights = weights / weights.sum(dim=0, keepdim=True)
    return stencil_walk(x.to(dtype), offsets, weights, radius, 2 ** logt).to(x.dtype)


def walk_to_labels(walk, keys, size, stride=FEATURE_STRIDE, with_score=False):
    """(n + 1, h, w) walked [background, classes] -> (H, W) int64 labels: bilinear upsampling to the padded image
    (h * stride, w * stride), crop to size, argmax, mapped through the image's classes.

    with_score: also the uint8 (H, W) confidence round(255 x max over the image's classes of the upsampled walk /
    its global max over those classes), the score IRN's make_sem_seg writes beside its masks (make_seg_labels'
    round-one rule reads it; PSA itself has no such score)."""
    h, w = walk.shape[-2:]
    up = F.interpolate(walk[None].float(), (h * stride, w * stride), mode="bilinear", align_corners=False)[0]
    up = up[:, :size[0], :size[1]]
    labels = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])[up.argmax(dim=0).cpu().numpy()]
    if not with_score:
        return labels
    fg = up[1:].amax(dim=0) if len(up) > 1 else torch.zeros(size, device=up.device)
    peak = fg.max()
    score = (fg / peak * 255).round() if peak > 0 else torch.zeros_like(fg)
    return labels, score.to(torch.uint8).cpu().numpy()


def psa_pseudo_mask(high_res, keys, features, size, alpha=16.0, beta=8.0, logt=8, lean=True, with_score=False):
    """PSA's pseudo mask (H, W) int64 in 0..C from the full-resolution CAM (n, H, W) and the AffinityNet features
    (C, ceil(H/8), ceil(W/8)) of the zero-padded image; with_score, also the score of `walk_to_labels`."""
    if len(keys) == 0:
        labels = np.zeros(size, dtype=np.int64)
        return (labels, np.zeros(size, dtype=np.uint8)) if with_score else labels
    scores = cam_with_background(high_res.float(), alpha)
    if scores.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"the CAM's stride-{FEATURE_STRIDE} grid {tuple(scores.shape[-2:])} differs from the "
                         f"feature grid {tuple(features.shape[-2:])}")
    walk = (random_walk_lean if lean else random_walk_dense)(scores, features.float(), RADIUS, beta, logt)
    return walk_to_labels(walk, keys, size, with_score=with_score)
