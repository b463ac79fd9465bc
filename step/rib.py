"""Step rib: Reducing Information Bottleneck (paper Sec. 3.2) -- per-image fine-tuning and CAM aggregation.

For every image x of --infer_list, independently (docs/rib.md has the details and every flag):
  1. reset the classifier to theta_0 (sess/res50_cam.pth) and make a fresh optimiser;
  2. K = --rib_iter steps of SGD (poly decay over K, 10x lr on the classifier; layer3, layer4 and the classifier
     are updated, BatchNorm always uses running statistics) on L_RIB (or a BCE ablation) of a batch made of x at
     --rib_loss_scales (+ flips) and --rib_batch other training images, redrawn at every step;
  3. logits are GNDRP (Eq. 3) or GAP of the raw class maps, per row with that row's labels;
  4. M = sum_k CAM(x; theta_k) over --cam_scales (+ flips), written as result/cam_rib/<id>.npz in make_cam's
     format (misc/cams.write_cam_record).
The CAM of theta_k comes from the same forward pass as the loss of step k (as the official code): no extra
forwards except the one of the final model (paper aggregation) and the CAM-only scales (0.5).

Parallelism: one worker process per visible GPU (misc/dist.run_sharded), torchrun ranks shard the list. In each
worker a DataLoader over `RIBStream` prepares the target pyramids and the other-image batches ahead of the GPU.
Determinism: the other images of step k of image x depend only on (--seed, x, k, slot), never on the order or the
worker that processes x (see `draw_generator`).
"""
import hashlib
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from misc import dist, provenance, runlog
from misc.cams import resize_and_sum, write_cam_record
from misc.datasets import build_spec, load_id_list
from misc.fileio import DataError, check_writable_dir, load_image_rgb, save_cam_npz
from misc.imutils import classification_augment, scale_pyramid, strided_size
from misc.rib_losses import finetune_loss, gap_pool, gndrp_pool
from misc.torchutils import PolyOptimizer, autocast, bind_worker, poly_param_groups, to_device
from net.resnet50_cam import flip_merged_cam, load_classifier

log = logging.getLogger(__name__)


# --- configuration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RIBConfig:
    """The values of one RIB run (taken from the --rib_* flags, see run_sample.py's RIB group)."""
    iters: int = 10
    lr: float = 8e-6
    weight_decay: float = 1e-4
    momentum: float = 0.9
    official_momentum_bug: bool = True
    pooling: str = "gndrp"
    tau: float = 0.4
    gndrp_norm: str = "paper"
    loss: str = "rib"
    margin: float = 600.0
    margin_mode: str = "paper"
    explode_stop: bool = True
    explode_th: float = 0.3
    explode_ratio: float = 0.7
    aggregate: str = "paper"
    cam_scales: tuple = (1.0, 0.5, 1.5, 2.0)
    loss_scales: tuple = (1.0, 1.5, 2.0)

    @classmethod
    def from_args(cls, args):
        return cls(iters=args.rib_iter, lr=args.rib_learning_rate, weight_decay=args.rib_weight_decay,
                   momentum=args.momentum, official_momentum_bug=args.official_momentum_bug,
                   pooling=args.rib_pooling, tau=args.rib_score_th, gndrp_norm=args.gndrp_norm, loss=args.rib_loss,
                   margin=args.rib_margin, margin_mode=args.rib_margin_mode, explode_stop=args.rib_explode_stop,
                   explode_th=args.rib_explode_th, explode_ratio=args.rib_explode_ratio,
                   aggregate=args.rib_aggregate, cam_scales=tuple(args.cam_scales),
                   loss_scales=tuple(args.rib_loss_scales))

    @property
    def forward_scales(self):
        """Scales the target is forwarded at: the CAM scales, then loss-only scales (if any)."""
        return self.cam_scales + tuple(s for s in self.loss_scales if s not in self.cam_scales)

    @property
    def last_cam_index(self):
        """k of the last model whose CAM is summed: K (paper, theta_0..theta_K) or K-1 (official)."""
        return self.iters if self.aggregate == "paper" else self.iters - 1

    def check(self):
        if self.iters < 0:
            raise DataError(f"--rib_iter {self.iters}: must be >= 0")
        if self.aggregate == "official" and self.iters < 1:
            raise DataError("--rib_aggregate official sums theta_0..theta_{K-1}: it needs --rib_iter >= 1")
        if not self.cam_scales:
            raise DataError("--cam_scales is empty: give at least one scale, e.g. 1.0,0.5,1.5,2.0")
        if self.iters > 0 and not self.loss_scales:
            raise DataError("--rib_loss_scales is empty: the target must enter the loss at one scale at least "
                            "(official: 1.0,1.5,2.0)")
        if self.explode_stop and 1.0 not in self.forward_scales:
            raise DataError("--rib_explode_stop true checks the scale-1.0 CAM: add 1.0 to --cam_scales or turn "
                            "the stop off with --rib_explode_stop false")


