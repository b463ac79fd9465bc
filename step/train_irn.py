"""Step train_irn: IRNet's boundary and displacement branches from the IR labels (IRN's train_irn, as RIB runs it).

Data: the ids of --infer_list with their result/ir_label PNGs (the official RIB run uses train_aug for both its
train and infer lists, so this is the same set); random scale in [0.5, 1.5], h-flip, random --irn_crop_size crop
(label padding 255). The crop's label, reduced x0.25 (nearest), gives the affinity labels of all pairs within
radius 10 (net/irn_affinity.py). Loss (bg_pos/2 + fg_pos/2 + neg)/2 + (dp_fg + dp_bg)/2; batch 32, 3 epochs, SGD poly
with lr 0.1 on the boundary branch and 1.0 on the displacement branch, wd 1e-4. The ResNet-50 backbone is frozen.
After training, the mean displacement over --infer_list (top-left crops) is stored in mean_shift.running_mean.
Single process, or DDP under torchrun. Writes sess/res50_irn.pth atomically; an existing checkpoint is kept
(delete it to retrain).
"""
import logging
import os
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from misc import dist, imutils, resume, runlog
from misc.datasets import ImageDataset, build_spec, load_id_list, numpy_rng_from_torch
from misc.fileio import check_label_files, load_step_label, save_checkpoint
from misc.torchutils import PolyOptimizer, autocast, to_device
from net import irn_affinity
from net.resnet50 import calibrate_batchnorm
from net.resnet50_irn import AffinityDisplacementLoss, IRNet, load_irnet

log = logging.getLogger(__name__)

TRAIN_RADIUS = 10  # pairs within 10 stride-4 pixels (IRN)
SCALE_RANGE = (0.5, 1.5)


def training_path_index(crop_size):
    """PathIndex of the stride-4 crop (128 x 128 for 512 crops; small test crops get a padded grid)."""
    feat = imutils.strided_size((crop_size, crop_size), 4)
    return irn_affinity.PathIndex(TRAIN_RADIUS, irn_affinity.grid_size_for(TRAIN_RADIUS, feat))


class AffinityDataset(ImageDataset):
    """Training samples: {'name', 'img' (3, crop, crop), 'bg_pos', 'fg_pos', 'neg' (n_dirs, n_src)}."""

    def __init__(self, spec, ids, label_dir, path_index, crop_size, scale_range=SCALE_RANGE, hflip=True):
        super().__init__(spec, ids)
        self.label_dir = label_dir
        self.path_index = path_index
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.hflip = hflip

    def __getitem__(self, idx):
        img_id = self.ids[idx]
        img = self.load_image(idx)
        label = load_step_label(os.path.join(self.label_dir, img_id + ".png"), img_id, img.shape[:2],
                                "cam_to_ir_label", "IR label")
        rng = numpy_rng_from_torch()
        scale = rng.uniform(*self.scale_range)
        img = imutils.rescale(img, scale)
        label = imutils.rescale(label, scale, nearest=True)
        if self.hflip and rng.random() < 0.5:
            img, label = img[:, ::-1], label[:, ::-1]
        img = imutils.normalize(img)
        img, label = imutils.random_crop([img, label], self.crop_size, [0.0, 255], rng)
        reduced = imutils.resize(label, imutils.strided_size(label.shape, 4), nearest=True)
        gh, gw = self.path_index.size  # pad tiny crops to the PathIndex grid with "ignore"
        reduced = np.pad(reduced, ((0, gh - reduced.shape[0]), (0, gw - reduced.shape[1])), constant_values=255)
        bg_pos, fg_pos, neg = irn_affinity.affinity_labels(reduced, self.path_index.src_indices,
                                                           self.path_index.dst_indices, self.spec.num_classes)
        return {"name": img_id, "img": torch.from_numpy(imutils.hwc_to_chw(img)),
                "bg_pos": torch.from_numpy(bg_pos), "fg_pos": torch.from_numpy(fg_pos),
                "neg": torch.from_numpy(neg)}


class TopLeftCropDataset(ImageDataset):
    """The normalised image in the top-left corner of a crop x crop canvas (zero = mean colour), as IRN's
    displacement-mean pass."""

    def __init__(self, spec, ids, crop_size):
        super().__init__(spec, ids)
        self.crop_size = crop_size

    def __getitem__(self, idx):
        img = imutils.normalize(self.load_image(idx))[:self.crop_size, :self.crop_size]
        canvas = np.zeros((self.crop_size, self.crop_size, 3), np.float32)
        canvas[:img.shape[0], :img.shape[1]] = img
        return {"name": self.ids[idx], "img": torch.from_numpy(imutils.hwc_to_chw(canvas))}


