"""Step train_aff: AffinityNet from the PSA labels (PSA's train_aff.py).

Data: the ids of --infer_list with their result/psa_label PNGs (the ids that have CAMs; PSA trains on train_aug,
the list its labels were made for). Augmentation as PSA: colour jitter (brightness, contrast, saturation 0.3,
hue 0.1), a random --psa_crop_size crop (448; no rescaling; the image is padded with black, the label with "no
pixel"), horizontal flip. The crop's label is reduced to stride 8 (net/psa_affinity.reduce_label) and gives the labels
of all pairs within radius 5: bg-pos, fg-pos, neg. Loss bg/4 + fg/4 + neg/2 (net/psa_affinity.affinity_loss).

Optimiser as PSA: batch --psa_batch_size (8), --psa_num_epoches (8), SGD with poly decay (power 0.9,
max_step = (N // batch) * epochs), lr --psa_learning_rate (0.1) on backbone weights, 2x on backbone biases, 10x
on the new layers' weights and 20x on their biases, weight decay --psa_weight_decay (5e-4) on weights only. PSA's
PolyOptimizer has IRN's momentum bug (momentum = weight decay), reproduced with --official_momentum_bug true.
The backbone's stem and first stage and every BatchNorm are frozen.

Single process, or DDP under torchrun (the global batch stays --psa_batch_size). Progress bar per epoch; the
running losses and pair counts go to the log every 50 steps (as PSA prints them) and per epoch. Writes
sess/psa_aff.pth atomically; an existing checkpoint with the same settings is kept.
"""
import logging
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from misc import dist, imutils, resume, runlog
from misc.datasets import ImageDataset, build_spec, load_id_list, numpy_rng_from_torch
from misc.errors import DataError
from misc.fileio import check_label_files, load_step_label, save_checkpoint
from misc.torchutils import PolyOptimizer, autocast, to_device
from net import irn_affinity, psa_affinity
from net.affinitynet import CHECKPOINT_KIND, AffinityNet, load_affinity_net
from net.resnet50 import calibrate_batchnorm

log = logging.getLogger(__name__)

LOG_EVERY = 50  # steps between loss lines (PSA prints every 50 iterations)
LR_MULTIPLIERS = (1, 2, 10, 20)  # PSA's four parameter groups (net/affinitynet.AffinityNet.parameter_groups)
DECAYED = (True, False, True, False)


def backbone_weights(args):
    """The AffinityNet backbone's weights: --psa_backbone_weights, else --backbone_weights for ResNet-50."""
    if args.psa_backbone_weights:
        return args.psa_backbone_weights
    if args.psa_backbone == "resnet50" or args.backbone_weights == "none":
        return args.backbone_weights
    raise DataError(f"--psa_backbone resnet38 needs --psa_backbone_weights: a PyTorch state dict of PSA's ResNet-38 "
                    f"(its ImageNet weights converted from MXNet), or none for random initialisation "
                    f"(--backbone_weights {args.backbone_weights} is a ResNet-50 file)")


class PsaAffinityDataset(ImageDataset):
    """Training samples: {'name', 'img' (3, crop, crop), 'bg_pos', 'fg_pos', 'neg' (n_dirs, n_src)}."""

    def __init__(self, spec, ids, label_dir, crop_size, radius=psa_affinity.RADIUS, color_jitter=True, hflip=True):
        super().__init__(spec, ids)
        self.label_dir = label_dir
        self.crop_size = crop_size
        self.color_jitter = color_jitter
        self.hflip = hflip
        grid = imutils.strided_size((crop_size, crop_size), psa_affinity.FEATURE_STRIDE)
        self.src, self.dst = psa_affinity.pair_indices(radius, grid)

    def __getitem__(self, idx):
        img_id = self.ids[idx]
        img = self.load_image(idx)
        label = load_step_label(os.path.join(self.label_dir, img_id + ".png"), img_id, img.shape[:2],
                                "cam_to_psa_label", "PSA label")
        rng = numpy_rng_from_torch()
        if self.color_jitter:
            img = psa_affinity.color_jitter(img, rng)
        valid = np.ones(label.shape, np.uint8)
        # PSA crops the un-normalised image into a zero canvas: the padding is black, not the mean colour
        img, label, valid = imutils.random_crop([img, label, valid], self.crop_size, [0, psa_affinity.IGNORE, 0], rng)
        if self.hflip and rng.random() < 0.5:
            img, label, valid = img[:, ::-1], label[:, ::-1], valid[:, ::-1]
        reduced = psa_affinity.reduce_label(label, valid)
        bg_pos, fg_pos, neg = irn_affinity.affinity_labels(reduced, self.src, self.dst, self.spec.num_classes)
        return {"name": img_id, "img": torch.from_numpy(imutils.hwc_to_chw(imutils.normalize(img))),
                "bg_pos": torch.from_numpy(bg_pos), "fg_pos": torch.from_numpy(fg_pos),
                "neg": torch.from_numpy(neg)}