# --- other images: the class index and the per-step draw --------------------------------------------------------


def draw_generator(seed, img_id, step, slot):
    """numpy Generator of (seed, image id, step, slot). slot -1 draws the indices of a step; slot i >= 0 the
    augmentation of its i-th image. A stable hash (not Python's salted hash) so that every process agrees."""
    digest = int.from_bytes(hashlib.sha256(img_id.encode()).digest()[:8], "little")
    entropy = [seed & 0xFFFFFFFF, digest & 0xFFFFFFFF, digest >> 32, step, slot + 1]
    return np.random.default_rng(np.random.SeedSequence(entropy))


class OtherImagePool:
    """The images of --train_list other images are drawn from, with a boolean class index [N, C].

    The images sharing no class with a target are found with one matrix-vector product over the index and
    cached per label set (VOC has a few hundred distinct label sets), instead of the official per-image scan.
    """

    def __init__(self, spec, ids):
        self.ids = list(ids)
        self.position = {img_id: n for n, img_id in enumerate(self.ids)}
        self.has_class = (np.stack([spec.label(i) for i in self.ids]) > 0) if self.ids else \
            np.zeros((0, spec.num_classes), bool)
        self._disjoint = {}

    def __len__(self):
        return len(self.ids)

    def disjoint(self, label):
        """Indices (ascending) of the images that share no class with `label`."""
        present = np.asarray(label) > 0
        key = present.tobytes()
        if key not in self._disjoint:
            shared = self.has_class.astype(np.int32) @ present.astype(np.int32)
            self._disjoint[key] = np.flatnonzero(shared == 0)
        return self._disjoint[key]

    def draw(self, target_id, label, count, disjoint_prob, rng):
        """`count` pool indices: each from the disjoint images with probability disjoint_prob, else from all the
        images but the target. Without replacement inside each group while the group is large enough."""
        if count <= 0:
            return np.zeros(0, np.int64)
        disjoint = self.disjoint(label)
        own = self.position.get(target_id)
        n_others = len(self.ids) - (own is not None)
        from_disjoint = rng.random(count) < disjoint_prob
        if len(disjoint) == 0:  # the target shares a class with every image: fall back to all the others
            from_disjoint[:] = False
        if n_others == 0:
            raise DataError(f"--train_list has no image other than {target_id} to draw other images from")
        out = np.empty(count, np.int64)
        n_d = int(from_disjoint.sum())
        out[from_disjoint] = rng.choice(disjoint, n_d, replace=n_d > len(disjoint)) if n_d else []
        n_a = count - n_d
        if n_a:
            picks = rng.choice(n_others, n_a, replace=n_a > n_others)
            if own is not None:  # skip the target's own position
                picks = picks + (picks >= own)
            out[~from_disjoint] = picks
        return out


# --- the stream of targets and other-image batches --------------------------------------------------------------