def calibration_batches(spec, ids, crop_size, seed, num_images=16, batch_size=8):
    """Top-left crops of a few images to give a random backbone's frozen BN the data's statistics."""
    rng = np.random.default_rng(seed)
    picked = [ids[i] for i in rng.permutation(len(ids))[:num_images]]
    dataset = TopLeftCropDataset(spec, picked, crop_size)
    images = [dataset[i]["img"] for i in range(len(picked))]
    return [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


def build_model(args, spec, ids):
    model = IRNet(args.backbone_weights)
    if args.backbone_weights == "none":
        # IRN's backbone is frozen, so its BN statistics are never learnt: calibrate a random one on data.
        calibrate_batchnorm(model, calibration_batches(spec, ids, args.irn_crop_size, args.seed))
    return model


@torch.no_grad()
def mean_displacement(model, spec, ids, args, device, rank, world, channels_last):
    """Mean of the displacement field over the ids' top-left crops (IRN stores it in mean_shift)."""
    dataset = TopLeftCropDataset(spec, dist.shard(ids, rank, world), args.irn_crop_size)
    # drop_last=False (IRN drops the last partial batch, which leaves nothing for lists shorter than a batch);
    # the mean is then weighted by images rather than by batches.
    loader = DataLoader(dataset, batch_size=args.irn_batch_size, shuffle=False, num_workers=args.num_workers)
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for batch in tqdm(loader, desc="train_irn displacement mean", disable=rank != 0):
        with autocast(device, args.amp):
            _, dp = model(to_device(batch["img"], device, channels_last))
        total += dp.float().mean(dim=(2, 3)).sum(dim=0).double()
        count += dp.shape[0]
    if world > 1:
        import torch.distributed as tdist
        tdist.all_reduce(total)
        tdist.all_reduce(count)
    return (total / count.clamp(min=1)).float()


def settings(args):
    """The values that decide the IRNet checkpoint (misc/resume.py)."""
    return {"infer_list": resume.file_digest(args.infer_list, "--infer_list"), "backbone_weights": args.backbone_weights,
            "crop_size": args.irn_crop_size, "batch_size": args.irn_batch_size, "epochs": args.irn_num_epoches,
            "learning_rate": args.irn_learning_rate, "weight_decay": args.irn_weight_decay,
            "official_momentum_bug": args.official_momentum_bug,
            "momentum": None if args.official_momentum_bug else args.momentum, "seed": args.seed}


def run(args):
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    resume.prepare(args, "train_irn", args.irn_weights_path, settings(args),
                   inputs=[("ir_labels", args.ir_label_out_dir, "dir")], kind="file")
    if resume.checkpoint_done(args.irn_weights_path, "train_irn", load_irnet):
        return
    spec.check_ids(ids, "--infer_list", need_labels=False)
    check_label_files(args.ir_label_out_dir, ids, "IR label", "cam_to_ir_label")
    rank, world, device, channels_last = dist.start_training(args)
    on_cuda = str(device).startswith("cuda")

    path_index = training_path_index(args.irn_crop_size)
    model = build_model(args, spec, ids).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = AffinityDisplacementLoss(path_index).to(device)
    edge_params, dp_params = model.trainable_parameters()

    dataset = AffinityDataset(spec, ids, args.ir_label_out_dir, path_index, args.irn_crop_size)
    batch_size = dist.per_process_batch(args.irn_batch_size, len(ids), world, "train_irn")
    loader, sampler = dist.train_loader(dataset, batch_size, args, rank, world, on_cuda)
    max_step = len(loader) * args.irn_num_epoches  # official: (N // batch) * epochs
    lr, wd = args.irn_learning_rate, args.irn_weight_decay
    optimizer = PolyOptimizer([{"params": edge_params, "lr": lr, "weight_decay": wd},
                               {"params": dp_params, "lr": 10 * lr, "weight_decay": wd}],
                              lr, wd, max_step, args.momentum, args.official_momentum_bug)
    train_model = dist.wrap_ddp(model, world, device)

    log.info("training IRNet on %d images: %d epochs x %d steps, batch %d x %d process(es), crop %d, %d pairs "
             "per crop pixel", len(ids), args.irn_num_epoches, len(loader), batch_size, world,
             args.irn_crop_size, path_index.num_directions)
    start = time.perf_counter()
    model.train()
    scalars = runlog.Scalars(args, "train_irn")
    for epoch in range(args.irn_num_epoches):
        if sampler is not None:
            sampler.set_epoch(epoch)
        sums = {}
        bar = tqdm(loader, desc=f"train_irn epoch {epoch + 1}/{args.irn_num_epoches}", disable=rank != 0)
        for batch in bar:
            x = to_device(batch["img"], device, channels_last)
            labels = [batch[k].to(device, non_blocking=True) for k in ("bg_pos", "fg_pos", "neg")]
            with autocast(device, args.amp):
                edge, dp = train_model(x)
            losses = criterion(edge, dp, *labels)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            for k, v in losses.items():  # summed on device: no host sync per step
                sums[k] = sums.get(k, 0) + v.detach()
        if rank == 0 and sums:
            means = {k: (v / len(loader)).item() for k, v in sums.items()}
            log.info("epoch %d: %s, lr %.2e", epoch + 1, ", ".join(f"{k} {v:.4f}" for k, v in means.items()),
                     optimizer.param_groups[0]["lr"])
            scalars.add((epoch + 1) * len(loader), lr=optimizer.param_groups[0]["lr"],
                        **{f"loss/{k}": v for k, v in means.items()})
    scalars.close()
    train_time = time.perf_counter() - start

    model.mean_shift.running_mean = mean_displacement(model, spec, ids, args, device, rank, world, channels_last)
    if rank == 0:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        save_checkpoint(args.irn_weights_path, state, crop_size=args.irn_crop_size, radius=TRAIN_RADIUS)
        log.info("saved %s (training %.1f s, total %.1f s; mean displacement %s)", args.irn_weights_path,
                 train_time, time.perf_counter() - start,
                 [round(float(v), 4) for v in model.mean_shift.running_mean])
    dist.barrier()
