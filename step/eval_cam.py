"""Step eval_cam: seed mIoU of CAMs (result/cam) or RIB maps (result/cam_rib) on --eval_list.

A seed is the argmax over [background plane = threshold, class maps of the image's classes]; void (255) pixels
are ignored. The background threshold sweep (--cam_eval_sweep, VOC 0.20..0.49) is computed in ONE pass over the
images: every pixel's score is bucketed by how many thresholds lie below it, so each threshold's confusion matrix
is a sum over those buckets. Writes result/eval_cam_<source>.json and .md, and CAM pictures.
"""
import logging
import os

import numpy as np
from tqdm import tqdm

from misc import imutils, resume
from misc.cams import CAM_SOURCE_STEPS, cam_dir as source_dir, cam_file, check_cam_record, read_cam_records
from misc.cli import sweep_values
from misc.datasets import build_spec, load_id_list
from misc.fileio import load_cam_npz, load_image_rgb, save_json, save_png, save_text
from misc.metrics import ConfusionMatrix, markdown_table, percent, scores_from_confusion, segmentation_report

log = logging.getLogger(__name__)


def sweep_thresholds(args):
    if args.cam_eval_thres is not None:
        return [float(args.cam_eval_thres)]
    return sweep_values(*args.cam_eval_sweep)


def seed_scores(record, size):
    """(score, class) per pixel: the max of the normalised class maps and its class (1..C); 0/0 without keys."""
    keys, high_res = record["keys"], record["high_res"]
    if len(keys) == 0:
        return np.zeros(size, np.float32), np.zeros(size, np.int64)
    return high_res.max(axis=0), (keys + 1)[high_res.argmax(axis=0)]


def seed_prediction(record, threshold):
    """The seed at one threshold, the straightforward way (IRN eval_cam): pad a background plane equal to the
    threshold in front of the class maps (in the maps' float32), argmax (ties go to background), map through
    keys + 1."""
    keys, high_res = record["keys"], record["high_res"]
    padded = np.pad(high_res, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=threshold)
    return np.concatenate([[0], keys + 1])[padded.argmax(axis=0)]


class ThresholdSweep:
    """Confusion matrices of the seeds at many background thresholds, accumulated in one pass."""

    def __init__(self, num_classes, thresholds):
        self.k = num_classes  # background included
        self.thresholds = np.asarray(thresholds, dtype=np.float32)  # compared in float32, like the padded map
        self.levels = len(thresholds) + 1
        self.counts = np.zeros(self.k * self.k * self.levels, dtype=np.int64)

    def update(self, gt, score, fg_class):
        # level = number of thresholds strictly below the score; the pixel is foreground at threshold j iff
        # score > t_j, i.e. iff level > j.
        level = np.searchsorted(self.thresholds, score.astype(np.float32).ravel(), side="left")
        gt, fg_class = gt.ravel().astype(np.int64), fg_class.ravel()
        valid = (gt >= 0) & (gt < self.k)  # drops void 255
        index = (gt[valid] * self.k + fg_class[valid]) * self.levels + level[valid]
        self.counts += np.bincount(index, minlength=self.counts.size)

    def all_background_confusion(self):
        """Confusion of predicting background everywhere: the baseline a seed must beat."""
        counts = self.counts.reshape(self.k, self.k, self.levels)
        mat = np.zeros((self.k, self.k), np.int64)
        mat[:, 0] = counts.sum(axis=(1, 2))
        return mat

    def confusion(self, j):
        counts = self.counts.reshape(self.k, self.k, self.levels)
        mat = counts[:, :, j + 1:].sum(axis=2)  # foreground predictions keep their class
        mat[:, 0] += counts[:, :, :j + 1].sum(axis=(1, 2))  # the rest is predicted background
        return mat


def summarize(mat, names):
    pred_fg = mat[:, 1:].sum()
    return {
        **segmentation_report(mat, names),
        # the official eval's share of predicted-foreground pixels whose ground truth is background (foreground
        # predicted with the wrong class is not counted here)
        "among_predfg_bg": percent(mat[0, 1:].sum() / pred_fg) if pred_fg else None,
    }


def evaluate_cam_dir(args, cam_dir, ids, spec=None, made_by="make_cam", crf=False):
    """Seed scores of the CAM files in `cam_dir` for `ids`: best threshold of the sweep, the sweep, per-class IoU,
    foreground precision / recall / F1; with crf=True also the dense-CRF refined seeds at the best threshold."""
    spec = spec or build_spec(args)
    thresholds = sweep_thresholds(args)
    names = spec.names_with_background
    sweep = ThresholdSweep(len(names), thresholds)
    maps = flat = 0
    for img_id, record in tqdm(read_cam_records(cam_dir, ids, made_by), total=len(ids),
                               desc=f"eval {os.path.basename(cam_dir)}"):
        gt = spec.load_gt(img_id, image_size=image_size(spec, img_id))
        check_cam_record(record, img_id, spec.num_classes, gt.shape, cam_dir)
        score, fg_class = seed_scores(record, gt.shape)
        sweep.update(gt, score, fg_class)
        maps += len(record["keys"])
        if len(record["keys"]):  # an image without labels (COCO's unannotated ones) has no class map
            flat += int((record["high_res"].reshape(len(record["keys"]), -1).max(axis=1) <= 0).sum())

    per_threshold = [scores_from_confusion(sweep.confusion(j))["miou"] for j in range(len(thresholds))]
    best = int(np.nanargmax(per_threshold))
    results = {"source_dir": cam_dir, "threshold": thresholds[best], "num_images": len(ids),
               **summarize(sweep.confusion(best), names),
               "sweep": {f"{t:.2f}": percent(m) for t, m in zip(thresholds, per_threshold)},
               "all_background_miou": percent(scores_from_confusion(sweep.all_background_confusion())["miou"]),
               "all_zero_class_maps": flat, "class_maps": maps, "warnings": []}
    if maps and flat > maps / 2:
        results["warnings"].append(
            f"{flat} of {maps} class maps are all zero: the classifier barely responds to these images (a "
            f"degenerate or untrained classifier makes RIB look like it did nothing)")
    if len(thresholds) > 1 and best in (0, len(thresholds) - 1):
        edge = "lower" if best == 0 else "upper"
        results["warnings"].append(
            f"the best threshold {thresholds[best]:.2f} is the {edge} edge of the sweep: widen --cam_eval_sweep "
            f"(now {','.join(f'{v:g}' for v in args.cam_eval_sweep)})")
    for warning in results["warnings"]:
        log.warning("eval_cam (%s): %s", os.path.basename(cam_dir), warning)
    if crf:
        results["crf"] = evaluate_crf(spec, cam_dir, ids, thresholds[best], names, made_by)
    return results