class RIBStream(IterableDataset):
    """Items of one worker's id list, in order: for image j, ('target', j) with its scale pyramid, then
    ('others', j, k) for k = 0..K-1 with the augmented other images of step k (none for an unlabelled image).

    With DataLoader workers, worker w produces items w, w + W, ... and the DataLoader returns them in order.
    When an image stops early the consumer sets `skip_below`; workers then emit cheap placeholders for the
    leftover items of that image instead of loading images nobody will use.
    """

    def __init__(self, spec, ids, pool, args):
        self.spec = spec
        self.ids = list(ids)
        self.pool = pool
        cfg = RIBConfig.from_args(args)
        self.forward_scales = cfg.forward_scales
        # other-image batches per image: one per update whose model adds a CAM (the benchmark's previous
        # behaviour, early_checks off, also made the last update)
        self.iters = cfg.last_cam_index if getattr(args, "_rib_early_checks", True) else cfg.iters
        self.count = args.rib_batch
        self.crop = args.rib_crop_size
        self.resize_long = tuple(int(v) for v in args.cam_resize_long)  # classifier-training augmentation
        self.disjoint_prob = args.rib_disjoint_prob
        self.seed = args.seed
        self.skip_below = multiprocessing.RawValue("i", 0)
        self.plan = []
        for j, img_id in enumerate(self.ids):
            self.plan.append(("target", j, -1))
            if self.has_labels(img_id):
                self.plan += [("others", j, k) for k in range(self.iters)]

    def label(self, img_id):
        """The target's labels; all zero for an id missing from the label table (the official COCO path)."""
        label = self.spec.labels.get(img_id)
        return np.zeros(self.spec.num_classes, np.float32) if label is None else label

    def has_labels(self, img_id):
        return bool(self.label(img_id).any())

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for n in range(worker, len(self.plan), workers):
            yield self.make_item(*self.plan[n])

    def make_item(self, kind, j, k):
        img_id = self.ids[j]
        item = {"kind": kind, "j": j, "k": k, "name": img_id}
        if j < self.skip_below.value:
            item["kind"] = "skipped"
            return item
        if kind == "target":
            img = load_image_rgb(self.spec.image_path(img_id))
            item["size"] = torch.tensor(img.shape[:2])
            item["label"] = torch.from_numpy(self.label(img_id))
            pyramid = scale_pyramid(img, self.forward_scales) if self.has_labels(img_id) else []
            item["img"] = [torch.from_numpy(p) for p in pyramid]
            return item
        picks = self.pool.draw(img_id, self.label(img_id), self.count, self.disjoint_prob,
                               draw_generator(self.seed, img_id, k, -1))
        crops = [classification_augment(load_image_rgb(self.spec.image_path(self.pool.ids[p])), self.crop,
                                        draw_generator(self.seed, img_id, k, slot), self.resize_long)
                 for slot, p in enumerate(picks)]
        item["img"] = torch.from_numpy(np.stack(crops) if crops else
                                       np.zeros((0, 3, self.crop, self.crop), np.float32))
        item["label"] = torch.from_numpy(self.pool.has_class[picks].astype(np.float32))
        item["others"] = [self.pool.ids[p] for p in picks]
        return item


def stream_loader(stream, num_workers, pin_memory):
    kwargs = {"prefetch_factor": 2, "persistent_workers": False} if num_workers > 0 else {}
    return DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, **kwargs)


# --- one image ------------------------------------------------------------------------------------------------


@dataclass
class RIBImageResult:
    sums: list          # per CAM scale: the summed flip-merged ReLU map (C, h_s, w_s) on the device
    terms: list         # per CAM scale: how many models' CAMs were summed
    updates: int        # optimiser steps taken
    batches: int        # other-image batches consumed
    stop: str           # 'completed', 'explosion' or 'margin'


