"""Turning per-scale class maps into the saved CAM record (shared by make_cam and the RIB step)."""
import contextlib
import os

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from misc import imutils
from misc.errors import DataError
from misc.fileio import load_cam_npz, load_image_rgb, save_cam_npz
from misc.torchutils import to_device
from net.resnet50_cam import flip_merged_cam

# The two CAM sources later steps read (--eval_cam_source, --ir_cam_source) and the step that writes each.
CAM_SOURCE_STEPS = {"cam": "make_cam", "rib": "rib"}


def cam_dir(args, source):
    """Folder of the CAMs of `source`: result/cam (make_cam) or result/cam_rib (rib)."""
    return args.cam_out_dir if source == "cam" else args.rib_out_dir


def cam_file(cam_dir, img_id):
    """The CAM file of an image in a CAM folder (make_cam's, rib's, rib's per-k folders)."""
    return os.path.join(cam_dir, img_id + ".npz")


def check_cam_files(cam_dir, ids, source, flag="--ir_cam_source"):
    """Fail before any work when CAMs are missing, naming the first id, the step that makes them and the flag
    that chooses the source."""
    missing = [i for i in ids if not os.path.isfile(cam_file(cam_dir, i))]
    if missing:
        step = CAM_SOURCE_STEPS[source]
        raise DataError(f"{len(missing)} of {len(ids)} CAM file(s) are missing in {cam_dir}, e.g. for image "
                        f"{missing[0]} ({cam_file(cam_dir, missing[0])}): run the {step} step "
                        f"(--only {step}) on these ids first, or choose the other {flag}")


def images_with_cams(spec, ids, cam_dir, source, desc, worker_idx=0, ahead=0):
    """(img_id, RGB image, checked CAM record) of each id, with a progress bar: the loop of the steps that turn
    CAMs into labels and masks (cam_to_ir_label, cam_to_psa_label, make_sem_seg, make_psa_sem_seg). The records
    come from read_cam_records; `ahead` > 0 reads them ahead on a thread, for callers whose own work is numpy
    and the CRF (a PyTorch network in the calling thread keeps ahead=0: the decoder sets its thread's PyTorch
    thread count, which must not change under a running network)."""
    made_by = CAM_SOURCE_STEPS[source]
    records = read_cam_records(cam_dir, ids, made_by, ahead)
    for img_id, record in tqdm(records, total=len(ids), desc=f"{desc}[{worker_idx}]", position=worker_idx):
        img = load_image_rgb(spec.image_path(img_id))
        check_cam_record(record, img_id, spec.num_classes, img.shape[:2], cam_dir)
        yield img_id, img, record


def read_cam_records(cam_dir, ids, made_by, ahead=2):
    """(id, record) of each id in order, read `ahead` records in advance on a thread: decoding a compact record
    (misc/cam_format.py: zlib, PyTorch's resize, a checksum; all release the GIL) overlaps the caller's work on
    the previous one. Memory stays bounded by `ahead` records; ahead=0 reads each one in the calling thread when
    it is needed. The one reader of every CAM consumer (eval_cam and images_with_cams)."""
    if ahead <= 0:
        for img_id in ids:
            yield img_id, load_cam_npz(cam_file(cam_dir, img_id), made_by)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        pending = deque()
        for img_id in ids:
            pending.append((img_id, pool.submit(load_cam_npz, cam_file(cam_dir, img_id), made_by)))
            if len(pending) > ahead:
                done_id, future = pending.popleft()
                yield done_id, future.result()
        while pending:
            done_id, future = pending.popleft()
            yield done_id, future.result()


def check_cam_record(record, img_id, num_classes, image_size, cam_dir):
    """Class indices within the dataset and maps of the image's size, else a DataError naming the id."""
    keys = record["keys"]
    if len(keys) and (keys.min() < 0 or keys.max() >= num_classes):
        raise DataError(f"{cam_dir}/{img_id}.npz has class index {keys.max()} but the dataset has {num_classes} "
                        f"classes: CAMs of another dataset (--dataset)?")
    if record["high_res"].shape[1:] != tuple(image_size):
        raise DataError(f"{cam_dir}/{img_id}.npz: high_res is {record['high_res'].shape[1:]} but the image is "
                        f"{tuple(image_size)}; were the CAMs made from other images?")


def multiscale_cam_maps(model, pyramid, device, channels_last=False, amp_context=None):
    """Flip-merged ReLU maps (C, h_s, w_s) of each scale of `pyramid` (list of (2, 3, h, w) tensors)."""
    maps = []
    for pair in pyramid:
        x = to_device(pair, device, channels_last)
        with amp_context() if amp_context is not None else contextlib.nullcontext():
            raw = model.class_maps(x)
        # flip-merged in fp32 (as RIB's CAMs): under bf16 autocast the image + flip sum would round to bf16
        maps.append(flip_merged_cam(raw.float()))
    return maps


def resize_and_sum(maps, size):
    """Sum over scales of bilinearly resized maps (IRN make_cam): the stride-4 map (C, ceil(H/4), ceil(W/4))
    and the full-resolution map (C, H, W), upsampled to the stride-16 cover of the image and cropped."""
    strided = imutils.strided_size(size, 4)
    up = imutils.strided_up_size(size, 16)
    h, w = size
    strided_sum = sum(F.interpolate(m[None], strided, mode="bilinear", align_corners=False)[0] for m in maps)
    high_res_sum = sum(F.interpolate(m[None], up, mode="bilinear", align_corners=False)[0, :, :h, :w]
                       for m in maps)
    return strided_sum, high_res_sum


def normalize_per_class(maps, eps=1e-5):
    """Divide each class map by its spatial max (+eps, as IRN), so every map is <= 1."""
    return maps / (maps.flatten(1).amax(dim=1)[:, None, None] + eps)


def cam_record(strided_sum, high_res_sum, label):
    """Keep the image's classes (keys) and normalise: the arrays of the CAM file format."""
    keys = torch.nonzero(label > 0, as_tuple=False).flatten()
    strided_sum = strided_sum.to(keys.device)
    high_res_sum = high_res_sum.to(keys.device)
    strided = normalize_per_class(strided_sum[keys])
    high_res = normalize_per_class(high_res_sum[keys])
    return keys.cpu().numpy(), strided.cpu().numpy(), high_res.cpu().numpy()


def write_cam_record(path, strided_sum, high_res_sum, label, maps=None, fmt="compact"):
    """Write the record of one image; `maps`: the per-scale maps that resize_and_sum summed (all classes), which
    the compact record stores instead of the full-resolution arrays (misc/cam_format.py)."""
    keys, strided, high_res = cam_record(strided_sum, high_res_sum, label.cpu())
    if not (np.isfinite(strided).all() and np.isfinite(high_res).all()):
        raise RuntimeError(f"non-finite CAM for {os.path.basename(path)[:-4]}: the classifier's weights or "
                           f"activations overflow (did its training diverge?); nothing was written")
    if maps is not None:
        index = torch.from_numpy(keys)
        maps = [m.detach()[index.to(m.device)].float().cpu().numpy() for m in maps]
    save_cam_npz(path, keys, strided, high_res, maps=maps, fmt=fmt)
