"""Step make_cam: the plain CAM baseline (IRN's make_cam) for --infer_list.

Multi-scale (--cam_scales) + flip inference of the trained classifier; flip-merged ReLU class maps are resized
and summed over scales, the image's classes kept and each divided by its max. Writes result/cam/<id>.npz
(the CAM file format of misc/fileio.py). One worker per GPU / torchrun shard; finished images are skipped.
"""
import logging
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from misc import dist, resume
from misc.cams import cam_file, multiscale_cam_maps, resize_and_sum, write_cam_record
from misc.datasets import MultiScaleDataset, build_spec, load_id_list
from misc.fileio import check_writable_dir
from misc.torchutils import autocast
from net.resnet50_cam import load_classifier

log = logging.getLogger(__name__)


def _work(worker_idx, ids, device, args):
    if not ids:
        return
    spec = build_spec(args)
    model = load_classifier(args.cam_weights_path, spec.num_classes, device)
    channels_last = str(device).startswith("cuda") and args.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # batch_size=None: one image per item, no collation (its scales differ in size)
    loader = DataLoader(MultiScaleDataset(spec, ids, args.cam_scales), batch_size=None, shuffle=False,
                        num_workers=args.num_workers, pin_memory=str(device).startswith("cuda"))
    with torch.inference_mode():
        for pack in tqdm(loader, desc=f"make_cam[{worker_idx}]", position=worker_idx):
            maps = multiscale_cam_maps(model, pack["img"], device, channels_last,
                                       lambda: autocast(device, args.amp))
            strided, high_res = resize_and_sum(maps, tuple(pack["size"]))
            write_cam_record(cam_file(args.cam_out_dir, pack["name"]), strided, high_res, pack["label"], maps,
                             args.cam_format)


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    check_writable_dir(args.cam_out_dir, "--work_dir")
    resume.prepare(args, "make_cam", args.cam_out_dir, {"cam_scales": list(args.cam_scales)},
                   inputs=[("classifier", args.cam_weights_path, "file")])
    todo = resume.pending(ids, lambda i: cam_file(args.cam_out_dir, i))
    spec.check_ids(todo, "--infer_list")
    devices = dist.local_devices(args.device, 0)
    if todo and len(devices) > 1:  # fail now, not in every worker (one worker runs here and loads it first)
        load_classifier(args.cam_weights_path, spec.num_classes)
    log.info("make_cam: %d of %d images to do (%d already done)", len(todo), len(ids), len(ids) - len(todo))
    start = time.perf_counter()
    dist.run_sharded(_work, todo, args, devices)
    elapsed = time.perf_counter() - start
    log.info("make_cam: %d images in %.1f s (%.3f s/image)", len(todo), elapsed, elapsed / max(len(todo), 1))
