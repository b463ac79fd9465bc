"""The iteration-based DeepLab training loop shared by train_deeplab (round one) and retrain_deeplab.

SGD (momentum --seg_momentum, real momentum: deeplab-pytorch has no PolyOptimizer bug), deeplab-pytorch's three
parameter groups, poly decay updated every --seg_lr_step iterations, the loss of the four MSC outputs summed,
--seg_iter_size micro-batches accumulated per iteration. A resume checkpoint (model, optimiser state, iteration)
is written every --seg_save_every iterations; a rerun continues from it at the same iteration, learning rate and
batch order, or stops naming the values that differ from its run. Single process or DDP under torchrun; bf16
autocast and channels-last on CUDA.
"""
import contextlib
import logging
import math
import os
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from deeplab.data import IterationBatches, SegmentationTrainDataset, calibration_batches
from deeplab.losses import make_loss, msc_loss
from deeplab.model import build_deeplab, parameter_groups, poly_lr, set_lr
from deeplab.predict import denormals_flushed, evaluate_model, load_deeplab, save_deeplab
from misc import dist, provenance, runlog
from misc.datasets import build_spec, load_id_list
from misc.fileio import DataError, load_checkpoint, save_checkpoint
from misc.torchutils import autocast, seed_everything, set_cpu_threads, to_device
from net.resnet50 import calibrate_batchnorm, load_backbone_weights

log = logging.getLogger(__name__)

# Random init only (--seg_backbone_weights none: tests, demo): the scale of the last BN of every residual branch.
# A random 50-layer network with frozen BN is so sensitive that SGD at a useful rate sends the loss to infinity in
# a few steps; damped branches keep it near its skip paths (the idea of zero-initialised residual BN, Goyal et al.
# 2017, not zero because these BN parameters are never trained).
RANDOM_INIT_BRANCH_SCALE = 0.1


def resume_path(weights_path):
    """sess/deeplab.pth -> sess/deeplab.resume.pth (model, optimiser state and iteration of an unfinished run)."""
    return os.path.splitext(weights_path)[0] + ".resume.pth"


def training_settings(args, spec, init):
    """The values that decide a DeepLab checkpoint (compared on every rerun and on resume)."""
    return {"classes": list(spec.class_names), "arch": args.seg_arch, "init": init,
            "train_list": provenance.file_digest(args.seg_train_list, "--seg_train_list"), "iterations": args.seg_num_iters,
            "batch_size": args.seg_batch_size, "iter_size": args.seg_iter_size,
            "learning_rate": args.seg_learning_rate, "momentum": args.seg_momentum,
            "weight_decay": args.seg_weight_decay, "poly_power": args.seg_poly_power, "lr_step": args.seg_lr_step,
            "crop_size": args.seg_crop_size, "scales": list(args.seg_scales), "loss": args.seg_loss,
            "seed": args.seed, **({"loss_smoothing": args.seg_loss_smoothing} if args.seg_loss_smoothing else {})}


def oom_message(args, per_rank_batch):
    return (f"CUDA out of memory in DeepLab training at {per_rank_batch} crops of {args.seg_crop_size}^2 per GPU "
            f"({args.seg_arch}, MSC). Lower --seg_batch_size (now {args.seg_batch_size}) and raise --seg_iter_size "
            f"(now {args.seg_iter_size}) to keep the effective batch, or lower --seg_crop_size; keep --amp true "
            f"(now {args.amp}). The last checkpoint is kept and a rerun resumes from it")


def initial_model(args, spec, ids, label_dir, label_step, init, init_path):
    """round1: the round-one weights; otherwise the backbone of --seg_backbone_weights (random with calibrated
    BN for 'none') and a fresh ASPP."""
    num_outputs = spec.num_classes + 1
    if init == "round1":
        return load_deeplab(init_path, num_outputs, args.seg_arch).train()
    model = build_deeplab(num_outputs, args.seg_arch)
    load_backbone_weights(model.base.backbone, args.seg_backbone_weights, args.seg_arch,
                          flag="--seg_backbone_weights")
    if args.seg_backbone_weights == "none":
        # random init: frozen BN needs the data's statistics, else activations explode through 16+ blocks
        calibrate_batchnorm(model.base, calibration_batches(spec, ids, label_dir, args.seg_crop_size,
                                                            args.seg_scales, args.seed, label_step))
        damp_residual_branches(model.base.backbone, RANDOM_INIT_BRANCH_SCALE)
    return model.train()


