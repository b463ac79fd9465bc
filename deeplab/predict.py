"""Full-image prediction (MSC, optional flip, softmax, dense CRF) and the prediction runner shared by
infer_deeplab and retrain_deeplab (each gives its PredictionPlan, with the writer of its files): the network runs
in one process per GPU (one on CPU), the CRF and the PNG writing in --num_workers CPU processes.

Prediction of one image (deeplab-pytorch main.py test): the full-resolution image (no resize, no padding), the MSC
max over --seg_test_scales on the stride-8 grid (averaged with the flipped image's when --seg_test_flip), bilinear
upsampling to H x W, softmax; then the CRF on the raw RGB image when asked, and the argmax.
"""
import dataclasses
import functools
import logging
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from deeplab.model import load_deeplab
from misc import dist, imutils
from misc.datasets import build_spec
from misc.errors import DataError
from misc.fileio import load_image_rgb
from misc.metrics import ConfusionMatrix, scores_from_confusion
from misc.torchutils import autocast, bind_worker, denormals_flushed

log = logging.getLogger(__name__)


# --- one image ---------------------------------------------------------------------------------------------------


def image_tensor(img):
    """uint8 (H, W, 3) RGB -> normalised float32 (1, 3, H, W)."""
    return torch.from_numpy(imutils.hwc_to_chw(imutils.normalize(img)))[None]


@torch.no_grad()
def predict_logits(model, img, device, scales, flip=False, amp=True, channels_last=False):
    """(C+1, h8, w8) float32 logits of the MSC max over `scales` (mean with the flipped image's when `flip`)."""
    x = image_tensor(img).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        logits = model(x, scales).float()
        if flip:
            logits = (logits + model(x.flip(-1), scales).float().flip(-1)) / 2
    return logits[0]


def probabilities(logits, size):
    """Stride-8 logits -> (C+1, H, W) class probabilities: bilinear upsampling, then softmax."""
    up = F.interpolate(logits[None].float(), size=tuple(size), mode="bilinear", align_corners=False)[0]
    return torch.softmax(up, dim=0)


def crf_settings(args):
    """The CRF parameters of the flags (deeplab-pytorch's VOC values by default)."""
    return {"t": args.seg_crf_iters, "pos_xy": args.seg_crf_pos_xy, "pos_w": args.seg_crf_pos_w,
            "bi_xy": args.seg_crf_bi_xy, "bi_rgb": args.seg_crf_bi_rgb, "bi_w": args.seg_crf_bi_w}


def label_map(img, probs, crf=None):
    """Argmax of the probabilities, after a dense CRF on the raw image when `crf` holds its parameters."""
    if crf is not None:
        from misc.crf import crf_inference_softmax
        probs = crf_inference_softmax(img, probs, **crf)
    return np.asarray(probs).argmax(axis=0).astype(np.uint8)


def finish_image(img_path, probs, crf, write):
    """Post-processing of one image (in a CPU worker process): the CRF when `crf` holds its parameters, argmax,
    then write(pred, probs) writes the image's files (the one that marks it done last)."""
    img = load_image_rgb(img_path) if crf is not None else None
    write(label_map(img, probs, crf), probs)


class PostProcessor:
    """finish_image in `workers` spawned CPU processes (in-process for 0 or 1: one worker would barely overlap
    with the network and costs a process start), with a bounded queue so that the network never runs far ahead of
    the CRF (each pending job holds a full-resolution probability map)."""

    def __init__(self, workers):
        self.workers = workers
        self.pool = None
        if workers > 1:
            import multiprocessing
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.pending = deque()

    def submit(self, *job):
        if self.pool is None:
            finish_image(*job)
            return
        self.pending.append(self.pool.submit(finish_image, *job))
        while len(self.pending) > 2 * self.workers:
            self.pending.popleft().result()

    def close(self):
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)


def oom_error(flags):
    return DataError(f"CUDA out of memory while predicting a full-resolution image; lower {flags} (or keep "
                     f"--amp true), then rerun: finished images are kept")


@dataclass(frozen=True)
class PredictionPlan:
    """What predict_images runs: the checkpoint, the test-time settings and the writer of each image's files."""
    model_path: str
    made_by: str        # the step that makes the checkpoint (named in errors)
    scales: tuple       # MSC test scales
    flip: bool          # average in the flipped image's logits
    crf: dict           # dense-CRF parameters, or None for the plain argmax
    crf_workers: int    # CPU processes for the CRF and the writing (0: in-process)
    desc: str           # progress-bar label
    write: object       # write(img_id, pred, probs): the image's files, the one marking it done last (picklable)


def _predict_worker(plan, worker_idx, ids, device, args):
    """One network process: predicts its shard of ids and hands each image to the post-processing workers."""
    if not ids:
        return
    on_cuda = str(device).startswith("cuda")
    bind_worker(device, 1)
    spec = build_spec(args)
    model = load_deeplab(plan.model_path, spec.num_classes + 1, args.seg_arch, plan.made_by).to(device)
    channels_last = on_cuda and args.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    post = PostProcessor(plan.crf_workers if plan.crf is not None else 0)
    try:
        for img_id in tqdm(ids, desc=f"{plan.desc}[{worker_idx}]", position=worker_idx):
            img_path = spec.image_path(img_id)
            img = load_image_rgb(img_path)
            try:
                with denormals_flushed(not on_cuda):
                    logits = predict_logits(model, img, device, plan.scales, plan.flip, args.amp, channels_last)
                probs = probabilities(logits, img.shape[:2]).cpu().numpy()
            except torch.cuda.OutOfMemoryError:
                raise oom_error("--seg_test_scales (drop the largest scale) or turn --seg_test_flip off") from None
            post.submit(img_path, probs, plan.crf, functools.partial(plan.write, img_id))
    finally:
        post.close()


def predict_images(args, ids, plan):
    """Run the PredictionPlan over `ids`: one network process per visible GPU (and per torchrun rank), a single
    in-process one on CPU."""
    on_cuda = str(args.device).startswith("cuda")
    devices = dist.local_devices(args.device, 0) if on_cuda else ["cpu"]
    if on_cuda:  # the CRF processes of a machine are shared among its GPU processes
        plan = dataclasses.replace(plan, crf_workers=max(1, plan.crf_workers // len(devices)) if plan.crf_workers
                                   else 0)
    dist.run_sharded(functools.partial(_predict_worker, plan), ids, args, devices)


# --- scoring during training -----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(model, spec, ids, device, scales, amp=True, channels_last=False):
    """mIoU (fraction) of the model's argmax (no CRF, no flip) on `ids` against their ground truth."""
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(spec.num_classes + 1)
    for img_id in ids:
        img = spec.load_image(img_id)
        logits = predict_logits(model, img, device, scales, False, amp, channels_last)
        up = F.interpolate(logits[None], size=img.shape[:2], mode="bilinear", align_corners=False)[0]
        confusion.update(spec.load_gt(img_id, img.shape[:2]), up.argmax(0).cpu().numpy())
    model.train(was_training)
    return scores_from_confusion(confusion.mat)["miou"]

