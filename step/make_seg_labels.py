"""Step make_seg_labels: the training labels of the segmentation network, for the ids of --seg_train_list.

From the pseudo masks of --refine (result/sem_seg or result/sem_seg_psa, values 0..C) and, for the round-one
rule, the walk's score beside them (result/sem_seg_score/<id>.png, uint8 = round(255 x max over the image's
foreground classes of the walk divided by its global max), the value make_sem_seg compares with 0.27):
- re-training on (--seg_retrain true, appendix S1): the mask's class where score > --seg_retrain_fg (0.3) and the
  mask is foreground, background where score < --seg_retrain_bg (0.2), 255 elsewhere (the comparison is made on the
  stored 1/255 steps: foreground when score_png > 255 x 0.3, background when score_png < 255 x 0.2);
- re-training off: the pseudo mask itself;
- saliency (--seg_saliency_dir, RIB-Sal, Sec. 3.3): the pseudo mask, with 255 where it says foreground but the
  saliency is < --seg_saliency_thres, or says background but the saliency is >= it.
Writes result/seg_label/<id>.png (uint8 0..C, 255 = ignore); existing labels are skipped.
"""
import logging
import os

import numpy as np
from PIL import Image
from tqdm import tqdm

from misc import dist, provenance
from misc.datasets import IGNORE, build_spec, load_id_list
from misc.fileio import DataError, check_writable_dir, load_step_label, save_png

log = logging.getLogger(__name__)

MASK_STEPS = {"irn": "make_sem_seg", "psa": "make_psa_sem_seg"}


def round_one_label(mask, score, fg_thres, bg_thres):
    """Confident pixels of the walk: the mask's class where score > fg_thres (and the mask is foreground), 0 where
    score < bg_thres, 255 elsewhere. mask int (H, W) 0..C; score uint8 (H, W) on the 0..255 scale."""
    score = np.asarray(score, np.float64)
    label = np.full(mask.shape, IGNORE, np.uint8)
    label[score < 255 * bg_thres] = 0
    fg = (score > 255 * fg_thres) & (mask > 0)
    label[fg] = mask[fg]
    return label


def saliency_label(mask, saliency, thres):
    """The pseudo mask with 255 where it disagrees with the saliency map (uint8 0..255, salient >= thres)."""
    salient = np.asarray(saliency) >= thres
    label = np.asarray(mask).astype(np.uint8).copy()
    label[((mask > 0) & ~salient) | ((mask == 0) & salient)] = IGNORE
    return label


def label_rule(args):
    if args.seg_saliency_dir:
        return "saliency"
    return "retrain" if args.seg_retrain else "plain"


def load_saliency(path, img_id, size):
    if not os.path.isfile(path):
        raise DataError(f"--seg_saliency_dir has no saliency map for image {img_id} ({path}); add it or remove the "
                        f"id from --seg_train_list")
    try:
        with Image.open(path) as img:
            img.load()
            sal = np.asarray(img if img.mode == "L" else img.convert("L"), np.uint8)
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise DataError(f"saliency map {path} of --seg_saliency_dir is corrupt or not an image ({e}); replace it "
                        f"with the 0-255 grey PNG of image {img_id}") from None
    if sal.shape != tuple(size):
        raise DataError(f"saliency map {path} is {sal.shape[0]}x{sal.shape[1]} but image {img_id} is "
                        f"{size[0]}x{size[1]}; fix --seg_saliency_dir")
    return sal


def image_size(spec, img_id):
    with Image.open(spec.image_path(img_id)) as img:
        return img.size[1], img.size[0]