def image_size(spec, img_id):
    """(H, W) of the image from its header (no decoding): the mask must match it."""
    from PIL import Image
    with Image.open(spec.image_path(img_id)) as img:
        return img.size[1], img.size[0]


def evaluate_crf(spec, cam_dir, ids, threshold, names, made_by):
    """Seeds refined by dense CRF (IRN's crf_inference_label on the seed labels), at one threshold."""
    from misc.crf import crf_inference_label
    confusion = ConfusionMatrix(len(names))
    for img_id in tqdm(ids, desc="eval CRF seeds"):
        record = load_cam_npz(cam_file(cam_dir, img_id), made_by)
        keys = record["keys"]
        if len(keys):
            compact = np.pad(record["high_res"], ((1, 0), (0, 0), (0, 0)), constant_values=threshold).argmax(0)
            refined = crf_inference_label(load_image_rgb(spec.image_path(img_id)), compact, len(keys) + 1)
            pred = np.concatenate([[0], keys + 1])[refined]
        else:
            pred = np.zeros(spec.load_gt(img_id).shape, np.int64)
        confusion.update(spec.load_gt(img_id), pred)
    return {"threshold": threshold, **summarize(confusion.mat, names)}


def results_markdown(results, title):
    lines = [f"# {title}\n", markdown_table(
        ["mIoU", "threshold", "precision", "recall", "F1", "images", "all-background mIoU"],
        [[results["miou"], f"{results['threshold']:.2f}", results["precision"], results["recall"], results["f1"],
          results["num_images"], results["all_background_miou"]]])]
    if results.get("warnings"):
        lines += ["\n" + "".join(f"> warning: {w}\n" for w in results["warnings"])]
    if "crf" in results:
        c = results["crf"]
        lines += ["\n## With dense CRF\n", markdown_table(["mIoU", "precision", "recall", "F1"],
                                                          [[c["miou"], c["precision"], c["recall"], c["f1"]]])]
    lines += ["\n## Per-class IoU\n", markdown_table(["class", "IoU"], list(results["per_class_iou"].items())),
              "\n## Background threshold sweep\n", markdown_table(["threshold", "mIoU"],
                                                                  list(results["sweep"].items()))]
    return "".join(lines)


def save_pictures(spec, cam_dir, ids, threshold, out_dir, made_by):
    """image | CAM (max over classes) | seed | ground truth, side by side."""
    palette = np.array(imutils.color_palette(), dtype=np.uint8).reshape(-1, 3)
    for img_id in ids:
        img = load_image_rgb(spec.image_path(img_id))
        record = load_cam_npz(cam_file(cam_dir, img_id), made_by)
        cam = record["high_res"].max(axis=0) if len(record["keys"]) else np.zeros(img.shape[:2], np.float32)
        panels = [img, imutils.colorize_cam(img, cam), palette[seed_prediction(record, threshold)],
                  palette[np.clip(spec.load_gt(img_id), 0, 255)]]
        path = os.path.join(out_dir, img_id + ".png")
        save_png(path, np.concatenate(panels, axis=1))


def run(args):
    """Evaluate --eval_cam_source ('cam', 'rib', or 'both'); returns {source: results}."""
    spec = build_spec(args)
    ids = load_id_list(args.eval_list, "--eval_list")
    sources = ("cam", "rib") if args.eval_cam_source == "both" else (args.eval_cam_source,)
    return {source: evaluate_source(args, spec, ids, source) for source in sources}


def evaluate_source(args, spec, ids, source):
    cam_dir = source_dir(args, source)
    results = evaluate_cam_dir(args, cam_dir, ids, spec, CAM_SOURCE_STEPS[source], crf=args.eval_crf)
    results["source"] = source
    results["dataset"] = spec.name
    results["made_by"] = resume.describe(cam_dir)
    results["run"] = resume.run_info(args)
    base = os.path.join(args.result_dir, f"eval_cam_{source}")
    save_json(base + ".json", results)
    save_text(base + ".md", results_markdown(results, f"Seed evaluation ({source}, {len(ids)} images)"))
    if args.save_cam_png > 0:
        save_pictures(spec, cam_dir, ids[:args.save_cam_png], results["threshold"], base + "_png",
                      CAM_SOURCE_STEPS[source])
    log.info("seed mIoU (%s) %.2f at threshold %.2f; precision %.2f recall %.2f F1 %.2f%s -> %s.json",
             source, results["miou"], results["threshold"], results["precision"] or 0, results["recall"] or 0,
             results["f1"] or 0,
             f"; with CRF {results['crf']['miou']:.2f}" if "crf" in results else "", base)
    print(results_markdown(results, f"Seed evaluation ({source})").split("\n## Per-class")[0])
    return results
