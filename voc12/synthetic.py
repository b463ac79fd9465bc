"""A small synthetic dataset in VOC format, for the demo and the end-to-end tests.

Each image is a textured background (a smooth random colour field plus pixel noise) with one or two objects.
An object's class decides its shape and its base colour (with jitter and stripes inside, so that a classifier
finds a discriminative part and a less discriminative rest):

    cat: disk, orange     dog: square, blue     bird: triangle, green     sheep: ring, light grey

Later objects are drawn over earlier ones; the mask records the visible owner of each pixel and marks a one-pixel
band around every object as void (255), like VOC's borders. Written in VOC layout: JPEGImages/, SegmentationClass/
(palette PNGs), ImageSets/{train,eval}.txt and cls_labels.npz, whose four classes are named in the file (class
names travel with the label file, so the tables of a run name them). The generator only makes data; the demo's
settings live in step/demo.py (DEMO_FLAGS).
"""
import os

import numpy as np
from PIL import Image

from misc import imutils
from misc.fileio import save_png
from misc.datasets import save_label_table
from misc.fileio import atomic_path

DEMO_CLASSES = {"cat": ((230, 140, 40), "disk"), "dog": ((50, 90, 220), "square"),
                "bird": ((60, 190, 70), "triangle"), "sheep": ((215, 215, 215), "ring")}
CLASS_NAMES = tuple(DEMO_CLASSES)


def background(rng, size):
    coarse = rng.uniform(40, 160, size=(6, 6, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), dtype=np.float32)
    return np.clip(smooth + rng.normal(0, 12, size=(size, size, 3)), 0, 255)


def shape_mask(kind, size, cy, cx, r):
    yy, xx = np.mgrid[:size, :size]
    if kind == "disk":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    if kind == "square":
        return (abs(yy - cy) <= r * 0.85) & (abs(xx - cx) <= r * 0.85)
    if kind == "triangle":  # apex up
        return (yy >= cy - r) & (yy <= cy + r * 0.8) & (abs(xx - cx) <= (yy - (cy - r)) * 0.6)
    if kind == "ring":
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        return (d2 <= r * r) & (d2 >= (0.45 * r) ** 2)
    raise ValueError(kind)


def make_sample(rng, size=160, max_objects=2):
    img = background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    names = list(DEMO_CLASSES)
    n_obj = int(rng.integers(1, max_objects + 1))
    objects = []
    for cls_name in rng.choice(names, size=n_obj, replace=False):
        colour, kind = DEMO_CLASSES[cls_name]
        r = int(rng.integers(size // 7, size // 4))
        cy, cx = (int(v) for v in rng.integers(r, size - r, size=2))
        region = shape_mask(kind, size, cy, cx, r)
        stripes = (np.mgrid[:size, :size][1 if kind in ("disk", "ring") else 0] // 4) % 2
        jitter = rng.normal(0, 10, size=3)
        fill = np.clip(np.asarray(colour, np.float32) + jitter - 35 * stripes[..., None], 0, 255)
        img[region] = fill[region]
        mask[region] = CLASS_NAMES.index(cls_name) + 1
        objects.append(region)
    # void band: pixels next to an object boundary (4-neighbourhood) become 255, as VOC's borders
    edge = np.zeros_like(mask, dtype=bool)
    for axis, shift in ((0, 1), (0, -1), (1, 1), (1, -1)):
        edge |= mask != np.roll(mask, shift, axis=axis)
    mask[edge] = 255
    return img.astype(np.uint8), mask


def make_dataset(out_dir, num_train=200, num_eval=24, size=160, seed=0):
    """Write the dataset (idempotent: an existing complete dataset is kept). Returns {'root', 'train', 'eval',
    'labels'}: the folder, the two list files and the label file. The eval images are also in the training list,
    like VOC train within train_aug."""
    out = {"root": out_dir, "train": os.path.join(out_dir, "ImageSets", "train.txt"),
           "eval": os.path.join(out_dir, "ImageSets", "eval.txt"), "labels": os.path.join(out_dir, "cls_labels.npz")}
    if all(os.path.isfile(out[k]) for k in ("train", "eval", "labels")):
        return out
    rng = np.random.default_rng(seed)
    palette = imutils.color_palette()
    ids, table = [], {}
    for i in range(num_train):
        img_id = f"synth_{i:05d}"
        img, mask = make_sample(rng, size)
        save_png(os.path.join(out_dir, "SegmentationClass", img_id + ".png"), mask, palette=palette)
        with atomic_path(os.path.join(out_dir, "JPEGImages", img_id + ".jpg")) as tmp:
            Image.fromarray(img).save(tmp, format="JPEG", quality=92)
        label = np.zeros(len(CLASS_NAMES), np.uint8)
        present = np.unique(mask[(mask > 0) & (mask < 255)])
        label[present - 1] = 1
        table[img_id] = label
        ids.append(img_id)
    os.makedirs(os.path.dirname(out["train"]), exist_ok=True)
    with open(out["eval"], "w") as f:
        f.write("\n".join(ids[:num_eval]) + "\n")
    save_label_table(out["labels"], table, class_names=CLASS_NAMES)
    with open(out["train"], "w") as f:  # written last: its presence marks a complete dataset
        f.write("\n".join(ids) + "\n")
    return out
