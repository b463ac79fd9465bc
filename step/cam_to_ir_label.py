"""Step cam_to_ir_label: inter-pixel relation labels from CAMs (IRN's cam_to_ir_label, used unchanged by RIB).

For each image of --infer_list, from the `high_res` maps of result/cam or result/cam_rib (--ir_cam_source):
- confident foreground: argmax over [background plane = --conf_fg_thres (0.35), class maps], refined by dense CRF;
- confident background: the same with --conf_bg_thres (0.17), a lower plane, so more pixels are foreground
  (both CRFs share the set-up of the image's pairwise terms: the same labels as two separate CRFs);
- label = the foreground CRF's class where it says foreground, 0 where both CRFs say background, 255 (unsure)
  where only the low-threshold CRF says foreground.
Writes result/ir_label/<id>.png (uint8: 0 background, 1..C classes, 255 unsure). IRN's own thresholds are 0.30 /
0.05; RIB's official run raised them to 0.35 / 0.17. CPU work in --num_workers processes (0 or 1: in-process);
images whose PNG exists are skipped.
"""
import functools
import logging
import os
import time

import numpy as np

from misc import dist, resume
from misc.cams import cam_dir as source_dir, check_cam_files, images_with_cams
from misc.crf import crf_inference_labels
from misc.datasets import build_spec, load_id_list
from misc.fileio import check_writable_dir, save_png

log = logging.getLogger(__name__)


def label_path(args, img_id):
    return os.path.join(args.ir_label_out_dir, img_id + ".png")


def seed_labels(high_res, threshold):
    """argmax over [threshold plane, class maps]: 0 background, 1..n the record's classes."""
    return np.pad(high_res, ((1, 0), (0, 0), (0, 0)), mode="constant", constant_values=threshold).argmax(axis=0)


def ir_label(img, record, fg_thres, bg_thres):
    """The combined label of one image (uint8 H x W)."""
    keys, high_res = record["keys"], record["high_res"]
    if len(keys) == 0:  # no class: everything is confidently background
        return np.zeros(img.shape[:2], dtype=np.uint8)
    # both seeds refined by dense CRF (one set-up of the image's pairwise terms), mapped to 0 / 1..C
    refined = crf_inference_labels(img, [seed_labels(high_res, fg_thres), seed_labels(high_res, bg_thres)],
                                   n_labels=len(keys) + 1)
    fg_conf, bg_conf = (np.concatenate([[0], keys + 1])[r] for r in refined)
    label = fg_conf.copy()
    label[fg_conf == 0] = 255  # not confident foreground: unsure ...
    label[(fg_conf == 0) & (bg_conf == 0)] = 0  # ... unless even the low threshold says background
    return label.astype(np.uint8)


def _work(worker_idx, ids, device, args):
    if not ids:
        return
    cams = images_with_cams(build_spec(args), ids, source_dir(args, args.ir_cam_source), args.ir_cam_source,
                            "cam_to_ir_label", worker_idx, ahead=2)
    for img_id, img, record in cams:
        save_png(label_path(args, img_id), ir_label(img, record, args.conf_fg_thres, args.conf_bg_thres))


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    cam_dir = source_dir(args, args.ir_cam_source)
    check_writable_dir(args.ir_label_out_dir, "--work_dir")
    resume.prepare(args, "cam_to_ir_label", args.ir_label_out_dir,
                   {"cam_source": args.ir_cam_source, "conf_fg_thres": args.conf_fg_thres,
                    "conf_bg_thres": args.conf_bg_thres}, inputs=[("cams", cam_dir, "dir")])
    todo = resume.pending(ids, functools.partial(label_path, args))
    spec.check_ids(todo, "--infer_list", need_labels=False)
    check_cam_files(cam_dir, todo, args.ir_cam_source)
    log.info("cam_to_ir_label from %s (fg %.2f, bg %.2f): %d of %d images to do (%d already done)", cam_dir,
             args.conf_fg_thres, args.conf_bg_thres, len(todo), len(ids), len(ids) - len(todo))
    start = time.perf_counter()
    dist.run_sharded(_work, todo, args, dist.cpu_workers(args.num_workers, len(todo)))
    elapsed = time.perf_counter() - start
    log.info("cam_to_ir_label: %d images in %.1f s (%.2f s/image)", len(todo), elapsed,
             elapsed / max(len(todo), 1))
    return len(todo)
