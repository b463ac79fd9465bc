"""Step infer_deeplab: segmentation of --seg_infer_list (VOC val by default) with the trained DeepLab.

The re-trained model (sess/deeplab_retrain.pth) when re-training is on for this run and it exists, else the
round-one model (sess/deeplab.pth). Per image (deeplab-pytorch's test): the full-resolution image, MSC max over
--seg_test_scales (1.0, 0.75, 0.5), the flipped image's logits averaged in with --seg_test_flip (off, as
deeplab-pytorch), bilinear upsampling, softmax, and with --seg_crf the dense CRF (10 iterations, Gaussian sxy 1 /
compat 3, bilateral sxy 67 / srgb 3 / compat 4) on the raw RGB image. The network runs on the GPU (one process
per GPU and torchrun rank), the CRF in --num_workers CPU processes. Writes result/deeplab_pred/<id>.png (uint8
0..C), <id>_palette.png and, with --seg_save_logits, <id>_prob.npz (`prob`: float16 (C+1, H, W) pre-CRF class
probabilities). Finished images are skipped.
"""
import functools
import logging
import os
import time

import numpy as np

from deeplab.model import load_deeplab
from deeplab.predict import PredictionPlan, crf_settings, predict_images
from misc import dist, resume
from misc.datasets import build_spec, load_id_list
from misc.errors import DataError
from misc.fileio import atomic_path, check_writable_dir, save_png
from misc.imutils import color_palette

log = logging.getLogger(__name__)


def retraining_on(args):
    return bool(args.seg_retrain) and not args.seg_saliency_dir


def model_choice(args):
    """(checkpoint path, step that makes it): the re-trained model when re-training is on and it exists."""
    if retraining_on(args) and os.path.isfile(args.deeplab_retrain_weights_path):
        return args.deeplab_retrain_weights_path, "retrain_deeplab"
    return args.deeplab_weights_path, "train_deeplab"


def output_paths(pred_dir, save_prob, img_id):
    base = os.path.join(pred_dir, img_id)
    return {"pred": base + ".png", "palette": base + "_palette.png", "prob": base + "_prob.npz" if save_prob else None}


def output_files(args, img_id):
    """The files of a finished image (resume.pending)."""
    return [p for p in output_paths(args.deeplab_pred_dir, args.seg_save_logits, img_id).values() if p]


def write_prediction(pred_dir, save_prob, img_id, pred, probs):
    """The files of one image, the label map (which marks it done) last."""
    paths = output_paths(pred_dir, save_prob, img_id)
    if paths["prob"]:
        with atomic_path(paths["prob"]) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, prob=probs.astype(np.float16))
    save_png(paths["palette"], pred, palette=color_palette())
    save_png(paths["pred"], pred)


def settings(args, model_path):
    return {"model": os.path.basename(model_path), "test_scales": list(args.seg_test_scales),
            "test_flip": args.seg_test_flip, "crf": crf_settings(args) if args.seg_crf else None,
            "save_logits": args.seg_save_logits}


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.seg_infer_list, "--seg_infer_list")
    model_path, made_by = model_choice(args)
    if retraining_on(args) and made_by == "train_deeplab":
        log.warning("infer_deeplab: re-training is on but %s does not exist; predicting with the round-one model "
                    "%s", args.deeplab_retrain_weights_path, model_path)
    if not os.path.isfile(model_path):
        raise DataError(f"DeepLab checkpoint {model_path} does not exist: run the train_deeplab step first "
                        f"(--only train_deeplab)")
    check_writable_dir(args.deeplab_pred_dir, "--work_dir")
    resume.prepare(args, "infer_deeplab", args.deeplab_pred_dir, settings(args, model_path),
                   inputs=[("deeplab", model_path, "file")])
    todo = resume.pending(ids, functools.partial(output_files, args))
    log.info("infer_deeplab with %s (scales %s, flip %s, CRF %s): %d of %d images to do", model_path,
             ",".join(f"{s:g}" for s in args.seg_test_scales), args.seg_test_flip, args.seg_crf, len(todo), len(ids))
    if not todo:
        return 0
    spec.check_ids(todo, "--seg_infer_list", need_labels=False)
    load_deeplab(model_path, spec.num_classes + 1, args.seg_arch, made_by)  # fail before spawning
    start = time.perf_counter()
    plan = PredictionPlan(model_path, made_by, args.seg_test_scales, args.seg_test_flip,
                          crf_settings(args) if args.seg_crf else None, args.num_workers, "infer_deeplab",
                          functools.partial(write_prediction, args.deeplab_pred_dir, args.seg_save_logits))
    predict_images(args, todo, plan)
    dist.barrier()  # under torchrun eval_deeplab reads every rank's predictions
    elapsed = time.perf_counter() - start
    log.info("infer_deeplab: %d images in %.1f s (%.2f s/image)", len(todo), elapsed, elapsed / len(todo))
    return len(todo)