@torch.no_grad()
def damp_residual_branches(backbone, scale):
    """Multiply the output of every bottleneck's residual branch (its last BN's affine parameters) by `scale`."""
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        for block in layer:
            block.bn3.weight.mul_(scale)
            block.bn3.bias.mul_(scale)


def check_resume(ckpt, path, settings, inputs, step):
    diff = provenance.differences(ckpt.get("settings", {}), settings)
    diff += provenance.differences(ckpt.get("inputs", {}), inputs, prefix="input ")
    if diff:
        shown = "; ".join(f"{name} {a} (now {b})" for name, a, b in diff[:8])
        raise DataError(f"resume checkpoint {path} (iteration {ckpt.get('iteration')}) comes from a run with other "
                        f"values: {shown}. Rerun with the same values to continue it, or add --overwrite {step} "
                        f"to start over")


def train_segmentation(args, step, label_dir, weights_path, label_step, init, init_path=None):
    """Train the MSC DeepLab on the labels of `label_dir` (0..C, 255 ignored) for --seg_num_iters iterations and
    write `weights_path`. init: the --seg_backbone_weights value, or 'round1' (start from init_path)."""
    on_cpu = not str(args.device).startswith("cuda")
    if on_cpu:
        set_cpu_threads(1)  # OMP_NUM_THREADS when set: spinning OpenMP threads on a busy machine cost 10x and more
    with denormals_flushed(on_cpu):
        return _train_segmentation(args, step, label_dir, weights_path, label_step, init, init_path)