def pool_logits(class_maps, labels, cfg):
    if cfg.pooling == "gap":
        return gap_pool(class_maps)
    return gndrp_pool(class_maps, labels, cfg.tau, cfg.gndrp_norm)


def explosion_flag(cam, keys, th, ratio):
    """Official explosion test on the scale-1.0 flip-merged CAM: each true class divided by its max, a pixel is
    'on' when any true class exceeds th; True (a 0-dim tensor, no host sync) when the 'on' share exceeds ratio."""
    maps = cam[keys]
    peak = maps.amax(dim=(1, 2), keepdim=True).clamp_min(1e-5)
    on = (maps / peak > th).any(dim=0)
    return on.float().mean() > ratio


def rib_finetune_image(model, target, next_others, cfg, device, forward=None, amp=False, channels_last=False,
                       on_term=None, early_checks=True):
    """Fine-tune `model` (already reset to theta_0) on one target and return the summed CAMs.

    target: {'img': [(2, 3, h, w) per cfg.forward_scales], 'label': (C,)}; next_others(k): the other images of
    step k, {'img': (n, 3, crop, crop), 'label': (n, C)}. on_term(k, sums) is called each time the CAM of theta_k
    has been added (for --rib_save_iters).

    Step k: forward the target at scale 1.0 first; at k >= 1 ONE host sync then decides both early stops (below),
    as the official code tests right after that forward, so a stopped step costs one forward and nothing else.
    Then the other scales (with gradient at the loss scales; the CAM of theta_k comes from these same maps), the
    other images, backward and the update. Only updates whose model adds a later CAM are made: with the official
    aggregation (k = 0..K-1) the last step's loss, backward and update are skipped (the official code computes
    them and throws them away), the CAMs being identical.
    Early stops (docs/rib.md):
      * explosion (k >= 1): the CAM of theta_k covers too much of the image. theta_k adds no CAM ('paper'
        aggregation) -- or, with --rib_aggregate official, only its scale-1.0 CAM, as the official code which
        tests after adding scale 1.0 and before the other scales;
      * margin (--rib_margin_mode official): after the update of step k, if the target's summed true-class logit
        of step k exceeded m. theta_{k+1} never adds a CAM (also not as the paper's final model). The flag of
        step k is read at the sync of step k + 1.
    early_checks=False runs every step in full before testing (the previous behaviour; kept for
    scripts/bench_rib.py to measure the difference; the outputs are the same).
    """
    forward = forward or model.class_maps
    label = target["label"].to(device=device, dtype=torch.float32)
    keys = torch.nonzero(target["label"] > 0, as_tuple=False).flatten().to(device)
    pairs = [to_device(p, device, channels_last) for p in target["img"]]
    scales = cfg.forward_scales
    cam_at = [scales.index(s) for s in cfg.cam_scales]
    loss_at = [scales.index(s) for s in cfg.loss_scales if s in scales]
    one_at = scales.index(1.0) if 1.0 in scales else None
    # scale 1.0 first (the explosion test needs it); the logits still enter the loss in the order of the scales
    order = ([one_at] if one_at is not None else []) + [i for i in range(len(scales)) if i != one_at]
    pair_labels = label.expand(2, -1)
    official_margin = cfg.margin_mode == "official" and cfg.loss == "rib"

    backbone, head = model.trainable_parameter_groups()
    optimizer = PolyOptimizer(poly_param_groups(backbone, head, cfg.lr, cfg.weight_decay), cfg.lr,
                              cfg.weight_decay, cfg.iters, cfg.momentum, cfg.official_momentum_bug)
    sums = [None] * len(cam_at)
    terms = [0] * len(cam_at)
    updates = batches = 0
    stop = "completed"
    margin_flag = None  # 0-dim bool tensor of the last update, read at the next sync

    def add(merged, which):
        for n in which:
            sums[n] = merged[cam_at[n]] if sums[n] is None else sums[n] + merged[cam_at[n]]
            terms[n] += 1

    def read_flags(*flags):
        """The one host sync of a step: the given 0-dim bool tensors (None stays False)."""
        present = [f for f in flags if f is not None]
        values = iter(torch.stack(present).tolist() if present else [])
        return [bool(next(values)) if f is not None else False for f in flags]

    # early_checks=False (the previous behaviour, for the benchmark) also made the last, unused update
    last_update = cfg.last_cam_index if early_checks else cfg.iters
    for k in range(cfg.last_cam_index + 1):
        update = k < last_update  # this step's update matters only if a later model adds a CAM
        merged, logits_at = [None] * len(scales), {}
        explosion = None
        first = True
        for i in order:
            if not update and i not in cam_at and i != one_at:
                continue  # a loss-only scale adds nothing to the last model's CAM
            grad = update and i in loss_at
            with torch.set_grad_enabled(grad), autocast(device, amp):
                maps = forward(pairs[i])
            maps = maps.float()
            merged[i] = flip_merged_cam(maps.detach())
            if grad:
                logits_at[i] = pool_logits(maps, pair_labels, cfg)
            if first and cfg.explode_stop and k >= 1:
                explosion = explosion_flag(merged[one_at], keys, cfg.explode_th, cfg.explode_ratio)
            if first and early_checks and (margin_flag is not None or explosion is not None):
                over_margin, exploded = read_flags(margin_flag, explosion)
                margin_flag = explosion = None
                if over_margin or exploded:
                    stop = "margin" if over_margin else "explosion"
                    break
            first = False
        if stop == "margin":
            break
        if update and stop == "completed":
            target_logits = [logits_at[i] for i in loss_at]
            logits, labels = list(target_logits), [pair_labels] * len(target_logits)
            others = next_others(k)
            batches += 1
            if others["img"].shape[0] > 0:
                x = to_device(others["img"], device, channels_last)
                other_labels = others["label"].to(device, non_blocking=True)
                with autocast(device, amp):
                    other_maps = forward(x)
                logits.append(pool_logits(other_maps.float(), other_labels, cfg))
                labels.append(other_labels)
            loss = finetune_loss(torch.cat(logits), torch.cat(labels), cfg.loss, cfg.margin, cfg.margin_mode)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if official_margin:
                margin_flag = (torch.cat(target_logits).detach() * label).sum().abs() > cfg.margin
        late_margin = False
        if not early_checks and (explosion is not None or margin_flag is not None):
            late_margin, exploded = read_flags(margin_flag, explosion)
            margin_flag = None
            if exploded:
                stop = "explosion"
        if stop == "explosion":
            if cfg.aggregate == "official" and 1.0 in cfg.cam_scales:
                add(merged, [cfg.cam_scales.index(1.0)])
            break
        add(merged, range(len(cam_at)))
        if on_term is not None:
            on_term(k, sums)
        if not update:
            break
        optimizer.step()
        updates += 1
        if late_margin:
            stop = "margin"
            break
    if stop == "completed" and margin_flag is not None and read_flags(margin_flag)[0]:
        stop = "margin"  # the last update went over the margin: no later CAM was due anyway
    return RIBImageResult(sums, terms, updates, batches, stop)


