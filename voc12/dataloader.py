"""PASCAL VOC 2012 (+SBD train_aug): id lists, image-level labels, and the datasets of the pipeline.

The dataset classes are written against a `DatasetSpec` (root, class names, label table, where images and masks
live), so COCO (coco14/dataloader.py) reuses them with its own spec; steps never branch on the dataset name.
Ids are strings everywhere (`2007_000032`): the official `np.loadtxt(dtype=int32)` fails on numpy >= 1.23.
"""
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from misc import imutils
from misc.fileio import DataError, load_image_rgb, load_label_png, load_npz

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LABEL_FILE = os.path.join(PACKAGE_DIR, "cls_labels.npz")

CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def load_id_list(path, flag="--infer_list"):
    """One id per line (blank lines and surrounding spaces ignored) -> list of str."""
    if not os.path.isfile(path):
        raise DataError(f"{flag} {path}: no such list file")
    with open(path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise DataError(f"{flag} {path} is empty: give a list with one image id per line")
    return ids


def load_label_table(path):
    """Image-level labels from an npz with `ids` (str [N]) and `labels` (uint8 [N, C]) -> {id: float32[C]}."""
    if not os.path.isfile(path):
        raise DataError(f"label file {path} does not exist; make it with voc12/make_cls_labels.py")
    data = load_npz(path)
    if "ids" not in data or "labels" not in data:
        raise DataError(f"label file {path} must hold arrays `ids` and `labels` (see voc12/make_cls_labels.py)")
    return {str(i): row.astype(np.float32) for i, row in zip(data["ids"], data["labels"])}


def save_label_table(path, table):
    from misc.fileio import save_npz
    ids = sorted(table)
    labels = np.stack([np.asarray(table[i]) for i in ids]).astype(np.uint8)
    save_npz(path, ids=np.array(ids), labels=labels)


@dataclass
class DatasetSpec:
    """Everything a step needs to know about a dataset."""
    name: str
    root: str
    class_names: tuple
    labels: dict
    root_flag: str = "--voc12_root"
    gt_dir: str = None
    image_dir: str = "JPEGImages"
    image_ext: str = ".jpg"
    gt_subdirs: tuple = ("SegmentationClass", "SegmentationClassAug")
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def names_with_background(self):
        """Names of the label values 0..C of masks and seeds."""
        return ("background",) + tuple(self.class_names)

    def image_path(self, img_id):
        return os.path.join(self.root, self.image_dir, img_id + self.image_ext)

    def label(self, img_id):
        """Multi-hot float32 [C] of the image; an id without labels is an error naming the id."""
        try:
            return self.labels[img_id]
        except KeyError:
            raise DataError(f"image id {img_id} has no image-level labels in the label file; add it "
                            f"(voc12/make_cls_labels.py) or remove it from the list") from None

    def gt_path(self, img_id):
        if self.gt_dir:
            return os.path.join(self.gt_dir, img_id + ".png")
        for sub in self.gt_subdirs:
            path = os.path.join(self.root, sub, img_id + ".png")
            if os.path.isfile(path):
                return path
        return os.path.join(self.root, self.gt_subdirs[0], img_id + ".png")

    def load_gt(self, img_id):
        path = self.gt_path(img_id)
        if not os.path.isfile(path):
            where = self.gt_dir or " or ".join(os.path.join(self.root, s) for s in self.gt_subdirs)
            raise DataError(f"no ground-truth mask for {img_id} in {where}; evaluate on ids with masks "
                            f"(--eval_list) or point --gt_dir at the masks")
        return load_label_png(path)

    def check_ids(self, ids, flag, need_labels=True):
        """Fail before any work if the root, an image or a label is missing."""
        if not os.path.isdir(self.root):
            raise DataError(f"dataset root {self.root} does not exist; pass {self.root_flag} pointing at the "
                            f"dataset folder (with {self.image_dir}/ inside)")
        if not os.path.isdir(os.path.join(self.root, self.image_dir)):
            raise DataError(f"{os.path.join(self.root, self.image_dir)} is missing: {self.root_flag} must point "
                            f"at the folder that holds {self.image_dir}/")
        missing = [i for i in ids if not os.path.isfile(self.image_path(i))]
        if missing:
            raise DataError(f"{len(missing)} id(s) of {flag} have no image, e.g. {self.image_path(missing[0])}; "
                            f"fix the list or the dataset root")
        if need_labels:
            unlabeled = [i for i in ids if i not in self.labels]
            if unlabeled:
                raise DataError(f"{len(unlabeled)} id(s) of {flag} have no image-level labels, e.g. "
                                f"{unlabeled[0]}; add them to the label file or remove them from the list")


def make_spec(root, label_file=None, gt_dir=None):
    label_file = label_file or DEFAULT_LABEL_FILE
    return DatasetSpec(name="voc12", root=root, class_names=CLASS_NAMES, labels=load_label_table(label_file),
                       gt_dir=gt_dir)


# --- augmentation ----------------------------------------------------------------------------------------------


def classification_augment(img, crop_size, rng, resize_long=(320, 640), hflip=True):
    """IRN's classifier-training augmentation: random long side in resize_long, h-flip, ImageNet normalisation,
    random crop_size crop (padding with 0 after normalisation = the mean colour). uint8 HWC -> float32 CHW."""
    if resize_long:
        img = imutils.random_resize_long(img, resize_long[0], resize_long[1], rng)
    if hflip and rng.random() < 0.5:
        img = img[:, ::-1]
    img = imutils.normalize(img)
    if crop_size:
        img = imutils.random_crop([img], crop_size, [0.0], rng)[0]
    return imutils.hwc_to_chw(img)


def scale_pyramid(img, scales):
    """uint8 HWC image -> list over scales of float32 (2, 3, h, w) arrays: [image, h-flipped image]."""
    pyramid = []
    for s in scales:
        scaled = img if s == 1.0 else imutils.rescale(img, s)
        chw = imutils.hwc_to_chw(imutils.normalize(scaled))
        pyramid.append(np.stack([chw, chw[:, :, ::-1]]).copy())
    return pyramid


def numpy_rng_from_torch():
    """A numpy Generator seeded from torch's RNG, which DataLoader seeds per worker from its generator: the
    augmentation is then reproducible for a given --seed, whatever the number of workers."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, ()).item()))


# --- datasets --------------------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    def __init__(self, spec, ids):
        self.spec = spec
        self.ids = list(ids)

    def __len__(self):
        return len(self.ids)

    def load_image(self, idx):
        return load_image_rgb(self.spec.image_path(self.ids[idx]))


class ClassificationDataset(ImageDataset):
    """Classifier training samples: {'name', 'img' (3, crop, crop), 'label' (C,)}."""

    def __init__(self, spec, ids, crop_size=512, resize_long=(320, 640), hflip=True):
        super().__init__(spec, ids)
        self.crop_size = crop_size
        self.resize_long = resize_long
        self.hflip = hflip

    def __getitem__(self, idx):
        img = classification_augment(self.load_image(idx), self.crop_size, numpy_rng_from_torch(),
                                     self.resize_long, self.hflip)
        return {"name": self.ids[idx], "img": torch.from_numpy(img),
                "label": torch.from_numpy(self.spec.label(self.ids[idx]))}


class MultiScaleDataset(ImageDataset):
    """Inference samples for CAMs: {'name', 'img': [(2, 3, h_s, w_s) per scale], 'size': (H, W), 'label'}.

    With need_labels=False an id missing from the label table gets an all-zero label (the RIB step then writes
    an all-background record, as the official COCO path does for images without class).
    """

    def __init__(self, spec, ids, scales=(1.0, 0.5, 1.5, 2.0), need_labels=True):
        super().__init__(spec, ids)
        self.scales = tuple(scales)
        self.need_labels = need_labels

    def __getitem__(self, idx):
        img_id = self.ids[idx]
        img = self.load_image(idx)
        if self.need_labels or img_id in self.spec.labels:
            label = self.spec.label(img_id)
        else:
            label = np.zeros(self.spec.num_classes, np.float32)
        return {"name": img_id, "img": [torch.from_numpy(p) for p in scale_pyramid(img, self.scales)],
                "size": img.shape[:2], "label": torch.from_numpy(label)}
