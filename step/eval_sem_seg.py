"""Step eval_sem_seg: mIoU of the pseudo masks on --eval_list (IRN's eval_sem_seg): result/sem_seg (IRN) or
result/sem_seg_psa (PSA), as --refine chooses.

Predicted 255 counts as background (as IRN); ground-truth void (255) is ignored. Reports per-class IoU, mIoU,
foreground precision / recall / F1 (paper Table 6) and IRN's background false-positive / false-negative rates
(fp = wrongly predicted pixels of a class over its union, fn = missed pixels over the union). All numbers are
percentages. Writes result/eval_sem_seg.json and result/eval_sem_seg.md.
"""
import logging
import os

import numpy as np
from tqdm import tqdm

from misc import resume
from misc.datasets import build_spec, load_id_list
from misc.errors import DataError
from misc.fileio import load_label_png, save_json, save_text
from misc.metrics import ConfusionMatrix, markdown_table, percent, scores_from_confusion, segmentation_report

log = logging.getLogger(__name__)


MADE_BY = {"irn": "make_sem_seg", "psa": "make_psa_sem_seg"}


def load_prediction(args, img_id, num_classes):
    path = os.path.join(args.pseudo_mask_dir, img_id + ".png")
    if not os.path.isfile(path):
        step = MADE_BY[args.refine]
        raise DataError(f"pseudo mask {path} of image {img_id} is missing: run the {step} step (--only {step}) "
                        f"on an --infer_list that contains the --eval_list ids")
    pred = load_label_png(path)
    pred[pred == 255] = 0  # IRN: unsure counts as background
    if pred.max() > num_classes:
        raise DataError(f"pseudo mask {path} has class {pred.max()} but the dataset has {num_classes} classes")
    return pred


def evaluate(args, ids, spec):
    names = spec.names_with_background
    confusion = ConfusionMatrix(len(names))
    for img_id in tqdm(ids, desc="eval_sem_seg"):
        pred = load_prediction(args, img_id, spec.num_classes)
        gt = spec.load_gt(img_id)
        if gt.shape != pred.shape:
            raise DataError(f"pseudo mask {os.path.join(args.pseudo_mask_dir, img_id + '.png')} is "
                            f"{pred.shape} but the ground truth {spec.gt_path(img_id)} is {gt.shape}")
        confusion.update(gt, pred)
    return summarize(confusion.mat, names, len(ids))


def summarize(mat, names, num_images):
    s = scores_from_confusion(mat)
    return {
        **segmentation_report(mat, names),
        "num_images": num_images,
        # IRN also prints the mean over foreground classes (classes absent from GT and prediction skipped)
        "fp_fg_mean": percent(np.nanmean(s["fp"][1:])) if np.any(~np.isnan(s["fp"][1:])) else None,
        "fn_fg_mean": percent(np.nanmean(s["fn"][1:])) if np.any(~np.isnan(s["fn"][1:])) else None,
        "confusion": np.asarray(mat).tolist(),
    }


def results_markdown(results, title):
    return "".join([
        f"# {title}\n\n",
        markdown_table(["mIoU", "precision", "recall", "F1", "bg FP", "bg FN", "images"],
                       [[results["miou"], results["precision"], results["recall"], results["f1"], results["fp_bg"],
                         results["fn_bg"], results["num_images"]]]),
        "\n## Per-class IoU\n\n",
        markdown_table(["class", "IoU"], list(results["per_class_iou"].items())),
    ])


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.eval_list, "--eval_list")
    results = evaluate(args, ids, spec)
    source = args.ir_cam_source if args.refine == "irn" else getattr(args, "psa_cam_source", args.ir_cam_source)
    results.update({"refine": args.refine, "source": source, "dataset": spec.name,
                    "made_by": resume.describe(args.pseudo_mask_dir), "run": resume.run_info(args)})
    base = os.path.join(args.result_dir, "eval_sem_seg" if args.refine == "irn" else "eval_sem_seg_psa")
    save_json(base + ".json", results)
    save_text(base + ".md", results_markdown(results, f"Pseudo-mask evaluation ({args.refine.upper()} on "
                                                      f"{source} seeds, {len(ids)} images)"))
    log.info("pseudo-mask mIoU (%s on %s) %.2f; precision %.2f recall %.2f F1 %.2f; bg fp %.2f fn %.2f -> %s.json",
             args.refine, source, results["miou"] or 0, results["precision"] or 0, results["recall"] or 0,
             results["f1"] or 0, results["fp_bg"] or 0, results["fn_bg"] or 0, base)
    return results
