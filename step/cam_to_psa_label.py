"""Step cam_to_psa_label: AffinityNet's training labels from CAMs (PSA's infer_cls.py --out_la_crf / --out_ha_crf
and the label combination of its voc12/data.py).

For each image of --infer_list, from the `high_res` maps of result/cam or result/cam_rib (--psa_cam_source):
- low-alpha CRF: dense CRF (PSA's parameters) on [(1 - max CAM)^--psa_low_alpha (4), CAMs]; its foreground is
  confident (a low power leaves a large background score);
- high-alpha CRF: the same with --psa_high_alpha (32); its background is confident;
- label = the low-alpha CRF's class where it says foreground, 255 where it says background, 0 wherever the
  high-alpha CRF says background (net/psa_affinity.py).
Writes result/psa_label/<id>.png (uint8: 0 background, 1..C classes, 255 unsure). PSA saves both CRF score maps
and combines them per training crop after 8x8 pooling; one combined PNG per image is stored here (docs/psa.md).
CPU work in --num_workers processes (0 or 1: in-process); images whose PNG exists are skipped.
"""
import functools
import logging
import os
import time


from misc import dist, resume
from misc.cams import cam_dir as source_dir, check_cam_files, images_with_cams
from misc.datasets import build_spec, load_id_list
from misc.fileio import check_writable_dir, save_png
from net.psa_affinity import psa_label

log = logging.getLogger(__name__)


def label_path(args, img_id):
    return os.path.join(args.psa_label_out_dir, img_id + ".png")


def _work(worker_idx, ids, device, args):
    if not ids:
        return
    cams = images_with_cams(build_spec(args), ids, source_dir(args, args.psa_cam_source), args.psa_cam_source,
                            "cam_to_psa_label", worker_idx, ahead=2)
    for img_id, img, record in cams:
        save_png(label_path(args, img_id), psa_label(img, record, args.psa_low_alpha, args.psa_high_alpha))


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    cam_dir = source_dir(args, args.psa_cam_source)
    check_writable_dir(args.psa_label_out_dir, "--work_dir")
    resume.prepare(args, "cam_to_psa_label", args.psa_label_out_dir,
                   {"cam_source": args.psa_cam_source, "low_alpha": args.psa_low_alpha,
                    "high_alpha": args.psa_high_alpha}, inputs=[("cams", cam_dir, "dir")])
    todo = resume.pending(ids, functools.partial(label_path, args))
    spec.check_ids(todo, "--infer_list", need_labels=False)
    check_cam_files(cam_dir, todo, args.psa_cam_source, flag="--psa_cam_source")
    log.info("cam_to_psa_label from %s (alpha low %g, high %g): %d of %d images to do (%d already done)", cam_dir,
             args.psa_low_alpha, args.psa_high_alpha, len(todo), len(ids), len(ids) - len(todo))
    start = time.perf_counter()
    if todo:
        dist.run_sharded(_work, todo, args, dist.cpu_workers(args.num_workers, len(todo)))
    elapsed = time.perf_counter() - start
    log.info("cam_to_psa_label: %d images in %.1f s (%.2f s/image)", len(todo), elapsed,
             elapsed / max(len(todo), 1))
    return len(todo)
