"""What every dataset stands on: the registry of --dataset, the `DatasetSpec` a step receives, id lists, the label
file, and the torch datasets of the pipeline.

A dataset package (voc12/, coco14/) only says where its files are and what its classes are (`make_spec`) and which
hyper-parameters differ (`preset.PRESET`); steps receive a DatasetSpec and never branch on the dataset name.
Ids are strings everywhere (`2007_000032`, `000000057870`): the official `np.loadtxt(dtype=int32)` fails on
numpy >= 1.23.
"""
import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from misc import imutils
from misc.fileio import DataError, check_image_file, load_image_rgb, load_label_png, load_npz, save_npz

DATASETS = ("voc12", "coco14")
IGNORE = 255  # void / unsure label in every mask of the project


def preset(name):
    return importlib.import_module(f"{name}.preset").PRESET


def build_spec(args):
    """The DatasetSpec of --dataset, from the root, label file and mask folder flags."""
    module = importlib.import_module(f"{args.dataset}.dataloader")
    return module.make_spec(args.data_root, label_file=args.cls_labels or None, gt_dir=args.gt_dir or None)


def use_root_files(args):
    """Point flags that still hold their default at files the dataset's preparation wrote under the data root,
    when they exist there: the dataloader's ROOT_FILES {flag: file name} (coco14: ROOT/cls_labels.npz and
    ROOT/train14.txt from coco14/prepare.py). A flag given another value is left alone."""
    module = importlib.import_module(f"{args.dataset}.dataloader")
    defaults = preset(args.dataset)
    for flag, name in getattr(module, "ROOT_FILES", {}).items():
        path = os.path.join(args.data_root, name)
        if hasattr(args, flag) and getattr(args, flag) == defaults.get(flag, "") and os.path.isfile(path):
            setattr(args, flag, path)


# --- id lists and the label file ---------------------------------------------------------------------------------


def load_id_list(path, flag="--infer_list"):
    """One id per line (blank lines, surrounding spaces and CRLF line ends ignored; a second column, as in VOC's
    ImageSets, too) -> list of str. An id listed twice is an error: every loop would do it twice and every
    evaluation would count it twice."""
    if not os.path.isfile(path):
        raise DataError(f"{flag} {path}: no such list file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{flag} {path} is not a text list (binary byte at offset {e.start}): give a text file "
                        f"with one image id per line") from None
    ids, first_line = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        img_id = line.split()[0]
        if img_id in first_line:
            raise DataError(f"{flag} {path} lists image {img_id} twice (lines {first_line[img_id]} and {number}): "
                            f"give each id once (remove line {number})")
        first_line[img_id] = number
        ids.append(img_id)
    if not ids:
        raise DataError(f"{flag} {path} is empty: give a list with one image id per line")
    return ids


def load_label_file(path):
    """Image-level labels from an npz with `ids` (str [N]) and `labels` (uint8 [N, C]), and optionally
    `class_names` (str [C]) -> ({id: float32[C]}, class names or None)."""
    if not os.path.isfile(path):
        raise DataError(f"label file {path} does not exist; make it with voc12/make_cls_labels.py or "
                        f"coco14/prepare.py, or pass --cls_labels")
    try:
        data = load_npz(path)
    except (OSError, ValueError) as e:
        raise DataError(f"label file {path} is not a readable .npz ({e}); remake it") from e
    if "ids" not in data or "labels" not in data or data["labels"].ndim != 2:
        raise DataError(f"label file {path} must hold arrays `ids` [N] and `labels` [N, C] "
                        f"(see voc12/make_cls_labels.py)")
    names = tuple(str(n) for n in data["class_names"]) if "class_names" in data else None
    if names is not None and len(names) != data["labels"].shape[1]:
        raise DataError(f"label file {path}: {len(names)} class names for {data['labels'].shape[1]} label columns")
    table = {str(i): row.astype(np.float32) for i, row in zip(data["ids"], data["labels"])}
    return table, names


def save_label_table(path, table, class_names=None):
    """Write {id: multi-hot} (and the class names, when given) in the label-file format."""
    ids = sorted(table)
    labels = np.stack([np.asarray(table[i]) for i in ids]).astype(np.uint8)
    extra = {"class_names": np.array(class_names)} if class_names is not None else {}
    save_npz(path, ids=np.array(ids), labels=labels, **extra)


