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
import functools
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

from misc import dist, resume, runlog
from misc.cams import cam_file, resize_and_sum, write_cam_record
from misc.datasets import build_spec, load_id_list
from misc.errors import DataError
from misc.fileio import check_writable_dir, load_image_rgb, save_cam_npz
from misc.imutils import classification_augment, scale_pyramid, strided_size
from misc.torchutils import (PolyOptimizer, autocast, bind_worker, denormals_flushed, poly_param_groups,
                             to_device)
from net.resnet50_cam import flip_merged_cam, load_classifier
from net.rib_loss import finetune_loss, gap_pool, gndrp_pool

log = logging.getLogger(__name__)


# --- configuration ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RIBConfig:
    """The values of one RIB run (taken from the --rib_* flags, the RIB group of step/flags.py). The defaults are
    the command line's for VOC: the official equations (--rib_equations official), so RIBConfig() is the
    published run (tests/test_rib.py checks both agree)."""
    iters: int = 10
    lr: float = 8e-6
    weight_decay: float = 1e-4
    momentum: float = 0.9
    official_momentum_bug: bool = True
    pooling: str = "gndrp"
    tau: float = 0.4
    gndrp_norm: str = "official"
    loss: str = "rib"
    margin: float = 600.0
    margin_mode: str = "official"
    explode_stop: bool = True
    explode_th: float = 0.3
    explode_ratio: float = 0.7
    aggregate: str = "official"
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

    @property
    def updates(self):
        """Updates per image without an early stop: those whose model adds a later CAM (k < last_cam_index), so
        also the other-image batches the stream prepares per image."""
        return self.last_cam_index

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
        self.iters = cfg.updates  # other-image batches per image: one per update
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
        return self.spec.label_or_background(img_id)  # all zero for an unannotated image (the official COCO path)

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


# --- one image: the steps of the paper as small functions -------------------------------------------------


@dataclass
class RIBImageResult:
    sums: list          # per CAM scale: the summed flip-merged ReLU map (C, h_s, w_s) on the device
    terms: list         # per CAM scale: how many models' CAMs were summed
    updates: int        # optimiser steps taken
    batches: int        # other-image batches consumed
    stop: str           # 'completed', 'explosion' or 'margin'


@dataclass
class Target:
    """The target on the device: its (image, flipped image) pair per forward scale, labels and true classes, and
    where each forward scale goes (the CAM sum, the loss, the explosion test)."""
    pairs: list         # (2, 3, h, w) per cfg.forward_scales
    label: torch.Tensor  # (C,)
    pair_labels: torch.Tensor  # (2, C): the label of both rows of a pair
    keys: torch.Tensor  # the true class indices
    cam_at: list        # forward index of each CAM scale
    loss_at: list       # forward index of each loss scale
    one_at: int         # forward index of scale 1.0 (None when absent; the explosion test needs it)

    @classmethod
    def prepare(cls, target, cfg, device, channels_last):
        label = target["label"].to(device=device, dtype=torch.float32)
        scales = cfg.forward_scales
        return cls(pairs=[to_device(p, device, channels_last) for p in target["img"]], label=label,
                   pair_labels=label.expand(2, -1),
                   keys=torch.nonzero(target["label"] > 0, as_tuple=False).flatten().to(device),
                   cam_at=[scales.index(s) for s in cfg.cam_scales],
                   loss_at=[scales.index(s) for s in cfg.loss_scales if s in scales],
                   one_at=scales.index(1.0) if 1.0 in scales else None)

    def scales_of_step(self, update):
        """Forward indices of one step, in order: scale 1.0 first (the early-stop tests read it); without an update
        the loss-only scales are left out (they add nothing to the CAM)."""
        first = [self.one_at] if self.one_at is not None else []
        order = first + [i for i in range(len(self.pairs)) if i != self.one_at]
        return [i for i in order if update or i in self.cam_at or i == self.one_at]


class CamSum:
    """M = sum over the models theta_k of their flip-merged CAMs, one sum per CAM scale (on the device)."""

    def __init__(self, cam_at):
        self.cam_at = cam_at
        self.sums = [None] * len(cam_at)
        self.terms = [0] * len(cam_at)

    def add(self, merged, which=None):
        """Add theta_k's CAMs (merged: forward index -> map) at the CAM scales `which` (default: all)."""
        for n in range(len(self.cam_at)) if which is None else which:
            cam = merged[self.cam_at[n]]
            self.sums[n] = cam if self.sums[n] is None else self.sums[n] + cam
            self.terms[n] += 1


