"""Step eval_deeplab: mIoU of the DeepLab predictions (result/deeplab_pred) on --seg_eval_list, with the one
confusion matrix of misc/metrics.py (ground-truth void 255 ignored; mIoU over the classes present in the ground
truth or the prediction). Writes result/eval_deeplab.json (miou, per_class_iou, precision, recall, f1,
num_images, crf, ...) and .md, and --seg_save_png overlay pictures (image | prediction | ground truth) in
result/eval_deeplab_png/. Next to the DeepLab score it reports the all-background baseline of the same images and,
when the pseudo masks cover them, the pseudo masks' mIoU on the same images.
"""
import logging
import os

import numpy as np
from tqdm import tqdm

from misc import imutils, resume
from misc.datasets import build_spec, load_id_list
from misc.errors import DataError
from misc.fileio import load_image_rgb, load_label_png, save_json, save_png, save_text
from misc.metrics import ConfusionMatrix, markdown_table, percent, scores_from_confusion, segmentation_report

log = logging.getLogger(__name__)


def load_prediction(path, img_id, num_classes, shape):
    if not os.path.isfile(path):
        raise DataError(f"DeepLab prediction {path} of image {img_id} is missing: run the infer_deeplab step "
                        f"(--only infer_deeplab) on a --seg_infer_list that contains the --seg_eval_list ids")
    pred = load_label_png(path)
    if pred.shape != shape:
        raise DataError(f"DeepLab prediction {path} is {pred.shape} but the ground truth is {shape}; remake it "
                        f"with --overwrite infer_deeplab")
    if pred.max() > num_classes:
        raise DataError(f"DeepLab prediction {path} has class {pred.max()} but the dataset has {num_classes}")
    return pred


def evaluate(args, spec, ids):
    """Confusion matrices of the predictions, of all-background, and of the pseudo masks (None unless every id
    has one)."""
    k = spec.num_classes + 1
    ours, background = ConfusionMatrix(k), ConfusionMatrix(k)
    masks = ConfusionMatrix(k)
    have_masks = all(os.path.isfile(os.path.join(args.pseudo_mask_dir, i + ".png")) for i in ids)
    for img_id in tqdm(ids, desc="eval_deeplab"):
        gt = spec.load_gt(img_id)
        ours.update(gt, load_prediction(os.path.join(args.deeplab_pred_dir, img_id + ".png"), img_id,
                                        spec.num_classes, gt.shape))
        background.update(gt, np.zeros_like(gt))
        if have_masks:
            mask = load_label_png(os.path.join(args.pseudo_mask_dir, img_id + ".png"))
            if mask.shape == gt.shape:
                masks.update(gt, np.where(mask == 255, 0, mask))
            else:
                have_masks = False
    return ours.mat, background.mat, masks.mat if have_masks else None


def save_pictures(spec, pred_dir, ids, out_dir):
    """image | prediction | ground truth, side by side, in the VOC palette."""
    palette = np.array(imutils.color_palette(), dtype=np.uint8).reshape(-1, 3)
    for img_id in ids:
        img = load_image_rgb(spec.image_path(img_id))
        pred = load_label_png(os.path.join(pred_dir, img_id + ".png"))
        gt = spec.load_gt(img_id)
        panels = [img, palette[np.clip(pred, 0, 255)], palette[np.clip(gt, 0, 255)]]
        save_png(os.path.join(out_dir, img_id + ".png"), np.concatenate(panels, axis=1))


def results_markdown(results, title):
    comparison = [["DeepLab-v2" + (" + CRF" if results["crf"] else ""), results["miou"]]]
    if results["pseudo_mask_miou"] is not None:
        comparison.append(["pseudo masks (same images)", results["pseudo_mask_miou"]])
    comparison.append(["all-background baseline", results["all_background_miou"]])
    return "".join([
        f"# {title}\n\n",
        markdown_table(["mIoU", "precision", "recall", "F1", "images", "CRF"],
                       [[results["miou"], results["precision"], results["recall"], results["f1"],
                         results["num_images"], "yes" if results["crf"] else "no"]]),
        "\n", markdown_table(["prediction", "mIoU"], comparison),
        "\n## Per-class IoU\n\n",
        markdown_table(["class", "IoU"], list(results["per_class_iou"].items())),
    ])


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.seg_eval_list, "--seg_eval_list")
    mat, background, masks = evaluate(args, spec, ids)
    names = spec.names_with_background
    record = resume.describe(args.deeplab_pred_dir)
    crf = bool(record and (record.get("settings") or {}).get("crf"))
    results = {**segmentation_report(mat, names), "num_images": len(ids), "crf": crf,
               "all_background_miou": percent(scores_from_confusion(background)["miou"]),
               "pseudo_mask_miou": percent(scores_from_confusion(masks)["miou"]) if masks is not None else None,
               "confusion": np.asarray(mat).tolist(), "dataset": spec.name, "made_by": record,
               "pseudo_masks": args.pseudo_mask_dir, "run": resume.run_info(args)}
    base = os.path.join(args.result_dir, "eval_deeplab")
    save_json(base + ".json", results)
    title = f"DeepLab-v2 evaluation ({len(ids)} images of {os.path.basename(args.seg_eval_list)})"
    save_text(base + ".md", results_markdown(results, title))
    if args.seg_save_png > 0:
        save_pictures(spec, args.deeplab_pred_dir, ids[:args.seg_save_png], base + "_png")
    log.info("DeepLab mIoU %.2f (CRF %s); pseudo masks %s; all-background %.2f -> %s.json", results["miou"] or 0,
             "on" if crf else "off",
             "—" if results["pseudo_mask_miou"] is None else f"{results['pseudo_mask_miou']:.2f}",
             results["all_background_miou"] or 0, base)
    print(results_markdown(results, title).split("\n## Per-class")[0])
    return results