def calibration_batches(spec, ids, crop_size, seed, num_images=16, batch_size=8):
    """Normalised top-left crops of a few images (zero-padded): the data that calibrates a random backbone's
    frozen BatchNorm."""
    rng = np.random.default_rng(seed)
    images = []
    for i in rng.permutation(len(ids))[:num_images]:
        img = imutils.normalize(spec.load_image(ids[i]))[:crop_size, :crop_size]
        canvas = np.zeros((crop_size, crop_size, 3), np.float32)
        canvas[:img.shape[0], :img.shape[1]] = img
        images.append(torch.from_numpy(imutils.hwc_to_chw(canvas)))
    return [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def build_model(args, spec, ids):
    weights = backbone_weights(args)
    model = AffinityNet(args.psa_backbone, weights)
    if weights == "none":
        # BN is frozen, so a random backbone never learns its statistics: calibrate them on data first
        calibrate_batchnorm(model, calibration_batches(spec, ids, args.psa_crop_size, args.seed))
    return model


def settings(args):
    """The values that decide the AffinityNet checkpoint (misc/resume.py)."""
    return {"infer_list": resume.file_digest(args.infer_list, "--infer_list"), "backbone": args.psa_backbone,
            "backbone_weights": backbone_weights(args), "crop_size": args.psa_crop_size,
            "batch_size": args.psa_batch_size, "epochs": args.psa_num_epoches,
            "learning_rate": args.psa_learning_rate, "weight_decay": args.psa_weight_decay,
            "official_momentum_bug": args.official_momentum_bug,
            "momentum": None if args.official_momentum_bug else args.momentum, "seed": args.seed}


def _format(sums, steps):
    return ", ".join(f"{k} {(v / steps).item():.4f}" if not k.endswith("cnt") else f"{k} {(v / steps).item():.0f}"
                     for k, v in sums.items())


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    resume.prepare(args, "train_aff", args.psa_aff_weights_path, settings(args),
                   inputs=[("psa_labels", args.psa_label_out_dir, "dir")], kind="file")
    if resume.checkpoint_done(args.psa_aff_weights_path, "train_aff",
                              lambda p: load_affinity_net(p, args.psa_backbone, spec.num_classes)):
        return
    spec.check_ids(ids, "--infer_list", need_labels=False)
    check_label_files(args.psa_label_out_dir, ids, "PSA label", "cam_to_psa_label")
    rank, world, device, channels_last = dist.start_training(args)
    on_cuda = str(device).startswith("cuda")

    model = build_model(args, spec, ids).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dataset = PsaAffinityDataset(spec, ids, args.psa_label_out_dir, args.psa_crop_size)
    batch_size = dist.per_process_batch(args.psa_batch_size, len(ids), world, "train_aff")
    loader, sampler = dist.train_loader(dataset, batch_size, args, rank, world, on_cuda)
    max_step = len(loader) * args.psa_num_epoches  # official: (N // batch) * epochs
    lr, wd = args.psa_learning_rate, args.psa_weight_decay
    groups = [{"params": params, "lr": mult * lr, "weight_decay": wd if decayed else 0.0}
              for params, mult, decayed in zip(model.parameter_groups(), LR_MULTIPLIERS, DECAYED)]
    optimizer = PolyOptimizer(groups, lr, wd, max_step, args.momentum, args.official_momentum_bug)
    train_model = dist.wrap_ddp(model, world, device)

    log.info("training AffinityNet (%s) on %d images: %d epochs x %d steps, batch %d x %d process(es), crop %d, "
             "%d pairs per source pixel", args.psa_backbone, len(ids), args.psa_num_epoches, len(loader),
             batch_size, world, args.psa_crop_size, len(dataset.dst))
    start = time.perf_counter()
    model.train()
    scalars = runlog.Scalars(args, "train_aff")
    for epoch in range(args.psa_num_epoches):
        if sampler is not None:
            sampler.set_epoch(epoch)
        epoch_sums, window_sums, window = {}, {}, 0
        bar = tqdm(loader, desc=f"train_aff epoch {epoch + 1}/{args.psa_num_epoches}", disable=rank != 0)
        for batch in bar:
            x = to_device(batch["img"], device, channels_last)
            labels = [batch[k].to(device, non_blocking=True) for k in ("bg_pos", "fg_pos", "neg")]
            with autocast(device, args.amp):
                features = train_model(x)
            losses = psa_affinity.affinity_loss(psa_affinity.pair_affinity(features.float()), *labels)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            for sums in (epoch_sums, window_sums):  # summed on device: no host sync per step
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0) + v.detach()
            window += 1
            if (optimizer.global_step - 1) % LOG_EVERY == 0 and rank == 0:
                bar.set_postfix(loss=f"{(window_sums['loss'] / window).item():.4f}")
                log.info("step %d/%d: %s, lr %.2e", optimizer.global_step, max_step, _format(window_sums, window),
                         optimizer.param_groups[0]["lr"])
                scalars.add(optimizer.global_step, lr=optimizer.param_groups[0]["lr"],
                            **{f"loss/{k}": (v / window).item() for k, v in window_sums.items()})
                window_sums, window = {}, 0
        if rank == 0 and epoch_sums:
            log.info("epoch %d: %s", epoch + 1, _format(epoch_sums, len(loader)))
    scalars.close()
    train_time = time.perf_counter() - start

    if rank == 0:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_checkpoint(args.psa_aff_weights_path, state, kind=CHECKPOINT_KIND, backbone=args.psa_backbone,
                        num_classes=spec.num_classes, crop_size=args.psa_crop_size, radius=psa_affinity.RADIUS)
        log.info("saved %s (training %.1f s, %.2f s per image-epoch)", args.psa_aff_weights_path, train_time,
                 train_time / max(1, len(loader) * batch_size * world * args.psa_num_epoches))
    dist.barrier()