def check_inputs(args, ids, rule, made_by):
    """Fail before writing anything when the pseudo masks, scores or saliency maps are missing."""
    mask_dir = args.pseudo_mask_dir
    if not os.path.isdir(mask_dir) or not any(n.endswith(".png") for n in os.listdir(mask_dir)):
        raise DataError(f"the pseudo-mask folder {mask_dir} is missing or empty: run the {made_by} step first "
                        f"(--only {made_by}) on an --infer_list that contains the --seg_train_list ids")
    folders = [(mask_dir, "pseudo mask", made_by)]
    if rule == "retrain":
        folders.append((args.pseudo_score_dir, "walk score",
                        f"{made_by} (masks made before it wrote scores: --overwrite {made_by})"))
    if rule == "saliency":
        if not os.path.isdir(args.seg_saliency_dir):
            raise DataError(f"--seg_saliency_dir {args.seg_saliency_dir} is not a folder; point it at the saliency "
                            f"maps (<id>.png)")
        missing = [i for i in ids if not os.path.isfile(os.path.join(args.seg_saliency_dir, i + ".png"))]
        if missing:
            raise DataError(f"--seg_saliency_dir has no saliency map for image {missing[0]} "
                            f"({os.path.join(args.seg_saliency_dir, missing[0] + '.png')}) nor for "
                            f"{len(missing) - 1} other id(s) of --seg_train_list; add them or remove the ids")
    for folder, what, step in folders:
        missing = [i for i in ids if not os.path.isfile(os.path.join(folder, i + ".png"))]
        if missing:
            raise DataError(f"{len(missing)} of {len(ids)} id(s) of --seg_train_list have no {what} in {folder}, "
                            f"e.g. {missing[0]}: run {step} on an --infer_list that contains them")


def make_label(args, spec, img_id, rule, made_by):
    size = image_size(spec, img_id)
    mask = load_step_label(os.path.join(args.pseudo_mask_dir, img_id + ".png"), img_id, size, made_by,
                           "pseudo mask", spec.num_classes)
    if rule == "plain":
        return mask
    if rule == "saliency":
        sal = load_saliency(os.path.join(args.seg_saliency_dir, img_id + ".png"), img_id, size)
        return saliency_label(mask, sal, args.seg_saliency_thres)
    score = load_step_label(os.path.join(args.pseudo_score_dir, img_id + ".png"), img_id, size, made_by,
                            "walk score")
    return round_one_label(mask, score, args.seg_retrain_fg, args.seg_retrain_bg)


def settings(args):
    rule = label_rule(args)
    out = {"rule": rule, "refine": args.refine}
    if rule == "retrain":
        out.update(fg=args.seg_retrain_fg, bg=args.seg_retrain_bg)
    if rule == "saliency":
        out.update(saliency_dir=os.path.abspath(args.seg_saliency_dir), saliency_thres=args.seg_saliency_thres)
    return out


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.seg_train_list, "--seg_train_list")
    rule = label_rule(args)
    made_by = MASK_STEPS[args.refine]
    check_writable_dir(args.seg_label_dir, "--work_dir")
    provenance.prepare(args, "make_seg_labels", args.seg_label_dir, settings(args),
                       inputs=[("pseudo_masks", args.pseudo_mask_dir, "dir")])
    todo = [i for i in ids if not os.path.isfile(os.path.join(args.seg_label_dir, i + ".png"))]
    if todo:
        spec.check_ids(todo, "--seg_train_list", need_labels=False, check_images=False)
        check_inputs(args, todo, rule, made_by)
    log.info("make_seg_labels (%s rule) from %s: %d of %d images to do", rule, args.pseudo_mask_dir, len(todo),
             len(ids))
    rank, world = dist.torchrun_rank_world()
    ignored = total = 0
    for img_id in tqdm(dist.shard(todo, rank, world), desc="make_seg_labels", disable=rank != 0):
        label = make_label(args, spec, img_id, rule, made_by)
        ignored += int((label == IGNORE).sum())
        total += label.size
        save_png(os.path.join(args.seg_label_dir, img_id + ".png"), label)
    if total:
        log.info("make_seg_labels: %d labels written, %.1f%% of their pixels ignored (255)",
                 len(dist.shard(todo, rank, world)), 100 * ignored / total)
    dist.barrier()  # under torchrun the next step reads every rank's labels
    return len(todo)