# --- the spec ------------------------------------------------------------------------------------------------------


@dataclass
class DatasetSpec:
    """Everything a step needs to know about a dataset.

    image_locations: (folder, file-name prefix) pairs under root, tried in order; the first folder holding the
    image wins (COCO images sit either in JPEGImages/<id>.jpg or in train2014/COCO_train2014_<id>.jpg).
    """
    name: str
    root: str
    class_names: tuple
    labels: dict
    root_flag: str = "--voc12_root"
    gt_dir: str = None
    image_locations: tuple = (("JPEGImages", ""),)
    image_ext: str = ".jpg"
    gt_subdirs: tuple = ("SegmentationClass", "SegmentationClassAug")
    label_file: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def names_with_background(self):
        """Names of the label values 0..C of masks and seeds."""
        return ("background",) + tuple(self.class_names)

    def image_path(self, img_id):
        candidates = [os.path.join(self.root, folder, prefix + img_id + self.image_ext)
                      for folder, prefix in self.image_locations]
        if len(candidates) > 1:
            for path in candidates:
                if os.path.isfile(path):
                    return path
        return candidates[0]

    def load_image(self, img_id):
        return load_image_rgb(self.image_path(img_id))

    def label(self, img_id):
        """Multi-hot float32 [C] of the image; an id without labels is an error naming the id."""
        try:
            return self.labels[img_id]
        except KeyError:
            raise DataError(f"image id {img_id} has no image-level labels in the label file "
                            f"{self.label_file or ''}; add it or remove it from the list") from None

    def label_or_background(self, img_id):
        """The labels, or all zeros for an id missing from the label file (an image without any annotation,
        as COCO's 702 + 367 unannotated images: they get an all-background record)."""
        label = self.labels.get(img_id)
        return np.zeros(self.num_classes, np.float32) if label is None else label

    def gt_path(self, img_id):
        if self.gt_dir:
            return os.path.join(self.gt_dir, img_id + ".png")
        for sub in self.gt_subdirs:
            path = os.path.join(self.root, sub, img_id + ".png")
            if os.path.isfile(path):
                return path
        return os.path.join(self.root, self.gt_subdirs[0], img_id + ".png")

    def load_gt(self, img_id, image_size=None):
        """Ground-truth mask int32 (H, W): 0 background, 1..C, 255 void. Values above C other than 255 and a
        size that differs from image_size are errors naming the mask file."""
        path = self.gt_path(img_id)
        if not os.path.isfile(path):
            where = self.gt_dir or " or ".join(os.path.join(self.root, s) for s in self.gt_subdirs)
            raise DataError(f"no ground-truth mask for {img_id} in {where}; evaluate on ids with masks "
                            f"(--eval_list) or point --gt_dir at the masks")
        gt = load_label_png(path)
        bad = (gt > self.num_classes) & (gt != IGNORE)
        if bad.any():
            raise DataError(f"ground-truth mask {path} has value {int(gt[bad].max())}, but the dataset has "
                            f"{self.num_classes} classes (values 0..{self.num_classes}, 255 = void): a mask of "
                            f"another dataset, or a colour PNG instead of class indices?")
        if image_size is not None and gt.shape != tuple(image_size):
            raise DataError(f"ground-truth mask {path} is {gt.shape[0]}x{gt.shape[1]} but image "
                            f"{self.image_path(img_id)} is {image_size[0]}x{image_size[1]}; fix the mask folder "
                            f"(--gt_dir)")
        return gt

    def check_ids(self, ids, flag, need_labels=True, check_images=True):
        """Fail before any work if the root, an image or a label is missing, or an image file is unreadable
        (header and end-of-file marker: a truncated download is caught here, not hours into a run)."""
        if not os.path.isdir(self.root):
            raise DataError(f"dataset root {self.root} does not exist; pass {self.root_flag} pointing at the "
                            f"dataset folder (with {self.image_locations[0][0]}/ inside)")
        folders = [os.path.join(self.root, f) for f, _ in self.image_locations]
        if not any(os.path.isdir(f) for f in folders):
            raise DataError(f"{' or '.join(folders)} is missing: {self.root_flag} must point at the folder that "
                            f"holds {self.image_locations[0][0]}/")
        paths = [self.image_path(i) for i in ids]
        missing = [(i, p) for i, p in zip(ids, paths) if not os.path.isfile(p)]
        if missing:
            img_id, example = missing[0]
            if len(self.image_locations) > 1:  # name every place that was looked at
                example = f"{img_id} (none of " + ", ".join(
                    os.path.join(self.root, f, p + img_id + self.image_ext) for f, p in self.image_locations) + ")"
            raise DataError(f"{len(missing)} id(s) of {flag} have no image, e.g. {example}; fix the list or "
                            f"the dataset root ({self.root_flag})")
        if check_images:
            with ThreadPoolExecutor(8) as pool:
                problems = [p for p in pool.map(check_image_file, paths) if p]
            if problems:
                raise DataError(f"{len(problems)} image(s) of {flag} are unreadable, e.g. {problems[0]}; replace "
                                f"the file(s) or drop the id(s) from the list")
        if need_labels:
            unlabeled = [i for i in ids if i not in self.labels]
            if unlabeled:
                raise DataError(f"{len(unlabeled)} id(s) of {flag} have no image-level labels, e.g. "
                                f"{unlabeled[0]}; add them to the label file or remove them from the list")