def make_optimizer(model, cfg):
    """A fresh optimiser per image: SGD with poly decay over K, 10x lr on the classifier (layer3, layer4 and the
    classifier are trainable)."""
    backbone, head = model.trainable_parameter_groups()
    return PolyOptimizer(poly_param_groups(backbone, head, cfg.lr, cfg.weight_decay), cfg.lr, cfg.weight_decay,
                         cfg.iters, cfg.momentum, cfg.official_momentum_bug)


def pool_logits(class_maps, labels, cfg):
    if cfg.pooling == "gap":
        return gap_pool(class_maps)
    return gndrp_pool(class_maps, labels, cfg.tau, cfg.gndrp_norm)


def forward_target(forward, pair, grad, pair_labels, cfg, device, amp):
    """theta_k on the target at one scale: the flip-merged CAM and, with grad (a loss scale of an update step),
    the pooled logits of both rows."""
    with torch.set_grad_enabled(grad), autocast(device, amp):
        maps = forward(pair)
    maps = maps.float()
    return flip_merged_cam(maps.detach()), (pool_logits(maps, pair_labels, cfg) if grad else None)


def step_loss(forward, target_logits, pair_labels, others, cfg, device, amp, channels_last):
    """L_RIB (or the ablation's loss) of one step over the target's rows and the other images' rows."""
    logits, labels = list(target_logits), [pair_labels] * len(target_logits)
    if others["img"].shape[0] > 0:
        x = to_device(others["img"], device, channels_last)
        other_labels = others["label"].to(device, non_blocking=True)
        with autocast(device, amp):
            other_maps = forward(x)
        logits.append(pool_logits(other_maps.float(), other_labels, cfg))
        labels.append(other_labels)
    return finetune_loss(torch.cat(logits), torch.cat(labels), cfg.loss, cfg.margin, cfg.margin_mode)


def margin_flag(target_logits, label, cfg):
    """Official margin stop (--rib_margin_mode official): the target's summed true-class logit of this step over
    m, as a 0-dim bool tensor (no host sync; read at the next step's sync). None when the stop is off."""
    if cfg.margin_mode != "official" or cfg.loss != "rib":
        return None
    return (torch.cat(target_logits).detach() * label).sum().abs() > cfg.margin


def explosion_flag(cam, keys, th, ratio):
    """Official explosion test on the scale-1.0 flip-merged CAM: each true class divided by its max + 1e-5 (as the
    official code), a pixel is 'on' when any true class exceeds th; True (a 0-dim tensor, no host sync) when the
    'on' share exceeds ratio."""
    maps = cam[keys]
    on = (maps / (maps.amax(dim=(1, 2), keepdim=True) + 1e-5) > th).any(dim=0)
    return on.float().mean() > ratio


def read_flags(*flags):
    """One host sync for the given 0-dim bool tensors (None reads as False; no sync when all are None)."""
    present = [f for f in flags if f is not None]
    values = iter(torch.stack(present).tolist() if present else [])
    return [bool(next(values)) if f is not None else False for f in flags]


def early_stop(k, merged_one, keys, over_margin, cfg):
    """The early-stop tests of step k, right after its first forward, with one host sync: 'margin' when the
    previous update went over the margin, 'explosion' when theta_k's scale-1.0 CAM covers too much of the image
    (k >= 1), else None."""
    explosion = explosion_flag(merged_one, keys, cfg.explode_th, cfg.explode_ratio) \
        if cfg.explode_stop and k >= 1 else None
    margin, exploded = read_flags(over_margin, explosion)
    return "margin" if margin else "explosion" if exploded else None


