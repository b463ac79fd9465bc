"""Step make_sem_seg: pseudo masks by IRN's random walk of the CAM inside IRNet's class boundaries.

For each image of --infer_list:
1. boundary B (stride 4): IRNet on [image, flipped image], the pair zero-padded to at least --sem_seg_pad_to
   (VOC preset 'crop': --irn_crop_size, as IRN pads VOC images to its 512 training crop; COCO preset 0: no
   padding, as the official COCO code; larger images are never cropped), sigmoid of the mean logit;
2. affinity of pixels within radius 5: 1 - max of B along their path; T = column-normalised aff**--beta (10);
3. seeds = cam**--sem_seg_power (1.3; RIB) * (1 - B), from the stride-4 `cam` of result/cam or result/cam_rib,
   one map per image class, no background map (as IRN: the background comes from the threshold below);
4. walk = seeds @ T**(2**--exp_times) (2^8 = 256 steps), computed as 256 stencil products instead of IRN's dense
   (hw)^2 squaring (net/irn_affinity.py; same result, ~8 MB instead of ~2 GB for a 500x375 image);
5. upsample x4 (bilinear), crop to H x W, divide by the global max, background plane = --sem_seg_bg_thres (0.27),
   argmax, map through the image's classes.
Writes result/sem_seg/<id>.png (uint8 0..C) and, with --save_palette, <id>_palette.png, and the walk's confidence
result/sem_seg_score/<id>.png: uint8 round(255 x max over the image's classes of the walk / its global max), the
value step 5 compares with the background threshold (make_seg_labels' round-one rule reads it). One worker per
GPU (and torchrun shards), --num_workers processes on CPU; finished images are skipped.
"""
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from misc import dist, imutils, resume
from misc.cams import cam_dir as source_dir, check_cam_files, images_with_cams
from misc.datasets import build_spec, load_id_list
from misc.errors import DataError
from misc.fileio import PseudoMaskFiles, check_writable_dir, load_checkpoint
from misc.imutils import scale_pyramid
from misc.torchutils import autocast, bind_worker, to_device
from net import irn_affinity
from net.resnet50_irn import load_irnet

log = logging.getLogger(__name__)

WALK_RADIUS = 5  # IRN's radius for the random walk (training uses 10)


def output_files(args):
    return PseudoMaskFiles(args.sem_seg_out_dir, args.sem_seg_score_dir, args.save_palette)


def pseudo_mask(cams, keys, edge, size, args, lean=True, with_score=False):
    """Random-walk label map (H, W) int64 in 0..C from stride-4 cams (n, h, w) and the boundary edge (h, w); with
    with_score, also the uint8 score map (see walk_to_labels)."""
    if len(keys) == 0:
        return walk_to_labels(None, keys, size, args.sem_seg_bg_thres, with_score)
    cams = cams.clamp(min=0).pow(args.sem_seg_power)  # CAMs are ReLU'd; the clamp guards a fractional power
    walk = irn_affinity.propagate_to_edge(cams, edge, radius=WALK_RADIUS, beta=args.beta, exp_times=args.exp_times,
                                          lean=lean)
    return walk_to_labels(walk, keys, size, args.sem_seg_bg_thres, with_score)


def walk_to_labels(walk, keys, size, bg_thres, with_score=False):
    """(n, 1, h, w) walk -> (H, W) labels: x4 bilinear, crop, divide by the global max, background plane, argmax.
    with_score: (labels, uint8 round(255 x max over classes of the normalised walk)), the value the background
    threshold is compared with."""
    up = None if walk is None or len(keys) == 0 else \
        F.interpolate(walk, scale_factor=4, mode="bilinear", align_corners=False)[:, 0, :size[0], :size[1]]
    peak = None if up is None else up.max()
    if peak is None or not peak > 0:  # all-zero CAMs: nothing to propagate, everything is background
        labels = np.zeros(size, dtype=np.int64)
        return (labels, np.zeros(size, dtype=np.uint8)) if with_score else labels
    normed = up / peak
    scores = F.pad(normed, (0, 0, 0, 0, 1, 0), value=bg_thres)
    labels = np.concatenate([[0], np.asarray(keys) + 1])[scores.argmax(dim=0).cpu().numpy()]
    if not with_score:
        return labels
    return labels, (normed.amax(dim=0) * 255).round().to(torch.uint8).cpu().numpy()


def pad_size(args):
    """The side IRNet's input is padded to (0: none)."""
    return args.irn_crop_size if args.sem_seg_pad_to == "crop" else args.sem_seg_pad_to


def _work(worker_idx, ids, device, args):
    if not ids:
        return
    bind_worker(device, max(1, args.num_workers))
    spec = build_spec(args)
    cam_dir = source_dir(args, args.ir_cam_source)
    model = load_irnet(args.irn_weights_path, device)
    channels_last = str(device).startswith("cuda") and args.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    palette = imutils.color_palette()
    files = output_files(args)
    with torch.inference_mode():
        for img_id, img, record in images_with_cams(spec, ids, cam_dir, args.ir_cam_source, "make_sem_seg",
                                                    worker_idx):
            feat = imutils.strided_size(img.shape[:2], 4)
            if record["cam"].shape[1:] != feat:
                raise DataError(f"{cam_dir}/{img_id}.npz: cam is {record['cam'].shape[1:]}, expected the stride-4 "
                                f"size {feat} of the {img.shape[:2]} image")
            pair = to_device(torch.from_numpy(scale_pyramid(img, (1.0,))[0]), device, channels_last)
            with autocast(device, args.amp):
                edge = model.boundary_map(pair, pad_to=pad_size(args)).float()
            cams = torch.from_numpy(record["cam"]).to(device)
            mask, score = pseudo_mask(cams, record["keys"], edge, img.shape[:2], args, with_score=True)
            files.write(img_id, mask, score, palette)


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    cam_dir = source_dir(args, args.ir_cam_source)
    check_writable_dir(args.sem_seg_out_dir, "--work_dir")
    resume.prepare(args, "make_sem_seg", args.sem_seg_out_dir,
                   {"cam_source": args.ir_cam_source, "beta": args.beta, "exp_times": args.exp_times,
                    "sem_seg_power": args.sem_seg_power, "sem_seg_bg_thres": args.sem_seg_bg_thres,
                    "pad_to": pad_size(args)},
                   inputs=[("cams", cam_dir, "dir"), ("irnet", args.irn_weights_path, "file")],
                   extra_outputs=[(args.sem_seg_score_dir, "dir")])
    files = output_files(args)
    todo = resume.pending(ids, files.paths)
    spec.check_ids(todo, "--infer_list", need_labels=False)
    devices = dist.image_workers(args.device, args.num_workers, len(todo))
    if todo:
        check_cam_files(cam_dir, todo, args.ir_cam_source)
        if len(devices) > 1:  # fail before spawning (one worker runs here and loads it first)
            load_checkpoint(args.irn_weights_path, "IRNet checkpoint", made_by="train_irn")
    log.info("make_sem_seg from %s (power %.2f, beta %g, 2^%d steps, bg %.2f): %d of %d images to do "
             "(%d already done)", cam_dir, args.sem_seg_power, args.beta, args.exp_times, args.sem_seg_bg_thres,
             len(todo), len(ids), len(ids) - len(todo))
    start = time.perf_counter()
    if todo:
        dist.run_sharded(_work, todo, args, devices)
    elapsed = time.perf_counter() - start
    log.info("make_sem_seg: %d images in %.1f s (%.2f s/image)", len(todo), elapsed, elapsed / max(len(todo), 1))
    return len(todo)
