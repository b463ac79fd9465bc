"""Step make_psa_sem_seg: pseudo masks by PSA's random walk of the CAM on AffinityNet's affinities (PSA's
infer_aff.py).

For each image of --infer_list:
1. features: AffinityNet on the image zero-padded (= mean colour) at the bottom/right to multiples of 8, one
   scale, no flip -> (448, ceil(H/8), ceil(W/8));
2. affinity of the pairs within radius 5: exp(-mean |f_i - f_j|), raised to --psa_beta (8); T = the affinity
   with self-affinity 1, columns normalised;
3. scores: [(1 - max CAM)^--psa_alpha (16), CAMs] from the full-resolution `high_res` of result/cam or
   result/cam_rib (--psa_cam_source), zero-padded to multiples of 8 and averaged over 8x8 blocks;
4. walk = scores T^(2^--psa_logt) (2^8 = 256 steps), as 256 stencil products instead of PSA's dense (hw)^2
   squaring (net/psa_affinity.py; same result, no (hw)^2 matrix);
5. bilinear upsampling x8, crop to H x W, argmax over [background, image classes].
Writes result/sem_seg_psa/<id>.png (uint8 0..C) and, with --save_palette, <id>_palette.png, and
result/sem_seg_psa_score/<id>.png: uint8 round(255 x max over the image's classes of the walk / its global max),
the confidence make_sem_seg writes for IRN (make_seg_labels' round-one rule reads it; PSA has no such score).
One worker per GPU (and torchrun shards), --num_workers processes on CPU; finished images are skipped.
"""
import logging
import time

import torch
import torch.nn.functional as F

from misc import dist, imutils, resume
from misc.cams import cam_dir as source_dir, check_cam_files, images_with_cams
from misc.datasets import build_spec, load_id_list
from misc.fileio import PseudoMaskFiles, check_writable_dir
from misc.torchutils import autocast, bind_worker, to_device
from net import psa_affinity
from net.affinitynet import load_affinity_net

log = logging.getLogger(__name__)


def output_files(args):
    return PseudoMaskFiles(args.sem_seg_psa_out_dir, args.sem_seg_psa_score_dir, args.save_palette)


@torch.no_grad()
def affinity_features(model, img, device, channels_last=False, amp=True):
    """AffinityNet features (448, ceil(H/8), ceil(W/8)) float32 of a uint8 (H, W, 3) image, padded with zeros
    after normalisation (PSA's infer_aff.py)."""
    h, w = img.shape[:2]
    x = torch.from_numpy(imutils.hwc_to_chw(imutils.normalize(img)))[None]
    x = F.pad(x, (0, -w % psa_affinity.FEATURE_STRIDE, 0, -h % psa_affinity.FEATURE_STRIDE))
    with autocast(device, amp):
        return model(to_device(x, device, channels_last))[0].float()


def _work(worker_idx, ids, device, args):
    if not ids:
        return
    bind_worker(device, max(1, args.num_workers))
    spec = build_spec(args)
    cam_dir = source_dir(args, args.psa_cam_source)
    model = load_affinity_net(args.psa_aff_weights_path, args.psa_backbone, spec.num_classes, device)
    channels_last = str(device).startswith("cuda") and args.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    palette = imutils.color_palette()
    files = output_files(args)
    with torch.inference_mode():
        for img_id, img, record in images_with_cams(spec, ids, cam_dir, args.psa_cam_source, "make_psa_sem_seg",
                                                    worker_idx):
            features = affinity_features(model, img, device, channels_last, args.amp)
            high_res = torch.from_numpy(record["high_res"]).to(device)
            mask, score = psa_affinity.psa_pseudo_mask(high_res, record["keys"], features, img.shape[:2],
                                                       args.psa_alpha, args.psa_beta, args.psa_logt, with_score=True)
            files.write(img_id, mask, score, palette)


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    cam_dir = source_dir(args, args.psa_cam_source)
    check_writable_dir(args.sem_seg_psa_out_dir, "--work_dir")
    resume.prepare(args, "make_psa_sem_seg", args.sem_seg_psa_out_dir,
                   {"cam_source": args.psa_cam_source, "alpha": args.psa_alpha, "beta": args.psa_beta,
                    "logt": args.psa_logt, "backbone": args.psa_backbone},
                   inputs=[("cams", cam_dir, "dir"), ("affinitynet", args.psa_aff_weights_path, "file")],
                   extra_outputs=[(args.sem_seg_psa_score_dir, "dir")])
    files = output_files(args)
    todo = resume.pending(ids, files.paths)
    spec.check_ids(todo, "--infer_list", need_labels=False)
    if todo:
        check_cam_files(cam_dir, todo, args.psa_cam_source, flag="--psa_cam_source")
        load_affinity_net(args.psa_aff_weights_path, args.psa_backbone, spec.num_classes)  # fail before spawning
    log.info("make_psa_sem_seg from %s (alpha %g, beta %g, 2^%d steps): %d of %d images to do (%d already done)",
             cam_dir, args.psa_alpha, args.psa_beta, args.psa_logt, len(todo), len(ids), len(ids) - len(todo))
    start = time.perf_counter()
    if todo:
        dist.run_sharded(_work, todo, args, dist.image_workers(args.device, args.num_workers, len(todo)))
    elapsed = time.perf_counter() - start
    log.info("make_psa_sem_seg: %d images in %.1f s (%.2f s/image)", len(todo), elapsed,
             elapsed / max(len(todo), 1))
    return len(todo)