# --- outputs --------------------------------------------------------------------------------------------------


def rib_path(out_dir, img_id):
    return os.path.join(out_dir, img_id + ".npz")


def iters_dir(out_dir, k):
    """Folder of the CAMs summed up to theta_k (--rib_save_iters): <rib_out_dir>_iters/k00, k01, ..."""
    return os.path.join(out_dir.rstrip("/\\") + "_iters", f"k{k:02d}")


def required_outputs(args, img_id):
    paths = [rib_path(args.rib_out_dir, img_id)]
    if args.rib_save_iters:
        last = RIBConfig.from_args(args).last_cam_index
        paths += [rib_path(iters_dir(args.rib_out_dir, k), img_id) for k in range(last + 1)]
    return paths


def pending_ids(args, ids):
    """Ids with an output missing. Outputs are written atomically (a leftover temp file is not <id>.npz), and the
    main output is written last, so an image whose files all exist is complete."""
    return [i for i in ids if not all(os.path.isfile(p) for p in required_outputs(args, i))]


def write_background_record(path, size):
    """All-background record of an image without labels: no keys, 0-class maps (official COCO path)."""
    h, w = size
    sh, sw = strided_size(size, 4)
    save_cam_npz(path, np.zeros(0, np.int64), np.zeros((0, sh, sw), np.float32), np.zeros((0, h, w), np.float32))


