"""Dense CRF (Kraehenbuehl & Koltun): on a label map with IRN's parameters, and on class probabilities with
deeplab-pytorch's (the DeepLab stage).

pydensecrf is imported inside the functions: it is a compiled extension that GPU machines may lack, and only the
CRF steps (cam_to_ir_label, eval_cam --eval_crf, infer_deeplab) need it.
"""
import numpy as np

from misc.errors import DataError


def crf_inference_label(img, labels, n_labels, t=10, gt_prob=0.7):
    """Refine a label map with a dense CRF whose unary trusts each given label with probability gt_prob.

    img uint8 (H, W, 3) RGB; labels int (H, W) in [0, n_labels) -> int64 (H, W) in [0, n_labels).
    Pairwise terms as IRN: Gaussian (sxy 3, compat 3) and bilateral (sxy 50, srgb 5, compat 10); t mean-field
    iterations; no label is "unsure" (zero_unsure=False), so label 0 (background) is a label like the others.
    """
    return crf_inference_labels(img, [labels], n_labels, t, gt_prob)[0]


def crf_inference_labels(img, label_maps, n_labels, t=10, gt_prob=0.7):
    """crf_inference_label of several label maps of one image: the pairwise terms (the bilateral one builds a
    permutohedral lattice of the image, a quarter of a CRF's time) are set up once and each map's inference
    starts from its own unary, so every result is bit for bit the one of a CRF of its own."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels
    except ImportError as e:
        raise DataError("the dense CRF needs pydensecrf: pip install pydensecrf2 (import name pydensecrf)") from e
    img = np.ascontiguousarray(img, dtype=np.uint8)
    label_maps = [np.asarray(labels) for labels in label_maps]
    h, w = label_maps[0].shape
    for labels in label_maps:
        if img.shape[:2] != (h, w) or labels.shape != (h, w) or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"CRF image {img.shape} does not match the label map {labels.shape}")
        if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
            raise ValueError(f"CRF labels must lie in [0, {n_labels}), got [{labels.min()}, {labels.max()}]")
    if n_labels < 2:  # one label: nothing to infer (and the unary would be degenerate)
        return [np.zeros((h, w), dtype=np.int64) for _ in label_maps]
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=img, compat=10)
    out = []
    for labels in label_maps:
        crf.setUnaryEnergy(unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=gt_prob,
                                             zero_unsure=False))
        q = crf.inference(t)
        out.append(np.argmax(np.asarray(q).reshape(n_labels, h, w), axis=0))
    return out


def crf_inference_softmax(img, probs, t=10, pos_xy=1.0, pos_w=3.0, bi_xy=67.0, bi_rgb=3.0, bi_w=4.0):
    """Refine class probabilities with a dense CRF whose unary is -log p (deeplab-pytorch's DenseCRF; its VOC
    parameters are the defaults: 10 iterations, Gaussian sxy 1 / compat 3, bilateral sxy 67 / srgb 3 / compat 4).

    img uint8 (H, W, 3): the raw RGB image (deeplab-pytorch's main.py passes a mean-subtracted image cast to uint8
    instead, which wraps negative values; not reproduced). probs float (n, H, W) summing to 1 over n ->
    float32 (n, H, W) CRF marginals.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as e:
        raise DataError("the dense CRF needs pydensecrf: pip install pydensecrf2 (import name pydensecrf)") from e
    img = np.ascontiguousarray(img, dtype=np.uint8)
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    n, h, w = probs.shape
    if img.shape != (h, w, 3):
        raise ValueError(f"CRF image {img.shape} does not match the probabilities {probs.shape}")
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=pos_xy, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy, srgb=bi_rgb, rgbim=img, compat=bi_w)
    return np.asarray(crf.inference(t), dtype=np.float32).reshape(n, h, w)