def _train_segmentation(args, step, label_dir, weights_path, label_step, init, init_path):
    spec = build_spec(args)
    ids = load_id_list(args.seg_train_list, "--seg_train_list")
    settings = training_settings(args, spec, init)
    resume = resume_path(weights_path)
    inputs = [("labels", label_dir, "dir")] + ([("round1", init_path, "file")] if init == "round1" else [])
    record = provenance.prepare(args, step, weights_path, settings, inputs=inputs, kind="file",
                                extra_outputs=[(resume, "file")])
    if os.path.isfile(weights_path):
        load_deeplab(weights_path, spec.num_classes + 1, args.seg_arch, step)  # a broken file is reported now
        log.info("%s exists with the same settings: keeping it (--overwrite %s retrains)", weights_path, step)
        return weights_path
    spec.check_ids(ids, "--seg_train_list", need_labels=False)
    missing = [i for i in ids if not os.path.isfile(os.path.join(label_dir, i + ".png"))]
    if missing:
        raise DataError(f"{len(missing)} of {len(ids)} training label(s) of --seg_train_list are missing in "
                        f"{label_dir}, e.g. {missing[0]}: run the {label_step} step on the same list first "
                        f"(--only {label_step})")
    eval_ids = load_id_list(args.seg_eval_list, "--seg_eval_list") if args.seg_eval_every > 0 else []

    seed_everything(args.seed)
    rank, world, device = dist.init_distributed(args.device)
    on_cuda = str(device).startswith("cuda")
    channels_last = on_cuda and args.channels_last
    state = None
    if os.path.isfile(resume):
        state = load_checkpoint(resume, "DeepLab resume checkpoint", made_by=step)
        check_resume(state, resume, settings, record["inputs"], step)
        model = build_deeplab(spec.num_classes + 1, args.seg_arch)
        model.load_state_dict(state["state_dict"])
        model.train()
    else:
        model = initial_model(args, spec, ids, label_dir, label_step, init, init_path)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameter_groups(model, args.seg_learning_rate, args.seg_weight_decay),
                                lr=args.seg_learning_rate, momentum=args.seg_momentum,
                                weight_decay=args.seg_weight_decay)
    start_iter = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        start_iter = int(state["iteration"])
        log.info("%s: resuming from %s at iteration %d of %d", step, resume, start_iter, args.seg_num_iters)
    del state

    per_rank_batch = max(1, args.seg_batch_size // world)
    if per_rank_batch * world != args.seg_batch_size:
        log.warning("%s: --seg_batch_size %d is not a multiple of the %d processes; %d per process",
                    step, args.seg_batch_size, world, per_rank_batch)
    dataset = SegmentationTrainDataset(spec, ids, label_dir, args.seg_crop_size, args.seg_scales, args.seed,
                                       label_step)
    sampler = IterationBatches(len(ids), per_rank_batch, args.seg_num_iters, start_iter, args.seg_iter_size,
                               rank, world, args.seed)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers, pin_memory=on_cuda,
                        prefetch_factor=4 if args.num_workers > 0 else None)
    ddp_model = dist.wrap_ddp(model, world, device)
    train_model = torch.compile(ddp_model) if args.seg_compile and on_cuda else ddp_model
    loss_fn = make_loss(args.seg_loss, args.seg_loss_smoothing)

    log.info("%s: %s DeepLab-v2 (MSC) on %d images, labels %s: iterations %d..%d, batch %d x %d process(es) x "
             "%d accumulated, crop %d, scales %s, lr %.2e, %s loss", step, args.seg_arch, len(ids), label_dir,
             start_iter, args.seg_num_iters, per_rank_batch, world, args.seg_iter_size, args.seg_crop_size,
             ",".join(f"{s:g}" for s in args.seg_scales), args.seg_learning_rate, args.seg_loss)
    bar = tqdm(total=args.seg_num_iters, initial=start_iter, desc=step, disable=rank != 0)
    batches = iter(loader)
    loss_sum = torch.zeros((), device=device)
    window, window_start = 0, time.perf_counter()
    scalars = runlog.Scalars(args, step)
    try:
        for it in range(start_iter, args.seg_num_iters):
            set_lr(optimizer, poly_lr(args.seg_learning_rate, it, args.seg_num_iters, args.seg_poly_power,
                                      args.seg_lr_step))
            optimizer.zero_grad(set_to_none=True)
            for micro in range(args.seg_iter_size):
                batch = next(batches)
                x = to_device(batch["img"], device, channels_last)
                labels = batch["label"].to(device, non_blocking=True)
                sync = micro == args.seg_iter_size - 1 or world == 1
                with (contextlib.nullcontext() if sync else ddp_model.no_sync()):  # all-reduce once per iteration
                    with autocast(device, args.amp):
                        outputs = train_model(x)
                    loss = msc_loss(outputs, labels, loss_fn) / args.seg_iter_size
                    loss.backward()
                loss_sum += loss.detach()
            optimizer.step()
            window += 1
            bar.update(1)
            done = it + 1
            if done % args.seg_log_every == 0 or done == args.seg_num_iters:
                mean_loss = (loss_sum / window).item()  # the only host sync of the loop
                if not math.isfinite(mean_loss):
                    raise DataError(f"{step}: the loss became {mean_loss} at iteration {done}; lower "
                                    f"--seg_learning_rate (now {args.seg_learning_rate}) and rerun with "
                                    f"--overwrite {step}")
                rate = window * per_rank_batch * world * args.seg_iter_size / (time.perf_counter() - window_start)
                if rank == 0:
                    lr = optimizer.param_groups[0]["lr"]
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    log.info("%s iteration %d/%d: loss %.4f (mean of %d), lr %.3e, %.1f images/s", step, done,
                             args.seg_num_iters, mean_loss, window, lr, rate)
                    scalars.add(done, loss=mean_loss, lr=lr, images_per_s=rate)
                loss_sum.zero_()
                window, window_start = 0, time.perf_counter()
            if done % args.seg_save_every == 0 and done < args.seg_num_iters:
                if rank == 0:
                    save_checkpoint(resume, {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                    optimizer=optimizer.state_dict(), iteration=done, settings=settings,
                                    inputs=record["inputs"])
                dist.barrier()
            if args.seg_eval_every > 0 and done % args.seg_eval_every == 0:
                if rank == 0:
                    miou = evaluate_model(model, spec, eval_ids, device, args.seg_test_scales, args.amp,
                                          channels_last)
                    log.info("%s iteration %d: val mIoU %.2f on %d images of --seg_eval_list (no CRF)", step,
                             done, 100 * miou, len(eval_ids))
                    scalars.add(done, val_miou=100 * miou)
                dist.barrier()
    except torch.cuda.OutOfMemoryError:
        raise DataError(oom_message(args, per_rank_batch)) from None
    finally:
        bar.close()
        scalars.close()
    if rank == 0:
        save_deeplab(weights_path, model, args.seg_arch, spec.class_names, iterations=args.seg_num_iters,
                     settings=settings)
        if os.path.isfile(resume):
            os.remove(resume)
        log.info("%s: saved %s", step, weights_path)
    dist.barrier()
    return weights_path