# --- workers --------------------------------------------------------------------------------------------------


def _rib_worker(worker_idx, ids, device, args):
    if not ids:
        return
    if not logging.getLogger().handlers:  # a spawned worker: log to the console and the run log
        runlog.setup(os.path.join(args.work_dir, "run.log"))
    cuda = str(device).startswith("cuda")
    threads = torch.get_num_threads()
    bind_worker(device, args.rib_num_local_workers)
    if not cuda:
        # Denormal floats (tiny activations, common in fine-tuned and random networks) take a slow CPU path:
        # measured 3-4x slower forwards here. Flushing them to zero changes nothing above 1e-38.
        torch.set_flush_denormal(True)
    try:
        _rib_images(worker_idx, ids, device, args, cuda)
    finally:
        torch.set_num_threads(threads)
        if not cuda:
            torch.set_flush_denormal(False)  # the process default (the worker may run in the caller's process)


def _rib_images(worker_idx, ids, device, args, cuda):
    cfg = RIBConfig.from_args(args)
    spec = build_spec(args)
    model = load_classifier(args.cam_weights_path, spec.num_classes, device)
    channels_last = cuda and args.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # theta_0 kept on the device; copied back into the same parameter tensors before every image
    theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    forward = model.class_maps
    if args.rib_compile:
        forward = torch.compile(model.class_maps, dynamic=None)
    pool = OtherImagePool(spec, load_id_list(args.train_list, "--train_list"))
    stream = RIBStream(spec, ids, pool, args)
    items = iter(stream_loader(stream, args.rib_loader_workers, cuda))
    stops = {"completed": 0, "explosion": 0, "margin": 0, "no labels": 0}
    bar = tqdm(total=len(ids), desc=f"rib[{worker_idx}]", position=worker_idx, unit="img", dynamic_ncols=True)
    for j, img_id in enumerate(ids):
        try:
            stop = _rib_one(model, theta0, forward, items, stream, j, img_id, cfg, args, device, channels_last)
        except DataError:
            raise  # names its file (the loader may be ahead of img_id)
        except Exception as e:
            raise RuntimeError(f"RIB failed on image {img_id}: {type(e).__name__}: {e}") from e
        stops[stop] += 1
        bar.update(1)
    bar.close()
    log.info("rib worker %d (%s): %d images; %s", worker_idx, device, len(ids),
             ", ".join(f"{v} {k}" for k, v in stops.items() if v))


def _next_item(items, kind, j, k=-1):
    item = next(items)
    if item["j"] != j or item["k"] != k or item["kind"] not in (kind, "skipped"):
        raise RuntimeError(f"RIB stream out of order: expected {kind} {j}/{k}, got {item['kind']} "
                           f"{item['j']}/{item['k']}")
    return item


