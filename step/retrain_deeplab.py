"""Step retrain_deeplab: the second round of appendix S1 (VOC; not for RIB-Sal or COCO).

1. The round-one model (sess/deeplab.pth) predicts every image of --seg_train_list (MSC over --seg_test_scales,
   --seg_test_flip, dense CRF when --seg_retrain_crf), and the ignored (255) pixels of its round-one label are
   filled with the prediction: result/seg_label_retrain/<id>.png (no 255 left; other pixels unchanged).
2. A new model is trained on the filled labels with the round-one settings, from the round-one init
   (--seg_retrain_init imagenet, i.e. --seg_backbone_weights) or from the round-one model (round1): the paper does
   not say which. Writes sess/deeplab_retrain.pth (resumable like train_deeplab).
"""
import functools
import logging
import os
import time

import numpy as np

from deeplab.model import load_deeplab
from deeplab.predict import PredictionPlan, crf_settings, predict_images
from deeplab.train import train_segmentation
from misc import dist, resume
from misc.datasets import IGNORE, build_spec, load_id_list
from misc.fileio import check_label_files, check_writable_dir, load_label_png, save_png

log = logging.getLogger(__name__)


def write_filled_label(round1_dir, filled_dir, img_id, pred, probs):
    """The filled label of one image: the round-one label, its ignored pixels taken from the prediction."""
    round1 = load_label_png(os.path.join(round1_dir, img_id + ".png"))
    save_png(os.path.join(filled_dir, img_id + ".png"), np.where(round1 == IGNORE, pred, round1).astype(np.uint8))


def fill_labels(args):
    """Step 1: result/seg_label_retrain from the round-one labels and the round-one model's predictions."""
    spec = build_spec(args)
    ids = load_id_list(args.seg_train_list, "--seg_train_list")
    out_dir = args.seg_label_retrain_dir
    check_writable_dir(out_dir, "--work_dir")
    resume.prepare(args, "retrain_deeplab", out_dir,
                   {"test_scales": list(args.seg_test_scales), "test_flip": args.seg_test_flip,
                    "crf": crf_settings(args) if args.seg_retrain_crf else None},
                   inputs=[("round1_labels", args.seg_label_dir, "dir"),
                           ("round1_model", args.deeplab_weights_path, "file")],
                   extra_outputs=[(args.deeplab_retrain_weights_path, "file"),
                                  (os.path.splitext(args.deeplab_retrain_weights_path)[0] + ".resume.pth",
                                   "file")])
    todo = resume.pending(ids, lambda i: os.path.join(out_dir, i + ".png"))
    if not todo:
        return 0
    spec.check_ids(todo, "--seg_train_list", need_labels=False)
    check_label_files(args.seg_label_dir, todo, "round-one label", "make_seg_labels")
    load_deeplab(args.deeplab_weights_path, spec.num_classes + 1, args.seg_arch)  # fail before spawning
    log.info("retrain_deeplab: filling the ignored pixels of %d round-one labels with the predictions of %s "
             "(scales %s, flip %s, CRF %s)", len(todo), args.deeplab_weights_path,
             ",".join(f"{s:g}" for s in args.seg_test_scales), args.seg_test_flip, args.seg_retrain_crf)
    start = time.perf_counter()
    plan = PredictionPlan(args.deeplab_weights_path, "train_deeplab", args.seg_test_scales, args.seg_test_flip,
                          crf_settings(args) if args.seg_retrain_crf else None, args.num_workers,
                          "retrain_deeplab fill", functools.partial(write_filled_label, args.seg_label_dir, out_dir))
    predict_images(args, todo, plan)
    dist.barrier()  # under torchrun every rank trains on all filled labels
    log.info("retrain_deeplab: %d labels filled in %.1f s", len(todo), time.perf_counter() - start)
    return len(todo)


def run(args):
    fill_labels(args)
    return train_segmentation(args, "retrain_deeplab", args.seg_label_retrain_dir,
                              args.deeplab_retrain_weights_path, label_step="retrain_deeplab",
                              init="round1" if args.seg_retrain_init == "round1" else args.seg_backbone_weights,
                              init_path=args.deeplab_weights_path)
