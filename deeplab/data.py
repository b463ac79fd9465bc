"""Training data of the segmentation network: deeplab-pytorch's augmentation, label files, and an iteration-indexed
batch order that a resumed run reproduces exactly.

Augmentation (deeplab-pytorch libs/datasets/base.py): a scale drawn from the discrete --seg_scales, image resized
bilinearly and label by nearest neighbour to floor(scale * size), padded at the bottom / right to the crop with
the mean colour (0 after normalisation) and 255, a random crop, a horizontal flip with p = 0.5. The image is
normalised with the ImageNet mean / std of the torchvision-format backbone (deeplab-pytorch's Caffe backbone takes
BGR minus the mean, no std).
"""
import os

import cv2
import numpy as np
import torch
from torch.utils.data import Sampler

from misc import imutils
from misc.datasets import IGNORE, ImageDataset
from misc.fileio import load_step_label


def segmentation_augment(img, label, crop_size, scales, rng, hflip=True):
    """uint8 (H, W, 3) image and (H, W) label -> float32 (3, crop, crop) normalised image, uint8 (crop, crop)."""
    scale = float(scales[int(rng.integers(len(scales)))])
    h, w = label.shape
    sh, sw = max(1, int(h * scale)), max(1, int(w * scale))
    if (sh, sw) != (h, w):
        img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_LINEAR)
        label = imutils.resize(label.astype(np.uint8), (sh, sw), nearest=True)
    img = imutils.normalize(img)
    pad_h, pad_w = max(crop_size - sh, 0), max(crop_size - sw, 0)
    if pad_h or pad_w:
        img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0.0)
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE)
    top = int(rng.integers(0, img.shape[0] - crop_size + 1))
    left = int(rng.integers(0, img.shape[1] - crop_size + 1))
    img = img[top:top + crop_size, left:left + crop_size]
    label = label[top:top + crop_size, left:left + crop_size]
    if hflip and rng.random() < 0.5:
        img, label = img[:, ::-1], label[:, ::-1]
    return imutils.hwc_to_chw(img), np.ascontiguousarray(label, dtype=np.uint8)


class SegmentationTrainDataset(ImageDataset):
    """Items are addressed by (index, stream position): the position seeds the sample's augmentation, so a batch
    is the same whatever the number of loader workers and whether the run was resumed."""

    def __init__(self, spec, ids, label_dir, crop_size, scales, seed, made_by):
        super().__init__(spec, ids)
        self.label_dir = label_dir
        self.crop_size = crop_size
        self.scales = tuple(scales)
        self.seed = seed
        self.made_by = made_by

    def __getitem__(self, key):
        idx, position = key if isinstance(key, tuple) else (key, key)
        img_id = self.ids[idx]
        img = self.load_image(idx)
        label = load_step_label(os.path.join(self.label_dir, img_id + ".png"), img_id, img.shape[:2],
                                self.made_by, "training label", self.spec.num_classes)
        rng = np.random.default_rng([self.seed, int(position)])
        img, label = segmentation_augment(img, label, self.crop_size, self.scales, rng)
        return {"img": torch.from_numpy(img), "label": torch.from_numpy(label)}


class IterationBatches(Sampler):
    """Micro-batches of (index, position) for iterations start..num_iters-1 of one process.

    The training set is read as an endless stream of permutations (one per pass, seeded by seed and pass number);
    iteration i, micro-batch m, rank r takes the stream positions of its slot. Every batch is thus a function of
    its iteration only: a run resumed at iteration k draws what the uninterrupted run drew from k on.
    """

    def __init__(self, num_items, batch_size, num_iters, start_iter=0, iter_size=1, rank=0, world=1, seed=0):
        self.n = num_items
        self.batch_size = batch_size
        self.num_iters = num_iters
        self.start_iter = start_iter
        self.iter_size = iter_size
        self.rank = rank
        self.world = world
        self.seed = seed
        self._perms = {}

    def __len__(self):
        return (self.num_iters - self.start_iter) * self.iter_size

    def item(self, position):
        epoch, offset = divmod(position, self.n)
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n)}
        return int(self._perms[epoch][offset]), position

    def __iter__(self):
        global_batch = self.batch_size * self.world
        for it in range(self.start_iter, self.num_iters):
            for micro in range(self.iter_size):
                first = (it * self.iter_size + micro) * global_batch + self.rank * self.batch_size
                yield [self.item(first + k) for k in range(self.batch_size)]


def calibration_batches(spec, ids, label_dir, crop_size, scales, seed, made_by, num_images=16, batch_size=8):
    """A few augmented training crops (fixed for a seed) to give a random backbone's frozen BN the data's
    statistics (--seg_backbone_weights none)."""
    rng = np.random.default_rng(seed)
    picked = sorted(rng.permutation(len(ids))[:num_images].tolist())
    dataset = SegmentationTrainDataset(spec, [ids[i] for i in picked], label_dir, crop_size, scales, seed, made_by)
    images = [dataset[(i, i)]["img"] for i in range(len(picked))]
    return [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
