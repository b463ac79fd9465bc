"""A small synthetic dataset in VOC format, for the demo and the end-to-end tests.

Each image is a textured background (a smooth random colour field plus pixel noise) with one or two objects.
An object's class decides its shape and its base colour (with jitter and stripes inside, so that a classifier
finds a discriminative part and a less discriminative rest):

    cat: disk, orange     dog: square, blue     bird: triangle, green     sheep: ring, light grey

Later objects are drawn over earlier ones; the mask records the visible owner of each pixel and marks a one-pixel
band around every object as void (255), like VOC's borders. Written in VOC layout: JPEGImages/, SegmentationClass/
(palette PNGs), ImageSets/{train,eval}.txt and cls_labels.npz (20 VOC classes; only the four above occur).
"""
import os

import numpy as np
from PIL import Image

from misc import imutils
from misc.fileio import save_png
from voc12.dataloader import CLASS_NAMES, save_label_table

DEMO_CLASSES = {"cat": ((230, 140, 40), "disk"), "dog": ((50, 90, 220), "square"),
                "bird": ((60, 190, 70), "triangle"), "sheep": ((215, 215, 215), "ring")}


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
    """Write the dataset (idempotent: an existing complete dataset is kept). Returns the paths of the lists and
    the label file. The eval images are also in the training list, like VOC train within train_aug."""
    lists = {"train": os.path.join(out_dir, "ImageSets", "train.txt"),
             "eval": os.path.join(out_dir, "ImageSets", "eval.txt")}
    label_file = os.path.join(out_dir, "cls_labels.npz")
    if all(os.path.isfile(p) for p in (*lists.values(), label_file)):
        return lists, label_file
    rng = np.random.default_rng(seed)
    palette = imutils.color_palette()
    ids, table = [], {}
    for i in range(num_train):
        img_id = f"synth_{i:05d}"
        img, mask = make_sample(rng, size)
        save_png(os.path.join(out_dir, "SegmentationClass", img_id + ".png"), mask, palette=palette)
        from misc.fileio import atomic_path
        with atomic_path(os.path.join(out_dir, "JPEGImages", img_id + ".jpg")) as tmp:
            Image.fromarray(img).save(tmp, format="JPEG", quality=92)
        label = np.zeros(len(CLASS_NAMES), np.uint8)
        present = np.unique(mask[(mask > 0) & (mask < 255)])
        label[present - 1] = 1
        table[img_id] = label
        ids.append(img_id)
    os.makedirs(os.path.dirname(lists["train"]), exist_ok=True)
    with open(lists["eval"], "w") as f:
        f.write("\n".join(ids[:num_eval]) + "\n")
    save_label_table(label_file, table)
    with open(lists["train"], "w") as f:  # written last: its presence marks a complete dataset
        f.write("\n".join(ids) + "\n")
    return lists, label_file


# Demo settings: CPU, random init, small images. Flags given on the command line win over these.
# The classifier trains from scratch here, so the demo uses real SGD momentum (0.9) instead of IRN's
# momentum bug (which the paper's ImageNet-initialised runs reproduce by default): measured seed mIoU 41 vs 31.
DEMO_FLAGS = {
    "device": "cpu", "backbone_weights": "none", "cam_num_epoches": 6, "cam_batch_size": 16,
    "cam_crop_size": 128, "cam_resize_long": (128, 192), "cam_learning_rate": 0.1, "cam_scales": (1.0, 0.5),
    "official_momentum_bug": False, "eval_cam_source": "both",
    "rib_iter": 5, "rib_batch": 4, "rib_crop_size": 128, "rib_loader_workers": 0, "rib_loss_scales": (1.0,),
    "irn_crop_size": 128, "irn_batch_size": 8, "irn_num_epoches": 12, "save_cam_png": 4,
    # a random-init classifier's maps are flatter than an ImageNet one's: sweep a wider threshold range
    "cam_eval_sweep": (0.05, 0.95, 0.05),
}
DEMO_STEPS = ("train_cam", "make_cam", "rib", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg",
              "eval_sem_seg")


def demo_args(args, argv=None):
    """Turn parsed args into the demo run: synthetic data under <work_dir>/demo_data, every implemented step."""
    import importlib.util
    import sys
    import run_sample
    argv = sys.argv[1:] if argv is None else argv
    given = {a.lstrip("-").split("=")[0] for a in argv if a.startswith("--")}
    if "work_dir" not in given:
        args.work_dir = "demo_work"
    lists, label_file = make_dataset(os.path.join(args.work_dir, "demo_data"))
    args.voc12_root = os.path.join(args.work_dir, "demo_data")
    args.train_list, args.infer_list, args.eval_list = lists["train"], lists["eval"], lists["eval"]
    args.cls_labels = label_file
    for name, value in DEMO_FLAGS.items():
        if name not in given:
            setattr(args, name, value)
    implemented = {name for name, module in run_sample.STEPS if importlib.util.find_spec(module) is not None}
    for name in DEMO_STEPS:
        if f"{name}_pass" not in given:
            setattr(args, f"{name}_pass", name in implemented)
    return run_sample.finalize_args(args)
