"""Step train_cam: the multi-label classifier theta_0 (IRN's train_cam, used unchanged by RIB).

Sigmoid BCE (multilabel soft margin) on GAP logits; 5 epochs, batch 16, lr 0.1 (10x on the classifier), wd 1e-4,
poly 0.9; stem, layer1 and layer2 stay frozen. Single process, or DDP under torchrun (never DataParallel).
Writes sess/res50_cam.pth atomically, then checks it: logits of a few training images must be finite and bounded,
else the step stops naming the flags to change (a diverged classifier would only fail later, in RIB). An existing
checkpoint made with the same settings is kept; --overwrite train_cam retrains.
"""
import logging
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from misc import dist, resume, runlog
from misc.datasets import ClassificationDataset, build_spec, load_id_list
from misc.errors import DataError
from misc.fileio import save_checkpoint
from misc.imutils import classification_augment
from misc.torchutils import PolyOptimizer, autocast, poly_param_groups, to_device
from net.resnet50 import calibrate_batchnorm
from net.resnet50_cam import Net, load_classifier

log = logging.getLogger(__name__)


def calibration_batches(spec, ids, crop_size, resize_long, seed, num_images=16, batch_size=8):
    """A few augmented training images, deterministic for a seed, to calibrate a random backbone's BN."""
    rng = np.random.default_rng(seed)
    picked = [ids[i] for i in rng.permutation(len(ids))[:num_images]]
    dataset = ClassificationDataset(spec, picked, crop_size)
    images = [torch.from_numpy(classification_augment(dataset.load_image(i), crop_size, rng, resize_long))
              for i in range(len(picked))]
    return [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def resize_long_range(args):
    return tuple(int(v) for v in args.cam_resize_long)


def build_model(args, spec, ids):
    model = Net(spec.num_classes, args.backbone_weights)
    if args.backbone_weights == "none":
        # Random init: give frozen BN the data's statistics, else activations blow up through 16 blocks.
        calibrate_batchnorm(model, calibration_batches(spec, ids, args.cam_crop_size,
                                                       resize_long_range(args), args.seed))
    return model


# A trained classifier's logits on training images stay within tens (hundreds at most); a diverged one reaches
# 1e20 and more. Anything above this bound is not a classifier RIB can fine-tune.
MAX_LOGIT = 1e4


def settings(args, spec):
    """The values that decide the checkpoint (a rerun with other values stops; misc/resume.py)."""
    return {"classes": list(spec.class_names), "train_list": resume.file_digest(args.train_list, "--train_list"),
            "backbone_weights": args.backbone_weights, "epochs": args.cam_num_epoches,
            "batch_size": args.cam_batch_size, "crop_size": args.cam_crop_size,
            "resize_long": list(args.cam_resize_long), "learning_rate": args.cam_learning_rate,
            "weight_decay": args.cam_weight_decay, "official_momentum_bug": args.official_momentum_bug,
            "momentum": None if args.official_momentum_bug else args.momentum, "seed": args.seed}


@torch.no_grad()
def check_classifier(path, spec, ids, args, device):
    """Largest |logit| and |class map| of the saved classifier on a few training images (their augmentation at
    the training crop); a DataError naming the flags to change when they are not finite or above MAX_LOGIT."""
    model = load_classifier(path, spec.num_classes, device)
    batches = calibration_batches(spec, ids, args.cam_crop_size, resize_long_range(args), args.seed,
                                  num_images=8)
    worst_logit = worst_map = 0.0
    for x in batches:
        x = x.to(device)
        worst_logit = max(worst_logit, model(x).abs().max().item())
        worst_map = max(worst_map, model.class_maps(x).abs().max().item())
    if not (math.isfinite(worst_logit) and math.isfinite(worst_map)) or worst_logit > MAX_LOGIT:
        os.replace(path, path + ".diverged")
        raise DataError(f"train_cam: the classifier diverged (logits up to {worst_logit:.3g}, class maps up to "
                        f"{worst_map:.3g} on training images; moved to {path}.diverged). Lower "
                        f"--cam_learning_rate (now {args.cam_learning_rate}) or raise --cam_batch_size (now "
                        f"{args.cam_batch_size}) or --cam_crop_size, then rerun")
    return worst_logit


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.train_list, "--train_list")
    resume.prepare(args, "train_cam", args.cam_weights_path, settings(args, spec), kind="file")
    if resume.checkpoint_done(args.cam_weights_path, "train_cam", lambda p: load_classifier(p, spec.num_classes)):
        return
    spec.check_ids(ids, "--train_list")
    rank, world, device, _ = dist.start_training(args)
    on_cuda = str(device).startswith("cuda")

    model = build_model(args, spec, ids).to(device)
    if on_cuda and args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    backbone_params, head_params = model.trainable_parameter_groups()

    dataset = ClassificationDataset(spec, ids, crop_size=args.cam_crop_size, resize_long=resize_long_range(args))
    batch_size = min(args.cam_batch_size, len(ids) // world) or 1
    loader, sampler = dist.train_loader(dataset, batch_size, args, rank, world, on_cuda)
    max_step = len(loader) * args.cam_num_epoches  # official: (N // batch) * epochs
    optimizer = PolyOptimizer(poly_param_groups(backbone_params, head_params, args.cam_learning_rate,
                                                args.cam_weight_decay),
                              args.cam_learning_rate, args.cam_weight_decay, max_step, args.momentum,
                              args.official_momentum_bug)
    train_model = dist.wrap_ddp(model, world, device)

    log.info("training the classifier on %d images (%d classes): %d epochs x %d steps, batch %d x %d process(es)",
             len(ids), spec.num_classes, args.cam_num_epoches, len(loader), batch_size, world)
    start = time.perf_counter()
    scalars = runlog.Scalars(args, "train_cam")
    for epoch in range(args.cam_num_epoches):
        if sampler is not None:
            sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        bar = tqdm(loader, desc=f"train_cam epoch {epoch + 1}/{args.cam_num_epoches}", disable=rank != 0)
        for batch in bar:
            x = to_device(batch["img"], device, on_cuda and args.channels_last)
            labels = batch["label"].to(device, non_blocking=True)
            with autocast(device, args.amp):
                logits = train_model(x)
            loss = F.multilabel_soft_margin_loss(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()  # summed on device: no host sync per step
        mean_loss = (loss_sum / max(len(loader), 1)).item()  # one host sync per epoch
        if not math.isfinite(mean_loss):
            raise DataError(f"train_cam: classifier training diverged in epoch {epoch + 1} (loss {mean_loss}); "
                            f"lower --cam_learning_rate (now {args.cam_learning_rate}) or raise --cam_batch_size "
                            f"(now {args.cam_batch_size}). No checkpoint was written")
        if rank == 0:
            log.info("epoch %d: mean loss %.4f, lr %.2e", epoch + 1, mean_loss, optimizer.param_groups[0]["lr"])
            scalars.add((epoch + 1) * len(loader), **{"loss/mean_of_epoch": mean_loss,
                                                      "lr": optimizer.param_groups[0]["lr"]})
    scalars.close()
    if rank == 0:
        save_checkpoint(args.cam_weights_path, {k: v.cpu() for k, v in model.state_dict().items()},
                        num_classes=spec.num_classes, class_names=list(spec.class_names))
        log.info("saved %s (%.1f s)", args.cam_weights_path, time.perf_counter() - start)
        if args.check_classifier:
            worst = check_classifier(args.cam_weights_path, spec, ids, args, device)
            log.info("classifier check: largest |logit| on 8 training images %.3g (bound %g)", worst, MAX_LOGIT)
    dist.barrier()