def rib_finetune_image(model, target, next_others, cfg, device, forward=None, amp=False, channels_last=False,
                       on_term=None):
    """Fine-tune `model` (already reset to theta_0) on one target and return the summed CAMs.

    target: {'img': [(2, 3, h, w) per cfg.forward_scales], 'label': (C,)}; next_others(k): the other images of
    step k, {'img': (n, 3, crop, crop), 'label': (n, C)}. on_term(k, sums) is called each time the CAM of theta_k
    has been added (for --rib_save_iters).

    Step k: forward the target at scale 1.0; the early-stop tests (one host sync, as the official code tests right
    after that forward, so a stopped step costs one forward); the other scales (the CAM of theta_k comes from the
    same maps as the loss); the other images, the loss and backward; add theta_k's CAM; the update. Only the
    updates whose model adds a later CAM are made (cfg.updates): with the official aggregation (k = 0..K-1) the
    last step's loss and update, which the official code computes and throws away, are skipped.
    Early stops (docs/rib.md):
      * explosion (k >= 1): theta_k adds no CAM ('paper' aggregation) -- or, with --rib_aggregate official, only
        its scale-1.0 CAM, as the official code which tests after adding scale 1.0 and before the other scales;
      * margin (--rib_margin_mode official): the update of step k went over m; theta_{k+1} adds no CAM.
    """
    forward = forward or model.class_maps
    x = Target.prepare(target, cfg, device, channels_last)
    optimizer = make_optimizer(model, cfg)
    cam = CamSum(x.cam_at)
    updates = batches = 0
    over_margin = None  # the margin flag of the last update, read at the next step's sync
    for k in range(cfg.last_cam_index + 1):
        update = k < cfg.updates
        first, *rest = x.scales_of_step(update)
        merged, logits = {}, {}
        merged[first], logits[first] = forward_target(forward, x.pairs[first], update and first in x.loss_at,
                                                      x.pair_labels, cfg, device, amp)
        stop = early_stop(k, merged.get(x.one_at), x.keys, over_margin, cfg)
        if stop == "explosion" and cfg.aggregate == "official" and 1.0 in cfg.cam_scales:
            cam.add(merged, [cfg.cam_scales.index(1.0)])  # the official code added it before the test
        if stop is not None:
            return RIBImageResult(cam.sums, cam.terms, updates, batches, stop)
        for i in rest:
            merged[i], logits[i] = forward_target(forward, x.pairs[i], update and i in x.loss_at, x.pair_labels,
                                                  cfg, device, amp)
        if update:
            target_logits = [logits[i] for i in x.loss_at]
            loss = step_loss(forward, target_logits, x.pair_labels, next_others(k), cfg, device, amp, channels_last)
            batches += 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            over_margin = margin_flag(target_logits, x.label, cfg)
        cam.add(merged)
        if on_term is not None:
            on_term(k, cam.sums)
        if not update:
            break
        optimizer.step()
        updates += 1
    return RIBImageResult(cam.sums, cam.terms, updates, batches, "completed")


# --- outputs --------------------------------------------------------------------------------------------------


def iters_dir(out_dir, k):
    """Folder of the CAMs summed up to theta_k (--rib_save_iters): <rib_out_dir>_iters/k00, k01, ..."""
    return os.path.join(out_dir.rstrip("/\\") + "_iters", f"k{k:02d}")


def output_files(args, img_id):
    """The files of a finished image, the main one last (it is written last): with --rib_save_iters also the
    maps summed up to each theta_k."""
    paths = []
    if args.rib_save_iters:
        last = RIBConfig.from_args(args).last_cam_index
        paths += [cam_file(iters_dir(args.rib_out_dir, k), img_id) for k in range(last + 1)]
    return paths + [cam_file(args.rib_out_dir, img_id)]


def write_background_record(path, size):
    """All-background record of an image without labels: no keys, 0-class maps (official COCO path)."""
    h, w = size
    sh, sw = strided_size(size, 4)
    save_cam_npz(path, np.zeros(0, np.int64), np.zeros((0, sh, sw), np.float32), np.zeros((0, h, w), np.float32))


# --- workers --------------------------------------------------------------------------------------------------


def _rib_worker(worker_idx, ids, device, args, local_workers, finetune):
    if not ids:
        return
    if not logging.getLogger().handlers:  # a spawned worker: log to the console and the run log
        runlog.setup(os.path.join(args.work_dir, "run.log"))
    cuda = str(device).startswith("cuda")
    threads = torch.get_num_threads()
    bind_worker(device, local_workers)
    try:
        # Denormal floats (tiny activations, common in fine-tuned and random networks) take a slow CPU path:
        # measured 3-4x slower forwards here. Flushing them to zero changes nothing above 1e-38.
        with denormals_flushed(not cuda):
            RIBWorker(ids, device, args, finetune).run(worker_idx)
    finally:
        torch.set_num_threads(threads)