def make_spec_from_label_file(name, root, default_names, label_file, gt_dir=None, **kwargs):
    """A DatasetSpec whose class names come from the label file when it names them (the demo's 4 classes),
    else from the dataset package; a column count that disagrees with the package's names is an error."""
    table, names = load_label_file(label_file)
    if names is None:
        width = len(next(iter(table.values()))) if table else len(default_names)
        if width != len(default_names):
            raise DataError(f"label file {label_file} has {width} classes but {name} has {len(default_names)}; "
                            f"pass the label file of this dataset (--cls_labels) or the right --dataset")
        names = tuple(default_names)
    return DatasetSpec(name=name, root=root, class_names=names, labels=table, gt_dir=gt_dir,
                       label_file=label_file, **kwargs)


# --- torch datasets --------------------------------------------------------------------------------------------


def numpy_rng_from_torch():
    """A numpy Generator seeded from torch's RNG, which DataLoader seeds per worker from its generator: the
    augmentation is then reproducible for a given --seed, whatever the number of workers."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, ()).item()))


class ImageDataset(Dataset):
    def __init__(self, spec, ids):
        self.spec = spec
        self.ids = list(ids)

    def __len__(self):
        return len(self.ids)

    def load_image(self, idx):
        return self.spec.load_image(self.ids[idx])


class ClassificationDataset(ImageDataset):
    """Classifier training samples: {'name', 'img' (3, crop, crop), 'label' (C,)}."""

    def __init__(self, spec, ids, crop_size=512, resize_long=(320, 640), hflip=True):
        super().__init__(spec, ids)
        self.crop_size = crop_size
        self.resize_long = resize_long
        self.hflip = hflip

    def __getitem__(self, idx):
        img = imutils.classification_augment(self.load_image(idx), self.crop_size, numpy_rng_from_torch(),
                                             self.resize_long, self.hflip)
        return {"name": self.ids[idx], "img": torch.from_numpy(img),
                "label": torch.from_numpy(self.spec.label(self.ids[idx]))}


class MultiScaleDataset(ImageDataset):
    """Inference samples for CAMs: {'name', 'img': [(2, 3, h_s, w_s) per scale], 'size': (H, W), 'label'}.

    With need_labels=False an id missing from the label table gets an all-zero label (the step then writes an
    all-background record, as the official COCO path does for images without class).
    """

    def __init__(self, spec, ids, scales=(1.0, 0.5, 1.5, 2.0), need_labels=True):
        super().__init__(spec, ids)
        self.scales = tuple(scales)
        self.need_labels = need_labels

    def __getitem__(self, idx):
        img_id = self.ids[idx]
        img = self.load_image(idx)
        label = self.spec.label(img_id) if self.need_labels else self.spec.label_or_background(img_id)
        return {"name": img_id, "img": [torch.from_numpy(p) for p in imutils.scale_pyramid(img, self.scales)],
                "size": img.shape[:2], "label": torch.from_numpy(label)}
