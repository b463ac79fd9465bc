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
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from deeplab.data import IterationBatches, SegmentationTrainDataset, calibration_batches
from deeplab.losses import make_loss, msc_loss
from deeplab.model import build_deeplab, load_deeplab, parameter_groups, poly_lr, save_deeplab, set_lr
from deeplab.predict import evaluate_model
from misc import dist, resume, runlog
from misc.datasets import build_spec, load_id_list
from misc.errors import DataError
from misc.fileio import check_label_files, load_checkpoint, save_checkpoint
from misc.torchutils import autocast, denormals_flushed, set_cpu_threads, to_device
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
            "train_list": resume.file_digest(args.seg_train_list, "--seg_train_list"), "iterations": args.seg_num_iters,
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
    diff = resume.differences(ckpt.get("settings", {}), settings)
    diff += resume.differences(ckpt.get("inputs", {}), inputs, prefix="input ")
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


@dataclass
class TrainingRun:
    """One DeepLab training run: what it trains on, where it writes, and this process's place in it."""
    args: object
    step: str           # train_deeplab or retrain_deeplab (named in messages and --overwrite)
    spec: object
    ids: list
    label_dir: str
    label_step: str     # the step that makes the labels
    weights_path: str
    settings: dict
    inputs: dict        # the record ids of the labels (and the round-one model)
    rank: int = 0
    world: int = 1
    device: str = "cpu"
    channels_last: bool = False

    @property
    def resume_file(self):
        return resume_path(self.weights_path)

    @property
    def per_rank_batch(self):
        return max(1, self.args.seg_batch_size // self.world)


def _train_segmentation(args, step, label_dir, weights_path, label_step, init, init_path):
    spec = build_spec(args)
    ids = load_id_list(args.seg_train_list, "--seg_train_list")
    settings = training_settings(args, spec, init)
    inputs = [("labels", label_dir, "dir")] + ([("round1", init_path, "file")] if init == "round1" else [])
    record = resume.prepare(args, step, weights_path, settings, inputs=inputs, kind="file",
                            extra_outputs=[(resume_path(weights_path), "file")])
    if resume.checkpoint_done(weights_path, step, lambda p: load_deeplab(p, spec.num_classes + 1, args.seg_arch,
                                                                         step)):
        return weights_path
    spec.check_ids(ids, "--seg_train_list", need_labels=False)
    check_label_files(label_dir, ids, "training label", label_step)
    eval_ids = load_id_list(args.seg_eval_list, "--seg_eval_list") if args.seg_eval_every > 0 else []
    rank, world, device, channels_last = dist.start_training(args)
    run = TrainingRun(args, step, spec, ids, label_dir, label_step, weights_path, settings, record["inputs"], rank,
                      world, device, channels_last)
    model, optimizer, start_iter = start_model(run, init, init_path)
    if run.per_rank_batch * world != args.seg_batch_size:
        log.warning("%s: --seg_batch_size %d is not a multiple of the %d processes; %d per process",
                    step, args.seg_batch_size, world, run.per_rank_batch)
    log.info("%s: %s DeepLab-v2 (MSC) on %d images, labels %s: iterations %d..%d, batch %d x %d process(es) x "
             "%d accumulated, crop %d, scales %s, lr %.2e, %s loss", step, args.seg_arch, len(ids), label_dir,
             start_iter, args.seg_num_iters, run.per_rank_batch, world, args.seg_iter_size, args.seg_crop_size,
             ",".join(f"{s:g}" for s in args.seg_scales), args.seg_learning_rate, args.seg_loss)
    try:
        train_iterations(run, model, optimizer, start_iter, eval_ids)
    except torch.cuda.OutOfMemoryError:
        raise DataError(oom_message(args, run.per_rank_batch)) from None
    if rank == 0:
        save_deeplab(weights_path, model, args.seg_arch, spec.class_names, iterations=args.seg_num_iters,
                     settings=settings)
        if os.path.isfile(run.resume_file):
            os.remove(run.resume_file)
        log.info("%s: saved %s", step, weights_path)
    dist.barrier()
    return weights_path


def start_model(run, init, init_path):
    """The model on the device and its SGD with deeplab-pytorch's parameter groups: from the resume checkpoint of
    an interrupted run (optimiser state and iteration too), else from `init`. Returns (model, optimizer, start)."""
    args = run.args
    state = None
    if os.path.isfile(run.resume_file):
        state = load_checkpoint(run.resume_file, "DeepLab resume checkpoint", made_by=run.step)
        check_resume(state, run.resume_file, run.settings, run.inputs, run.step)
        model = build_deeplab(run.spec.num_classes + 1, args.seg_arch)
        model.load_state_dict(state["state_dict"])
        model.train()
    else:
        model = initial_model(args, run.spec, run.ids, run.label_dir, run.label_step, init, init_path)
    model = model.to(run.device)
    if run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(parameter_groups(model, args.seg_learning_rate, args.seg_weight_decay),
                                lr=args.seg_learning_rate, momentum=args.seg_momentum,
                                weight_decay=args.seg_weight_decay)
    if state is None:
        return model, optimizer, 0
    optimizer.load_state_dict(state["optimizer"])
    start = int(state["iteration"])
    log.info("%s: resuming from %s at iteration %d of %d", run.step, run.resume_file, start, args.seg_num_iters)
    return model, optimizer, start


def training_batches(run, start_iter):
    """The batches of iterations start_iter.. (this process's share; the same order after a resume)."""
    args, on_cuda = run.args, str(run.device).startswith("cuda")
    dataset = SegmentationTrainDataset(run.spec, run.ids, run.label_dir, args.seg_crop_size, args.seg_scales,
                                       args.seed, run.label_step)
    sampler = IterationBatches(len(run.ids), run.per_rank_batch, args.seg_num_iters, start_iter, args.seg_iter_size,
                               run.rank, run.world, args.seed)
    return iter(DataLoader(dataset, batch_sampler=sampler, num_workers=args.num_workers, pin_memory=on_cuda,
                           prefetch_factor=4 if args.num_workers > 0 else None))


def train_iterations(run, model, optimizer, start_iter, eval_ids):
    """Iterations start_iter..--seg_num_iters: poly lr, --seg_iter_size accumulated micro-batches, one update;
    the loss logged every --seg_log_every, a resume checkpoint every --seg_save_every, a val score every
    --seg_eval_every iterations."""
    args = run.args
    ddp_model = dist.wrap_ddp(model, run.world, run.device)
    train_model = torch.compile(ddp_model) if args.seg_compile and str(run.device).startswith("cuda") else ddp_model
    loss_fn = make_loss(args.seg_loss, args.seg_loss_smoothing)
    batches = training_batches(run, start_iter)
    scalars = runlog.Scalars(args, run.step)
    window = LossWindow(run, scalars)
    with tqdm(total=args.seg_num_iters, initial=start_iter, desc=run.step, disable=run.rank != 0) as bar, \
            contextlib.closing(scalars):
        for it in range(start_iter, args.seg_num_iters):
            set_lr(optimizer, poly_lr(args.seg_learning_rate, it, args.seg_num_iters, args.seg_poly_power,
                                      args.seg_lr_step))
            optimizer.zero_grad(set_to_none=True)
            for micro in range(args.seg_iter_size):
                window.add(micro_batch_loss(run, train_model, ddp_model, loss_fn, next(batches), micro))
            optimizer.step()
            bar.update(1)
            done = it + 1
            if done % args.seg_log_every == 0 or done == args.seg_num_iters:
                window.report(done, optimizer, bar)
            if done % args.seg_save_every == 0 and done < args.seg_num_iters:
                if run.rank == 0:
                    save_checkpoint(run.resume_file, {k: v.detach().cpu() for k, v in model.state_dict().items()},
                                    optimizer=optimizer.state_dict(), iteration=done, settings=run.settings,
                                    inputs=run.inputs)
                dist.barrier()
            if args.seg_eval_every > 0 and done % args.seg_eval_every == 0:
                if run.rank == 0:
                    miou = evaluate_model(model, run.spec, eval_ids, run.device, args.seg_test_scales, args.amp,
                                          run.channels_last)
                    log.info("%s iteration %d: val mIoU %.2f on %d images of --seg_eval_list (no CRF)", run.step,
                             done, 100 * miou, len(eval_ids))
                    scalars.add(done, val_miou=100 * miou)
                dist.barrier()


def micro_batch_loss(run, train_model, ddp_model, loss_fn, batch, micro):
    """Forward and backward of one micro-batch (the loss of the four MSC outputs, divided by --seg_iter_size);
    under DDP the gradients are all-reduced once per iteration, at its last micro-batch."""
    args = run.args
    x = to_device(batch["img"], run.device, run.channels_last)
    labels = batch["label"].to(run.device, non_blocking=True)
    sync = micro == args.seg_iter_size - 1 or run.world == 1
    with (contextlib.nullcontext() if sync else ddp_model.no_sync()):
        with autocast(run.device, args.amp):
            outputs = train_model(x)
        loss = msc_loss(outputs, labels, loss_fn) / args.seg_iter_size
        loss.backward()
    return loss.detach()


class LossWindow:
    """The loss summed on the device since the last report; report() is the loop's only host sync, and stops a
    run whose loss is no longer finite."""

    def __init__(self, run, scalars):
        self.run, self.scalars = run, scalars
        self.loss_sum = torch.zeros((), device=run.device)
        self.iterations, self.start = 0, time.perf_counter()
        self.micro = 0

    def add(self, loss):
        self.loss_sum += loss
        self.micro += 1
        if self.micro % self.run.args.seg_iter_size == 0:
            self.iterations += 1

    def report(self, done, optimizer, bar):
        run, args = self.run, self.run.args
        mean_loss = (self.loss_sum / self.iterations).item()
        if not math.isfinite(mean_loss):
            raise DataError(f"{run.step}: the loss became {mean_loss} at iteration {done}; lower "
                            f"--seg_learning_rate (now {args.seg_learning_rate}) and rerun with --overwrite "
                            f"{run.step}")
        images = self.iterations * run.per_rank_batch * run.world * args.seg_iter_size
        rate = images / (time.perf_counter() - self.start)
        if run.rank == 0:
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
            log.info("%s iteration %d/%d: loss %.4f (mean of %d), lr %.3e, %.1f images/s", run.step, done,
                     args.seg_num_iters, mean_loss, self.iterations, lr, rate)
            self.scalars.add(done, loss=mean_loss, lr=lr, images_per_s=rate)
        self.loss_sum.zero_()
        self.iterations, self.start = 0, time.perf_counter()
