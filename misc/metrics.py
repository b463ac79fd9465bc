"""The one confusion-matrix implementation (numpy) used by every evaluation step."""
import numpy as np

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix, rows = ground truth, columns = prediction.

    Pixels whose ground truth is `ignore_index` (VOC's void border) or outside [0, K) are not counted.
    """

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, gt, pred):
        gt = np.asarray(gt).reshape(-1).astype(np.int64)
        pred = np.asarray(pred).reshape(-1).astype(np.int64)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth and prediction differ in size: {gt.shape} vs {pred.shape}")
        k = self.num_classes
        valid = (gt != self.ignore_index) & (gt >= 0) & (gt < k) & (pred >= 0) & (pred < k)
        self.mat += np.bincount(k * gt[valid] + pred[valid], minlength=k * k).reshape(k, k)

    def merge(self, other):
        self.mat += other.mat

    def compute(self):
        return scores_from_confusion(self.mat)


def scores_from_confusion(mat):
    """IoU per class (nan for a class absent from both GT and prediction), mIoU as their nanmean, and the
    foreground precision / recall / F1 of paper Table 6 (all foreground classes pooled, background = class 0).

    Also IRN's background false-positive / false-negative rates: fp = wrongly predicted pixels of a class over its
    union, fn = missed pixels of a class over its union.
    """
    mat = np.asarray(mat, dtype=np.float64)
    tp = np.diag(mat)
    gt_count = mat.sum(axis=1)
    pred_count = mat.sum(axis=0)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        fp = np.where(union > 0, (pred_count - tp) / union, np.nan)
        fn = np.where(union > 0, (gt_count - tp) / union, np.nan)
    # Foreground as one class: a pixel is a true positive when both are foreground and the class is right.
    fg_tp = tp[1:].sum()
    fg_pred = mat[:, 1:].sum()
    fg_gt = mat[1:, :].sum()
    precision = fg_tp / fg_pred if fg_pred > 0 else float("nan")
    recall = fg_tp / fg_gt if fg_gt > 0 else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    return {
        "iou": iou,
        "miou": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "fp": fp,
        "fn": fn,
    }


def segmentation_report(mat, class_names):
    """The scores of a confusion matrix as the evaluation JSONs report them (percent; None for nan):
    miou, per_class_iou {name: IoU}, foreground precision / recall / f1, background fp_bg / fn_bg."""
    s = scores_from_confusion(mat)
    return {
        "miou": percent(s["miou"]),
        "per_class_iou": {n: percent(v) for n, v in zip(class_names, s["iou"])},
        "precision": percent(s["precision"]),
        "recall": percent(s["recall"]),
        "f1": percent(s["f1"]),
        "fp_bg": percent(s["fp"][0]),
        "fn_bg": percent(s["fn"][0]),
    }


def percent(x):
    """Fraction -> percent rounded for reports; nan becomes None (valid JSON)."""
    return None if x is None or np.isnan(x) else round(float(x) * 100, 3)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join("—" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))
                                       for v in row) + " |")
    return "\n".join(lines) + "\n"