def _rib_one(model, theta0, forward, items, stream, j, img_id, cfg, args, device, channels_last):
    target = _next_item(items, "target", j)
    size = tuple(int(v) for v in target["size"])
    out = rib_path(args.rib_out_dir, img_id)
    if not bool(target["label"].any()):
        # COCO's 1,069 unannotated images: counted in the worker's summary ('no labels'), not one warning each
        log.debug("rib: image %s has no image-level label; writing an all-background record", img_id)
        if args.rib_save_iters:
            for k in range(cfg.last_cam_index + 1):
                write_background_record(rib_path(iters_dir(args.rib_out_dir, k), img_id), size)
        write_background_record(out, size)
        return "no labels"

    model.load_state_dict(theta0)  # reset to theta_0: nothing leaks from one image to the next
    written = set()

    def save_term(k, sums):
        write_cam_record(rib_path(iters_dir(args.rib_out_dir, k), img_id), *resize_and_sum(sums, size),
                         target["label"], sums, args.cam_format)
        written.add(k)

    result = rib_finetune_image(model, target, lambda k: _next_item(items, "others", j, k), cfg, device,
                                forward, args.amp, channels_last, save_term if args.rib_save_iters else None,
                                early_checks=getattr(args, "_rib_early_checks", True))
    # drain the other-image batches an early stop left unused (workers skip loading them)
    if result.batches < stream.iters:
        stream.skip_below.value = j + 1
        for k in range(result.batches, stream.iters):
            _next_item(items, "others", j, k)
    strided, high_res = resize_and_sum(result.sums, size)
    if args.rib_save_iters:  # after an early stop every later k holds the final map (a longer run stops too)
        for k in range(cfg.last_cam_index + 1):
            if k not in written:
                write_cam_record(rib_path(iters_dir(args.rib_out_dir, k), img_id), strided, high_res,
                                 target["label"], result.sums, args.cam_format)
    write_cam_record(out, strided, high_res, target["label"], result.sums, args.cam_format)
    log.debug("rib %s: %s after %d updates, CAM terms per scale %s", img_id, result.stop, result.updates,
              result.terms)
    return result.stop


def settings(args):
    """The values that decide RIB's maps (a rerun with other values stops; misc/provenance.py)."""
    return {**RIBConfig.from_args(args).__dict__, "other_images": args.rib_batch, "crop_size": args.rib_crop_size,
            "disjoint_prob": args.rib_disjoint_prob, "resize_long": list(args.cam_resize_long), "seed": args.seed,
            "train_list": provenance.file_digest(args.train_list, "--train_list")}


def run(args):
    cfg = RIBConfig.from_args(args)
    cfg.check()
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    pool_ids = load_id_list(args.train_list, "--train_list")
    check_writable_dir(args.rib_out_dir, "--work_dir")
    provenance.prepare(args, "rib", args.rib_out_dir, settings(args),
                       inputs=[("classifier", args.cam_weights_path, "file")],
                       extra_outputs=[(args.rib_out_dir.rstrip("/\\") + "_iters", "dir")])
    todo = pending_ids(args, ids)
    log.info("rib: %d of %d images to do (%d already done); K=%d, lr %g, %d other images per step, %s pooling "
             "(%s norm), %s margin %g, %s aggregation", len(todo), len(ids), len(ids) - len(todo), cfg.iters,
             cfg.lr, args.rib_batch, cfg.pooling, cfg.gndrp_norm, cfg.margin_mode, cfg.margin, cfg.aggregate)
    if not todo:
        return
    spec.check_ids(todo, "--infer_list", need_labels=False)  # unlabelled targets get an all-background record
    spec.check_ids(pool_ids, "--train_list", need_labels=True)
    if args.rib_batch > 0 and len(set(pool_ids)) < 2:
        raise DataError(f"--train_list {args.train_list} must hold at least two images to draw other images "
                        f"from (--rib_batch {args.rib_batch})")
    load_classifier(args.cam_weights_path, spec.num_classes)  # fail now, not in every worker
    devices = dist.local_devices(args.device, args.rib_workers)[:len(todo)]
    args.rib_num_local_workers = len(devices)
    start = time.perf_counter()
    dist.run_sharded(_rib_worker, todo, args, devices)
    elapsed = time.perf_counter() - start
    log.info("rib: %d images in %.1f s (%.3f s/image, %d worker(s) on %s)", len(todo), elapsed,
             elapsed / len(todo), len(devices), ", ".join(sorted(set(map(str, devices)))))