class RIBWorker:
    """One worker's images: the classifier and theta_0 on its device, the stream of its targets and other images
    (prepared ahead by DataLoader workers), and what is written per image."""

    def __init__(self, ids, device, args, finetune):
        self.ids, self.device, self.args, self.finetune = ids, device, args, finetune
        self.cfg = RIBConfig.from_args(args)
        cuda = str(device).startswith("cuda")
        spec = build_spec(args)
        self.model = load_classifier(args.cam_weights_path, spec.num_classes, device)
        self.channels_last = cuda and args.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # theta_0 kept on the device; copied back into the same parameter tensors before every image
        self.theta0 = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.forward = torch.compile(self.model.class_maps, dynamic=None) if args.rib_compile else \
            self.model.class_maps
        pool = OtherImagePool(spec, load_id_list(args.train_list, "--train_list"))
        self.stream = RIBStream(spec, ids, pool, args)
        self.items = iter(stream_loader(self.stream, args.rib_loader_workers, cuda))

    def run(self, worker_idx):
        stops = {"completed": 0, "explosion": 0, "margin": 0, "no labels": 0}
        for j, img_id in enumerate(tqdm(self.ids, desc=f"rib[{worker_idx}]", position=worker_idx, unit="img",
                                        dynamic_ncols=True)):
            try:
                stops[self.image(j, img_id)] += 1
            except DataError:
                raise  # names its file (the loader may be ahead of img_id)
            except Exception as e:
                raise RuntimeError(f"RIB failed on image {img_id}: {type(e).__name__}: {e}") from e
        log.info("rib worker %d (%s): %d images; %s", worker_idx, self.device, len(self.ids),
                 ", ".join(f"{v} {k}" for k, v in stops.items() if v))

    def next_item(self, kind, j, k=-1):
        item = next(self.items)
        if item["j"] != j or item["k"] != k or item["kind"] not in (kind, "skipped"):
            raise RuntimeError(f"RIB stream out of order: expected {kind} {j}/{k}, got {item['kind']} "
                               f"{item['j']}/{item['k']}")
        return item

    def image(self, j, img_id):
        """Fine-tune on image j from theta_0 and write its maps; returns how it stopped."""
        args, cfg = self.args, self.cfg
        target = self.next_item("target", j)
        size = tuple(int(v) for v in target["size"])
        *iter_files, out = output_files(args, img_id)
        if not bool(target["label"].any()):
            # COCO's 1,069 unannotated images: counted in the worker's summary ('no labels'), not one warning each
            log.debug("rib: image %s has no image-level label; writing an all-background record", img_id)
            for path in iter_files + [out]:
                write_background_record(path, size)
            return "no labels"
        self.model.load_state_dict(self.theta0)  # reset to theta_0: nothing leaks from one image to the next
        written = set()

        def save_term(k, sums):
            write_cam_record(iter_files[k], *resize_and_sum(sums, size), target["label"], sums, args.cam_format)
            written.add(k)

        result = self.finetune(self.model, target, lambda k: self.next_item("others", j, k), cfg, self.device,
                               self.forward, args.amp, self.channels_last, save_term if iter_files else None)
        if result.batches < self.stream.iters:  # drain what an early stop left unused (workers skip loading it)
            self.stream.skip_below.value = j + 1
            for k in range(result.batches, self.stream.iters):
                self.next_item("others", j, k)
        strided, high_res = resize_and_sum(result.sums, size)
        for k, path in enumerate(iter_files):  # after an early stop every later k holds the final map
            if k not in written:
                write_cam_record(path, strided, high_res, target["label"], result.sums, args.cam_format)
        write_cam_record(out, strided, high_res, target["label"], result.sums, args.cam_format)
        log.debug("rib %s: %s after %d updates, CAM terms per scale %s", img_id, result.stop, result.updates,
                  result.terms)
        return result.stop


def settings(args):
    """The values that decide RIB's maps (a rerun with other values stops; misc/resume.py)."""
    return {**RIBConfig.from_args(args).__dict__, "other_images": args.rib_batch, "crop_size": args.rib_crop_size,
            "disjoint_prob": args.rib_disjoint_prob, "resize_long": list(args.cam_resize_long), "seed": args.seed,
            "train_list": resume.file_digest(args.train_list, "--train_list")}


def run(args, finetune=None):
    """The step. finetune: the per-image fine-tuning, rib_finetune_image unless given (scripts/bench_rib.py passes
    its late-check variant; a changed method can pass its own)."""
    cfg = RIBConfig.from_args(args)
    cfg.check()
    spec = build_spec(args)
    ids = load_id_list(args.infer_list, "--infer_list")
    pool_ids = load_id_list(args.train_list, "--train_list")
    check_writable_dir(args.rib_out_dir, "--work_dir")
    resume.prepare(args, "rib", args.rib_out_dir, settings(args),
                   inputs=[("classifier", args.cam_weights_path, "file")],
                   extra_outputs=[(args.rib_out_dir.rstrip("/\\") + "_iters", "dir")])
    todo = resume.pending(ids, functools.partial(output_files, args))
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
    start = time.perf_counter()
    dist.run_sharded(functools.partial(_rib_worker, local_workers=len(devices),
                                       finetune=finetune or rib_finetune_image), todo, args, devices)
    elapsed = time.perf_counter() - start
    log.info("rib: %d images in %.1f s (%.3f s/image, %d worker(s) on %s)", len(todo), elapsed,
             elapsed / len(todo), len(devices), ", ".join(sorted(set(map(str, devices)))))
